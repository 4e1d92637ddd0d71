"""s3:// and gs:// sources: SigV4 signing against AWS's published examples and botocore, and
downloads from an S3-compatible server (moto) on loopback."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from kubeforge.triton.objectstore import (
    Bucket,
    Credentials,
    ObjectStoreError,
    bucket_for,
    canonical_query,
    download_prefix,
    list_keys,
    parse_uri,
    sign_request,
)
from kubeforge.triton.repository import PlannedModel, assemble_repository
from tests.harness import import_part

from .models import ADD_MODEL_PY

EXAMPLE = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
MAY_24_2013 = dt.datetime(2013, 5, 24, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("url", "headers", "signature"),
    [
        # https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html ("GET Object")
        (
            "https://examplebucket.s3.amazonaws.com/test.txt",
            {"Range": "bytes=0-9"},
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
        ),
        # the same page, "GET Bucket (List Objects)"
        (
            "https://examplebucket.s3.amazonaws.com/?max-keys=2&prefix=J",
            {},
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
        ),
    ],
)
def test_signature_matches_the_aws_examples(url: str, headers: dict[str, str], signature: str) -> None:
    signed = sign_request(
        "GET", url, region="us-east-1", credentials=EXAMPLE, now=MAY_24_2013, headers=headers
    )
    assert signed["authorization"].endswith(f"Signature={signature}")
    assert signed["authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;"
    )


@pytest.mark.parametrize(
    ("bucket", "key", "params", "token"),
    [
        (Bucket("models", "http://127.0.0.1:9000", "eu-west-1", None, True), "a b/ü+x=1.bin", {}, None),
        (
            Bucket("models", "https://s3.us-east-2.amazonaws.com", "us-east-2", None, False),
            "",
            {"list-type": "2", "prefix": "team a/model+1/", "continuation-token": "1/abc=="},
            "FwoGZXIvYXdzEB0aDKEY",
        ),
    ],
)
def test_signature_matches_botocore(
    bucket: Bucket, key: str, params: dict[str, str], token: str | None
) -> None:
    botocore_auth = import_part("botocore.auth")
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotoCredentials

    now = dt.datetime(2024, 2, 29, 12, 34, 56, tzinfo=dt.UTC)
    url = bucket.url(key, canonical_query(params))
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    ours = sign_request("GET", url, region=bucket.region, credentials=credentials, now=now)

    request = AWSRequest(method="GET", url=url)
    signer = botocore_auth.S3SigV4Auth(
        BotoCredentials("AKIDEXAMPLE", credentials.secret_key, token), "s3", bucket.region
    )
    with mock.patch.object(botocore_auth, "get_current_datetime", return_value=now.replace(tzinfo=None)):
        request.headers["X-Amz-Content-SHA256"] = ours["x-amz-content-sha256"]
        signer.add_auth(request)
    assert ours["authorization"] == request.headers["Authorization"]


@pytest.mark.parametrize(
    ("uri", "environ", "expected_url"),
    [
        ("s3://models/resnet", {}, "https://models.s3.us-east-1.amazonaws.com/"),
        (
            "s3://models/resnet",
            {"AWS_DEFAULT_REGION": "eu-west-3"},
            "https://models.s3.eu-west-3.amazonaws.com/",
        ),
        ("s3://my.models/x", {"AWS_REGION": "us-west-2"}, "https://s3.us-west-2.amazonaws.com/my.models/"),
        ("s3://models/x", {"AWS_ENDPOINT_URL": "http://minio:9000/"}, "http://minio:9000/models/"),
        (
            "s3://models/x",
            {"AWS_ENDPOINT_URL_S3": "http://a:1", "AWS_ENDPOINT_URL": "http://b:2"},
            "http://a:1/models/",
        ),
        ("gs://models/x", {}, "https://storage.googleapis.com/models/"),
        ("gs://models/x", {"KUBEFORGE_GCS_ENDPOINT_URL": "http://gcs:4443"}, "http://gcs:4443/models/"),
    ],
)
def test_endpoints(uri: str, environ: dict[str, str], expected_url: str) -> None:
    scheme, name, _ = parse_uri(uri)
    assert bucket_for(scheme, name, environ).url() == expected_url


def test_credentials_come_from_the_aws_variables() -> None:
    assert bucket_for("s3", "b", {}).credentials is None  # a public bucket: unsigned requests
    env = {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_SESSION_TOKEN": "tok"}
    assert bucket_for("gs", "b", env).credentials == Credentials("id", "secret", "tok")
    assert bucket_for("gs", "b", env).region == "auto"


def test_parse_uri() -> None:
    assert parse_uri("s3://bucket/a/b/") == ("s3", "bucket", "a/b")
    assert parse_uri("gs://bucket") == ("gs", "bucket", "")
    with pytest.raises(ObjectStoreError, match="is not an s3://"):
        parse_uri("https://bucket/a")


# --- against an S3-compatible server on loopback -----------------------------------------------


def env_for(endpoint: str) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_ENDPOINT_URL": endpoint}


def test_s3_model_is_downloaded(s3_endpoint: str, bucket: Any, tmp_path: Path) -> None:
    bucket.put_object(Key="team/add/config.pbtxt", Body=b'name: "add"\nbackend: "python"\n')
    bucket.put_object(Key="team/add/1/model.py", Body=ADD_MODEL_PY.encode())
    bucket.put_object(Key="team/add/1/", Body=b"")  # a "folder" marker some tools create
    bucket.put_object(Key="team/add-v2/1/model.py", Body=b"# another model sharing the prefix")
    out = tmp_path / "models"
    plan = [PlannedModel("add", f"s3://{bucket.name}/team/add", "python", None)]
    assert assemble_repository(plan, out, tmp_path, env_for(s3_endpoint)) == []
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "add",
        "add/1",
        "add/1/model.py",
        "add/config.pbtxt",
    ]
    assert (out / "add" / "1" / "model.py").read_text() == ADD_MODEL_PY


def test_listing_follows_continuation_tokens(s3_endpoint: str, bucket: Any) -> None:
    keys = [f"m/1/part-{index}" for index in range(5)]
    for key in keys:
        bucket.put_object(Key=key, Body=b"x")
    listed = list(list_keys(bucket_for("s3", bucket.name, env_for(s3_endpoint)), "m/", page_size=2))
    assert listed == keys


def test_gs_uses_the_xml_api(s3_endpoint: str, bucket: Any, tmp_path: Path) -> None:
    bucket.put_object(Key="add/1/model.py", Body=b"# model")
    env = env_for(s3_endpoint) | {"KUBEFORGE_GCS_ENDPOINT_URL": s3_endpoint}
    assert download_prefix(f"gs://{bucket.name}/add", tmp_path / "add", env) == 1


def test_object_store_errors_name_the_model(s3_endpoint: str, bucket: Any, tmp_path: Path) -> None:
    env = env_for(s3_endpoint)
    plan = [
        PlannedModel("empty", f"s3://{bucket.name}/nothing-here", "python", None),
        PlannedModel("nobucket", "s3://no-such-bucket/add", "python", None),
    ]
    errors = assemble_repository(plan, tmp_path / "models", tmp_path, env)
    assert [str(e) for e in errors] == [
        f"model 'empty' from s3://{bucket.name}/nothing-here: no objects under s3://{bucket.name}/nothing-here",
        "model 'nobucket' from s3://no-such-bucket/add: listing no-such-bucket/add/: "
        "HTTP 404 NoSuchBucket: The specified bucket does not exist",
    ]
