"""`s3://` references: datasets and model files fetched with boto3 into the local cache.

The endpoint comes from $MLFLOW_S3_ENDPOINT_URL or $AWS_ENDPOINT_URL (else AWS itself), the
credentials from boto3's usual chain ($AWS_ACCESS_KEY_ID, $AWS_SECRET_ACCESS_KEY, profiles);
they are never written or logged. An object lands in `<cache>/s3/<bucket>/<key>` and is
fetched again only when its ETag changes. A reference ending in '/' is a prefix, fetched
whole (an image folder).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

from auditai_ops.errors import AuditInputError
from auditai_ops.fileio import atomic_path, cache_dir, write_text

SCHEME = "s3://"
ENDPOINT_ENV = "MLFLOW_S3_ENDPOINT_URL"


def is_s3_uri(text: str) -> bool:
    return str(text).startswith(SCHEME)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of `s3://bucket/key`; keys that climb out of the bucket ('..') are refused."""
    bucket, _, key = uri[len(SCHEME) :].partition("/")
    if not bucket or any(part in ("..", ".") for part in PurePosixPath(key).parts):
        raise AuditInputError(f"'{uri}': expected s3://bucket/key")
    return bucket, key


def s3_client() -> Any:
    """A boto3 S3 client for the endpoint named in the environment."""
    try:
        import boto3
    except ImportError:
        raise AuditInputError("s3:// references need boto3: pip install auditai-ops[s3]") from None
    endpoint = os.environ.get(ENDPOINT_ENV) or None  # None: boto3's own resolution (AWS_ENDPOINT_URL, config files, AWS)
    return boto3.session.Session().client("s3", endpoint_url=endpoint)  # a fresh session reads the credentials from the environment now


def _error_code(error: Exception) -> str:
    """S3's error code of a botocore error (never the request, which may carry credentials)."""
    response = getattr(error, "response", None)
    return str(response.get("Error", {}).get("Code")) if isinstance(response, dict) else type(error).__name__


def _fetch_object(client: Any, bucket: str, key: str, root: Path) -> Path:
    """Download one object unless the cached copy has the same ETag."""
    local = root / "s3" / bucket / key
    etag_file = root / "s3-etags" / bucket / f"{key}.etag"
    etag = client.head_object(Bucket=bucket, Key=key)["ETag"]
    if local.is_file() and etag_file.is_file() and etag_file.read_text() == etag:
        return local
    with atomic_path(local) as tmp:
        client.download_file(bucket, key, str(tmp))
    write_text(etag_file, etag)
    return local


def fetch_s3(uri: str, siblings: tuple[str, ...] = ()) -> Path:
    """The local cached copy of `uri` (an object, or a prefix ending in '/'); `siblings` are suffixes fetched beside an object when present."""
    import botocore.exceptions

    bucket, key = parse_s3_uri(uri)
    client, root = s3_client(), cache_dir()
    try:
        if key and not key.endswith("/"):
            local = _fetch_object(client, bucket, key, root)
            for suffix in siblings:
                sibling = str(PurePosixPath(key).with_suffix(suffix))
                try:
                    _fetch_object(client, bucket, sibling, root)
                except botocore.exceptions.ClientError as error:
                    if _error_code(error) not in ("404", "NoSuchKey", "NotFound"):
                        raise
            return local
        keys = [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key) for item in page.get("Contents", [])]
        if not keys:
            raise AuditInputError(f"'{uri}': no objects under this prefix")
        for name in keys:
            parse_s3_uri(f"{SCHEME}{bucket}/{name}")
            if not name.endswith("/"):
                _fetch_object(client, bucket, name, root)
        return root / "s3" / bucket / key
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
        raise AuditInputError(f"'{uri}': cannot fetch from S3 ({_error_code(error)})") from None
