"""Fetch a model's source directory: pvc://, http(s):// archives, s3:// or gs:// prefixes, and
Hugging Face Hub repositories (hf://<org>/<model>[@<revision>]).

Used by the init container (`kubeforge.triton.repository`). Every failure is a SourceError whose
message says what went wrong; the caller adds which model it was.
"""

from __future__ import annotations

import json
import logging
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from kubeforge import __version__
from kubeforge.redact import redact
from kubeforge.triton.config import CONFIG_FILENAME

log = logging.getLogger(__name__)

HTTP_TIMEOUT_SECONDS = 60.0
HTTP_RETRY_DELAYS_SECONDS = (1.0, 4.0)


# where a container mounts the claims of pvc://<claim>/<path> sources, one folder per claim
DEFAULT_PVC_ROOT = "/mnt/pvc"


class SourceError(RuntimeError):
    """A source could not be fetched; the message is the reason."""


# the storage Secret reaches the fetching containers as `envFrom` with this prefix (a key named
# PATH or PYTHONPATH in it cannot change the container); `credentials` takes the prefix off
STORAGE_ENV_PREFIX = "KUBEFORGE_STORAGE_"
# the storage Secret's keys for http(s) sources: the Authorization header's value, and a JSON
# object of more headers; sent to the source's URL only, never along a redirect
HTTP_AUTHORIZATION_KEY = "HTTP_AUTHORIZATION"
HTTP_HEADERS_KEY = "HTTP_HEADERS"


def credentials(environ: Mapping[str, str]) -> dict[str, str]:
    """The storage Secret's keys as the fetchers read them: the environment, with the keys the
    Secret brought (prefixed) in place of unprefixed ones."""
    found = {
        k.removeprefix(STORAGE_ENV_PREFIX): v for k, v in environ.items() if k.startswith(STORAGE_ENV_PREFIX)
    }
    return {**environ, **found}


def http_headers(environ: Mapping[str, str]) -> dict[str, str]:
    """The headers the storage Secret gives http(s) requests (values are never logged)."""
    headers: dict[str, str] = {}
    extra = environ.get(HTTP_HEADERS_KEY)
    if extra:
        try:
            parsed = json.loads(extra)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
            raise SourceError(
                f"the storage Secret's key {HTTP_HEADERS_KEY} must be a JSON object of header names to strings"
            )
        headers.update(parsed)
    if environ.get(HTTP_AUTHORIZATION_KEY):
        headers["Authorization"] = environ[HTTP_AUTHORIZATION_KEY]
    return headers


def pvc_path(source: str, pvc_root: Path) -> Path:
    """Where a `pvc://<claim>/<path>` source is in the init container: `<pvc-root>/<claim>/<path>`."""
    claim, _, rest = source.removeprefix("pvc://").partition("/")
    parts = PurePosixPath(rest).parts
    if claim in ("", ".", "..") or ".." in parts:
        raise SourceError("not a pvc://<claim>/<path> URI without '..'")
    return pvc_root.joinpath(claim, *parts)


def fetch_pvc(source: str, dest: Path, pvc_root: Path) -> None:
    """Copy `<pvc-root>/<claim>/<path>` (the claim is mounted read-only by the pod) to dest."""
    src = pvc_path(source, pvc_root)
    if not src.is_dir():
        claim = source.removeprefix("pvc://").split("/", 1)[0]
        raise SourceError(f"{src} is not a directory (is the claim {claim!r} mounted at {pvc_root / claim}?)")
    shutil.copytree(src, dest)


def download(url: str, dest: Path, headers: Mapping[str, str] | None = None) -> None:
    """Download url into the file dest; transient failures (5xx, 429, network) are retried.

    `headers` (credentials) go to url only: a redirect elsewhere (a presigned URL on another
    host) must not carry them, so they are unredirected headers, which urllib never forwards.
    """
    request = urllib.request.Request(url, headers={"User-Agent": f"kubeforge/{__version__}"})
    for name, value in (headers or {}).items():
        request.add_unredirected_header(name, value)
    delays = (*HTTP_RETRY_DELAYS_SECONDS, None)
    for attempt, delay in enumerate(delays, start=1):
        try:
            with (
                urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as response,
                dest.open("wb") as f,
            ):
                shutil.copyfileobj(response, f, 1 << 20)
            return
        except urllib.error.HTTPError as exc:
            if exc.code < 500 and exc.code != 429:
                raise SourceError(f"HTTP {exc.code} {exc.reason}") from exc
            problem = f"HTTP {exc.code} {exc.reason}"
        except (urllib.error.URLError, OSError) as exc:
            problem = redact(str(getattr(exc, "reason", exc)))
        if delay is None:
            raise SourceError(f"download failed after {attempt} attempts: {problem}")
        log.warning(
            "download of %s failed (%s); attempt %d of %d in %.0fs",
            redact(url),
            problem,
            attempt + 1,
            len(delays),
            delay,
        )
        time.sleep(delay)


def _unsafe_member(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts or (len(name) > 1 and name[1] == ":")


def _refuse_unsafe(names: list[str]) -> None:
    bad = [n for n in names if _unsafe_member(n)]
    if bad:
        raise SourceError(f"archive member {bad[0]!r} leaves the model directory")


def unpack_archive(archive: Path, dest: Path) -> None:
    """Unpack a .tar(.gz|.bz2|.xz) or .zip archive (told apart by content) into dest, refusing
    members that would land outside it."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            _refuse_unsafe(zf.namelist())
            zf.extractall(dest)
        return
    if not tarfile.is_tarfile(archive):
        raise SourceError("not a .tar.gz, .tgz or .zip archive")
    with tarfile.open(archive, "r:*") as tf:
        _refuse_unsafe(tf.getnames())
        try:
            # the "data" filter also refuses links out of dest, device files and setuid bits
            # (https://docs.python.org/3/library/tarfile.html#tarfile.data_filter)
            tf.extractall(dest, filter="data")
        except tarfile.FilterError as exc:
            raise SourceError(f"unsafe archive: {exc}") from exc


def archive_root(unpacked: Path) -> Path:
    """The model directory inside an unpacked archive: its top, or its single top-level folder
    (release tarballs usually wrap their content in one)."""
    entries = [p for p in unpacked.iterdir() if p.name != "__MACOSX"]
    looks_like_model = any(p.name == CONFIG_FILENAME or (p.is_dir() and p.name.isdigit()) for p in entries)
    if not looks_like_model and len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return unpacked


def fetch_http(url: str, dest: Path, environ: Mapping[str, str]) -> None:
    """Download an archive from an https:// (or http://) URL, with the storage Secret's headers,
    and unpack it into dest."""
    # next to dest, so the final rename stays on one filesystem (and off a read-only /tmp)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        archive = Path(tmp) / "archive"
        download(url, archive, http_headers(environ))
        unpacked = Path(tmp) / "unpacked"
        unpacked.mkdir()
        unpack_archive(archive, unpacked)
        archive_root(unpacked).rename(dest)


def fetch_object_store(uri: str, dest: Path, environ: Mapping[str, str]) -> None:
    """Download every object under an s3:// or gs:// prefix into dest."""
    from kubeforge.triton.objectstore import ObjectStoreError, download_prefix

    try:
        count = download_prefix(uri, dest, environ)
    except ObjectStoreError as exc:
        raise SourceError(str(exc)) from exc
    log.info("downloaded %d objects from %s", count, redact(uri))


HF_TOKEN_ENV = "HF_TOKEN"
HF_ENDPOINT_ENV = "HF_ENDPOINT"


def hf_repository(source: str) -> tuple[str, str]:
    """(repo id, revision) of `hf://<org>/<model>[@<revision>]`; the revision defaults to main."""
    repo_id, _, revision = source.removeprefix("hf://").partition("@")
    org, _, model = repo_id.partition("/")
    if not org or not model or "/" in model or ".." in (org, model):
        raise SourceError("not an hf://<org>/<model>[@<revision>] URI")
    return repo_id, revision or "main"


def fetch_hf(source: str, dest: Path, environ: Mapping[str, str]) -> None:
    """Download a Hugging Face Hub repository at one revision into dest, with huggingface_hub.

    The token (if any) comes from the environment (HF_TOKEN, from the storage Secret), never from an
    argument; huggingface_hub sends it as the Authorization header only. HF_ENDPOINT points at a
    mirror or a private Hub.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    from huggingface_hub.utils.tqdm import disable_progress_bars

    disable_progress_bars()  # a progress bar per file is noise in a container's log

    repo_id, revision = hf_repository(source)
    token = environ.get(HF_TOKEN_ENV) or False  # False: never a token cached on the machine
    try:
        snapshot_download(
            repo_id,
            revision=revision,
            local_dir=dest,
            token=token,
            endpoint=environ.get(HF_ENDPOINT_ENV) or None,
            max_workers=4,
        )
    except (HfHubHTTPError, LocalEntryNotFoundError, ValueError) as exc:
        # the exception's text names the URL and the Hub's answer; the token is only ever a header
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise SourceError(f"{type(exc).__name__}: {redact(first)}") from exc
    # huggingface_hub's bookkeeping (download metadata) is not part of the model
    shutil.rmtree(dest / ".cache", ignore_errors=True)
    log.info("downloaded %s at %s", repo_id, revision)


def fetch_source(source: str, dest: Path, pvc_root: Path, environ: Mapping[str, str]) -> None:
    """Put the source's model directory at dest (which must not exist yet); `environ` holds the
    storage Secret's keys (prefixed or not)."""
    environ = credentials(environ)
    scheme = urllib.parse.urlsplit(source).scheme
    if scheme == "pvc":
        fetch_pvc(source, dest, pvc_root)
    elif scheme in ("https", "http"):
        fetch_http(source, dest, environ)
    elif scheme in ("s3", "gs"):
        fetch_object_store(source, dest, environ)
    elif scheme == "hf":
        fetch_hf(source, dest, environ)
    else:
        raise SourceError(f"unsupported source scheme {scheme!r}")
