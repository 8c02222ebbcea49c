"""The warehouse: where table files live, as a pyarrow filesystem URI.

``file://`` is a local directory; ``s3://bucket/prefix`` is any S3-compatible
store. S3 settings come from the standard AWS environment variables, on every
process that touches data (scheduler, workers, and the function processes,
which inherit their worker's environment):

- ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``: the endpoint (MinIO, moto, ...);
  buckets are then addressed path-style (``http://host:port/bucket/key``);
- ``AWS_REGION`` or ``AWS_DEFAULT_REGION``: the region (``us-east-1`` when an
  endpoint is given without one);
- credentials: the AWS SDK's default chain (``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, instance roles).

pyiceberg's FileIO does not read the endpoint or the region from the
environment (with no region it asks AWS itself where the bucket is), so
:func:`io_properties` turns them into FileIO properties, and every catalog and
StaticTable is made with them. pyarrow's own S3 filesystem, used for the
Parquet files workers write, is built from the same properties by
:func:`filesystem`, so both agree on where a URI points.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from faas.protocol.errors import FaasError, StorageError

logger = logging.getLogger(__name__)

S3_SCHEMES = ("s3", "s3a")

# pyiceberg FileIO property names (pyiceberg.io), spelled out so importing this
# module does not import pyiceberg.
S3_ENDPOINT = "s3.endpoint"
S3_REGION = "s3.region"
S3_ACCESS_KEY_ID = "s3.access-key-id"
S3_SECRET_ACCESS_KEY = "s3.secret-access-key"
S3_SESSION_TOKEN = "s3.session-token"

DEFAULT_REGION = "us-east-1"


def io_properties(
    overrides: Mapping[str, str] | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """pyiceberg FileIO properties for S3 from the AWS environment, then ``overrides``.

    Credentials are left to the AWS SDK's default chain (which reads the
    environment, profiles and instance roles) unless ``overrides`` set them.
    """
    env = os.environ if environ is None else environ
    props: dict[str, str] = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        props[S3_ENDPOINT] = endpoint
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        props[S3_REGION] = region
    elif endpoint:
        # Without a region pyiceberg asks AWS (not the endpoint) where the bucket is.
        props[S3_REGION] = DEFAULT_REGION
    props.update(overrides or {})
    return props


def is_local(uri: str) -> bool:
    """True for a ``file://`` URI or a plain path."""
    return urlparse(uri).scheme in ("", "file")


def filesystem(
    uri: str, properties: Mapping[str, str] | None = None
) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for ``uri`` and the path of ``uri`` in it.

    ``properties`` default to :func:`io_properties`. A ``file://`` URI is read
    the way pyiceberg reads it (no percent-decoding), so a home with a space in
    it names the same place for both.
    """
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme else os.path.abspath(uri)
        return pafs.LocalFileSystem(), path
    if parsed.scheme in S3_SCHEMES:
        props = io_properties() if properties is None else properties
        return _s3(props), f"{parsed.netloc}{parsed.path}".rstrip("/")
    try:
        return pafs.FileSystem.from_uri(uri)  # type: ignore[no-any-return]
    except (OSError, ValueError, TypeError) as e:
        raise StorageError(f"warehouse {uri}: {one_line(e)}") from e


def _s3(props: Mapping[str, str]) -> pafs.S3FileSystem:
    options: dict[str, Any] = {
        "endpoint_override": props.get(S3_ENDPOINT),
        "region": props.get(S3_REGION) or DEFAULT_REGION,
        "access_key": props.get(S3_ACCESS_KEY_ID),
        "secret_key": props.get(S3_SECRET_ACCESS_KEY),
        "session_token": props.get(S3_SESSION_TOKEN),
    }
    return pafs.S3FileSystem(**{k: v for k, v in options.items() if v is not None})


def check_warehouse(uri: str, properties: Mapping[str, str] | None = None) -> None:
    """Check that an object-store warehouse can be reached: its bucket exists and
    the credentials are accepted. A local warehouse is created when first written.

    Raises:
        StorageError: the bucket does not exist, access is denied, or the
            endpoint does not answer; the message names ``uri``.
    """
    parsed = urlparse(uri)
    if parsed.scheme not in S3_SCHEMES:
        return
    props = io_properties() if properties is None else properties
    bucket = parsed.netloc
    where = _endpoint_note(props)
    if not bucket:
        raise StorageError(f"warehouse {uri}: no bucket in the URI; expected s3://BUCKET/PREFIX")
    with storage_errors(f"warehouse {uri}", props):
        info = _s3(props).get_file_info(bucket)
    if info.type == pafs.FileType.NotFound:
        raise StorageError(
            f"warehouse {uri}: bucket {bucket!r} does not exist{where}; create it first"
        )
    logger.info("warehouse %s reachable%s", uri, where)


@contextmanager
def storage_errors(what: str, properties: Mapping[str, str] | None = None) -> Iterator[None]:
    """Turn an OSError from the filesystem into a one-line StorageError about ``what``.

    FileNotFoundError passes through: callers report a missing file as NotFound.
    """
    try:
        yield
    except (FaasError, FileNotFoundError):
        raise
    except OSError as e:
        raise StorageError(f"{what}: {describe(e, properties)}") from e


def describe(error: BaseException, properties: Mapping[str, str] | None = None) -> str:
    """One line about a filesystem error, with what to check for the usual S3 failures."""
    text = one_line(error)
    props = io_properties() if properties is None else properties
    if "ACCESS_DENIED" in text or "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text:
        return (
            f"access denied{_endpoint_note(props)}; check the credentials "
            f"(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE) ({text})"
        )
    if "NETWORK_CONNECTION" in text:
        endpoint = props.get(S3_ENDPOINT) or "the S3 endpoint"
        return f"cannot connect to {endpoint}; check AWS_ENDPOINT_URL or --s3-endpoint ({text})"
    if "NoSuchBucket" in text or ("Bucket" in text and "not found" in text):
        return f"the bucket does not exist{_endpoint_note(props)} ({text})"
    return text


def _endpoint_note(props: Mapping[str, str]) -> str:
    endpoint = props.get(S3_ENDPOINT)
    return f" at {endpoint}" if endpoint else ""


def one_line(error: BaseException, limit: int = 400) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
