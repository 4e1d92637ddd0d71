"""Download a model directory from S3 (or GCS's S3-compatible XML API) with the standard library only.

The init container image carries no AWS or Google SDK, so this is the small part of S3 it needs:
ListObjectsV2 and GetObject, signed with Signature Version 4
(https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html).

Environment (the names the AWS SDKs and CLI read):

- `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional `AWS_SESSION_TOKEN`; unsigned (public
  buckets) when unset. For gs:// these are a GCS HMAC key
  (https://cloud.google.com/storage/docs/authentication/hmackeys).
- `AWS_REGION` or `AWS_DEFAULT_REGION` (default us-east-1) for s3://.
- `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`: an S3-compatible endpoint (MinIO, Ceph, a test
  server); `KUBEFORGE_GCS_ENDPOINT_URL` replaces https://storage.googleapis.com for gs://.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import shutil
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kubeforge import __version__

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
GCS_ENDPOINT = "https://storage.googleapis.com"
TIMEOUT_SECONDS = 60.0


class ObjectStoreError(RuntimeError):
    """A listing or download failed; the message says which object and why."""


@dataclass(frozen=True)
class Credentials:
    """An access key (an AWS key, or a GCS HMAC key)."""

    access_key: str
    secret_key: str
    session_token: str | None = None


@dataclass(frozen=True)
class Bucket:
    """Where a bucket's objects are and how requests to it are signed."""

    name: str
    endpoint: str  # scheme://host[:port], no trailing slash
    region: str
    credentials: Credentials | None
    path_style: bool  # /<bucket>/<key> on the endpoint, instead of <bucket>.<host>/<key>

    def url(self, key: str = "", query: str = "") -> str:
        """The URL of an object (or of the bucket when key is empty), with its query string."""
        path = "/" + _quote_path(key)
        scheme, host = self.endpoint.split("://", 1)
        if self.path_style:
            path = f"/{self.name}{path}"
        else:
            host = f"{self.name}.{host}"
        return f"{scheme}://{host}{path}" + (f"?{query}" if query else "")


def _quote_path(key: str) -> str:
    # S3 signs the URI-encoded path once (no double encoding, unlike other services); '/' stays
    return urllib.parse.quote(key, safe="/-_.~")


def _quote_query(value: str) -> str:
    return urllib.parse.quote(value, safe="-_.~")


def canonical_query(params: Mapping[str, str]) -> str:
    """The query string in SigV4's canonical form: sorted, each key and value URI-encoded."""
    return "&".join(f"{_quote_query(k)}={_quote_query(v)}" for k, v in sorted(params.items()))


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def sign_request(
    method: str,
    url: str,
    *,
    region: str,
    credentials: Credentials,
    now: dt.datetime,
    headers: Mapping[str, str] | None = None,
    payload_sha256: str = EMPTY_SHA256,
    service: str = "s3",
) -> dict[str, str]:
    """The request's headers with SigV4's x-amz-* headers and Authorization added.

    `url` must already be encoded as it goes on the wire (see `Bucket.url` and `canonical_query`).
    """
    split = urllib.parse.urlsplit(url)
    amz_date = now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    signed = {k.lower(): v.strip() for k, v in (headers or {}).items()}
    signed |= {"host": split.netloc, "x-amz-date": amz_date, "x-amz-content-sha256": payload_sha256}
    if credentials.session_token:
        signed["x-amz-security-token"] = credentials.session_token
    names = sorted(signed)
    query = canonical_query(dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True)))
    canonical_request = "\n".join(
        [
            method,
            split.path or "/",
            query,
            *(f"{n}:{signed[n]}" for n in names),
            "",
            ";".join(names),
            payload_sha256,
        ]
    )
    string_to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = ("AWS4" + credentials.secret_key).encode()
    for part in (amz_date[:8], region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    signed["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return signed


def parse_uri(uri: str) -> tuple[str, str, str]:
    """(scheme, bucket, prefix) of an s3:// or gs:// URI; the prefix has no leading '/'."""
    split = urllib.parse.urlsplit(uri)
    if split.scheme not in ("s3", "gs") or not split.netloc:
        raise ObjectStoreError(f"{uri!r} is not an s3://<bucket>/<path> or gs://<bucket>/<path> URI")
    return split.scheme, split.netloc, split.path.strip("/")


def bucket_for(scheme: str, name: str, environ: Mapping[str, str]) -> Bucket:
    """The bucket's endpoint, region and credentials from the environment."""
    credentials = None
    if environ.get("AWS_ACCESS_KEY_ID") and environ.get("AWS_SECRET_ACCESS_KEY"):
        credentials = Credentials(
            environ["AWS_ACCESS_KEY_ID"],
            environ["AWS_SECRET_ACCESS_KEY"],
            environ.get("AWS_SESSION_TOKEN") or None,
        )
    if scheme == "gs":
        endpoint = environ.get("KUBEFORGE_GCS_ENDPOINT_URL") or GCS_ENDPOINT
        # GCS's XML API accepts SigV4 with an HMAC key and the region "auto"
        return Bucket(name, endpoint.rstrip("/"), "auto", credentials, path_style=True)
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    custom = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    if custom:
        # S3-compatible servers (MinIO, Ceph, test servers) rarely have per-bucket DNS names
        return Bucket(name, custom.rstrip("/"), region, credentials, path_style=True)
    # virtual-hosted style is AWS's default; a bucket with dots would break TLS on it
    return Bucket(name, f"https://s3.{region}.amazonaws.com", region, credentials, path_style="." in name)


def _get(bucket: Bucket, url: str) -> urllib.request.Request:
    headers = {"User-Agent": f"kubeforge/{__version__}"}
    if bucket.credentials is not None:
        now = dt.datetime.now(dt.UTC)
        headers |= sign_request("GET", url, region=bucket.region, credentials=bucket.credentials, now=now)
        headers.pop("host")  # urllib sets Host itself, from the same URL
    return urllib.request.Request(url, headers=headers)


def _error(exc: urllib.error.HTTPError, what: str) -> ObjectStoreError:
    """An S3 error response as a sentence: the code and message S3 returned, and a hint for regions."""
    body = exc.read()[:4096]
    detail = f"HTTP {exc.code}"
    try:
        root = ET.fromstring(body)
        code, message = root.findtext("Code"), root.findtext("Message")
        detail += f" {code}: {message}" if code else ""
    except ET.ParseError:
        pass  # not an S3 error document (a proxy's page, say): the status code is all we have
    region = exc.headers.get("x-amz-bucket-region")
    if region:
        detail += f" (the bucket is in region {region}; set AWS_DEFAULT_REGION)"
    return ObjectStoreError(f"{what}: {detail}")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def list_keys(bucket: Bucket, prefix: str, page_size: int | None = None) -> Iterator[str]:
    """Every key under prefix (ListObjectsV2, following continuation tokens; pages of 1,000 by default)."""
    params = {"list-type": "2", "prefix": prefix}
    if page_size is not None:
        params["max-keys"] = str(page_size)
    while True:
        url = bucket.url(query=canonical_query(params))
        try:
            with urllib.request.urlopen(_get(bucket, url), timeout=TIMEOUT_SECONDS) as response:
                root = ET.fromstring(response.read())
        except urllib.error.HTTPError as exc:
            raise _error(exc, f"listing {bucket.name}/{prefix}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ObjectStoreError(f"listing {bucket.name}/{prefix}: {getattr(exc, 'reason', exc)}") from exc
        fields = {_local(child.tag): child for child in root}
        for child in root:
            if _local(child.tag) == "Contents":
                yield next(c.text or "" for c in child if _local(c.tag) == "Key")
        token = fields.get("NextContinuationToken")
        if fields.get("IsTruncated") is None or fields["IsTruncated"].text != "true" or token is None:
            return
        params["continuation-token"] = token.text or ""


def download(bucket: Bucket, key: str, dest: Path) -> None:
    """GetObject into the file dest."""
    try:
        request = _get(bucket, bucket.url(key))
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response, dest.open("wb") as f:
            shutil.copyfileobj(response, f, 1 << 20)
    except urllib.error.HTTPError as exc:
        raise _error(exc, f"downloading {bucket.name}/{key}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise ObjectStoreError(f"downloading {bucket.name}/{key}: {getattr(exc, 'reason', exc)}") from exc


def _relative(key: str, prefix: str) -> PurePosixPath | None:
    """The key's path below prefix; None for folder markers; refuses keys that climb out."""
    rest = PurePosixPath(key[len(prefix) :].lstrip("/"))
    if key.endswith("/") or not rest.parts:
        return None
    if ".." in rest.parts:
        raise ObjectStoreError(f"object {key!r} would land outside the model directory")
    return rest


def download_prefix(uri: str, dest: Path, environ: Mapping[str, str]) -> int:
    """Download every object under the URI's prefix into dest (created); returns the object count."""
    scheme, name, prefix = parse_uri(uri)
    bucket = bucket_for(scheme, name, environ)
    # list "<prefix>/" so that s3://b/model does not also pick up s3://b/model-v2
    listed = f"{prefix}/" if prefix else ""
    count = 0
    dest.mkdir(parents=True)
    for key in list_keys(bucket, listed):
        relative = _relative(key, listed)
        if relative is None:
            continue
        target = dest.joinpath(*relative.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        download(bucket, key, target)
        count += 1
    if count == 0:
        raise ObjectStoreError(f"no objects under {uri}")
    return count
