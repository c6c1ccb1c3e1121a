"""One small interface over `s3://bucket/prefix` and `file:///path`.

Workers receive URIs, never bytes, so every read of a checkpoint or dataset goes
through here. S3 endpoint, credentials and region come from boto3's own environment
(`AWS_ENDPOINT_URL_S3`, `AWS_ACCESS_KEY_ID`, ...); the `file://` backend is the
embedded default. Keys are always relative to the store's own prefix.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

_ATTEMPTS = 5
_BASE_DELAY_S = 0.2


class ObjectStoreError(ValueError):
    """A store URI that cannot be used (missing bucket, unreachable endpoint, missing object)."""


class ObjectStoreUnavailable(ObjectStoreError):
    """The store is away (unreachable, 5xx, transfers keep breaking): an infrastructure fault,
    worth retrying later, unlike a missing object or bucket."""


_UNAVAILABLE_CODES = ("InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "500", "502", "503", "504")


@dataclass(frozen=True)
class ObjectInfo:
    key: str          # relative to the store's prefix, '/'-separated
    size: int
    etag: str         # S3 ETag (quotes stripped); for files, mtime and size


class ObjectStore(Protocol):
    uri: str

    def list(self, prefix: str = "") -> list[ObjectInfo]: ...
    def get_bytes(self, key: str) -> bytes: ...
    def download(self, key: str, dest: Path) -> None: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def upload(self, path: Path, key: str) -> None: ...
    def delete(self, key: str) -> None: ...
    def child(self, prefix: str) -> "ObjectStore": ...


def join_uri(base: str, *parts: str) -> str:
    """`join_uri("s3://b/runs", "r1", "step-5")` -> `s3://b/runs/r1/step-5`."""
    out = base.rstrip("/")
    for part in parts:
        part = part.strip("/")
        if part:
            out = f"{out}/{part}"
    return out


def open_store(uri: str) -> ObjectStore:
    """A store rooted at `uri` (`s3://bucket[/prefix]` or `file:///abs/path`)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ObjectStoreError(f"The URI {uri!r} names no bucket; write it as s3://bucket/prefix.")
        return S3Store(bucket=parsed.netloc, prefix=parsed.path.strip("/"))
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ObjectStoreError(f"The URI {uri!r} has a host; write a local path as file:///absolute/path.")
        return FileStore(Path(urllib.parse.unquote(parsed.path)))
    raise ObjectStoreError(f"The URI {uri!r} is neither s3://bucket/prefix nor file:///path; use one of those schemes.")


def md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- file://


class FileStore:
    """A local directory; writes are atomic (temp file + rename) so readers never see halves.

    Confined to its root: keys with `.`/`..` parts are refused and symlinks whose target lies
    outside the root are neither listed nor read (a checkpoint cannot smuggle in /etc/passwd).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = root.as_uri()
        self._real_root = root.resolve()

    def _path(self, key: str) -> Path:
        key = key.strip("/")
        if any(part in ("..", ".") for part in key.split("/")):
            raise ObjectStoreError(f"The key {key!r} under {self.uri} is not a plain relative path; "
                                   "drop its '.' and '..' parts.")
        path = self.root / key if key else self.root
        if not self._inside(path):
            raise ObjectStoreError(f"The object {join_uri(self.uri, key)} is a symlink out of the store root "
                                   f"{self.root}; copy the file into the store instead of linking it.")
        return path

    def _inside(self, path: Path) -> bool:
        return path.resolve().is_relative_to(self._real_root)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        out = []
        for path in sorted(base.rglob("*")):
            if not self._inside(path):
                log.warning("skipping %s: a symlink out of the store root %s", path, self.root)
                continue
            if path.is_file() and not path.name.startswith(".tmp-"):
                st = path.stat()
                out.append(ObjectInfo(key=path.relative_to(self.root).as_posix(), size=st.st_size,
                                      etag=f"{st.st_mtime_ns:x}-{st.st_size:x}"))
        return out

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectStoreError(f"There is no object {join_uri(self.uri, key)}; check the URI.") from None

    def download(self, key: str, dest: Path) -> None:
        try:
            shutil.copyfile(self._path(key), dest)
        except FileNotFoundError:
            raise ObjectStoreError(f"There is no object {join_uri(self.uri, key)}; check the URI.") from None

    def _atomic_write(self, key: str, write: Callable[[Path], None]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        os.close(fd)
        try:
            write(Path(tmp))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        self._atomic_write(key, lambda p: p.write_bytes(data))

    def upload(self, path: Path, key: str) -> None:
        self._atomic_write(key, lambda p: shutil.copyfile(path, p))

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def child(self, prefix: str) -> "FileStore":
        return FileStore(self._path(prefix))


# --------------------------------------------------------------------------- s3://

_CLIENT_LOCK = threading.Lock()
_CLIENT: tuple[tuple[int, str, str], object] | None = None


def s3_client() -> object:
    """The process's one boto3 S3 client.

    Re-created after fork (clients are not fork-safe) and when boto3's endpoint or retry
    variables change. botocore retries each request (standard mode, 5 attempts unless
    AWS_MAX_ATTEMPTS says otherwise).
    """
    global _CLIENT
    key = (os.getpid(), os.environ.get("AWS_ENDPOINT_URL_S3", ""), os.environ.get("AWS_MAX_ATTEMPTS", ""))
    with _CLIENT_LOCK:
        if _CLIENT is None or _CLIENT[0] != key:
            import boto3
            from botocore.config import Config

            retries: dict[str, object] = {"mode": os.environ.get("AWS_RETRY_MODE", "standard")}
            if not os.environ.get("AWS_MAX_ATTEMPTS"):
                retries["max_attempts"] = _ATTEMPTS
            client = boto3.session.Session().client("s3", config=Config(
                retries=retries, connect_timeout=10, read_timeout=120))
            _CLIENT = (key, client)
        return _CLIENT[1]


def _is_transient(exc: BaseException) -> bool:
    """Errors while streaming a body, which botocore's per-request retries do not cover."""
    from botocore.exceptions import IncompleteReadError, ReadTimeoutError, ResponseStreamingError
    from urllib3.exceptions import ProtocolError

    return isinstance(exc, (IncompleteReadError, ResponseStreamingError, ReadTimeoutError, ProtocolError,
                            ConnectionResetError))


class S3Store:
    """A bucket + prefix; botocore retries each request, `_call` retries transfers broken mid-stream."""

    def __init__(self, bucket: str, prefix: str) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = join_uri(f"s3://{bucket}", self.prefix)

    def _key(self, key: str) -> str:
        return "/".join(p for p in (self.prefix, key.strip("/")) if p)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        from botocore.exceptions import ClientError, EndpointConnectionError, HTTPClientError, NoCredentialsError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        for attempt in range(_ATTEMPTS):
            try:
                return fn()
            except NoCredentialsError:
                raise ObjectStoreError(f"No AWS credentials were found for {what}; set AWS_ACCESS_KEY_ID/"
                                       "AWS_SECRET_ACCESS_KEY or an AWS profile.") from None
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code == "NoSuchBucket":
                    raise ObjectStoreError(f"The bucket {self.bucket!r} of {what} does not exist; create it "
                                           "or fix the URI.") from None
                if code in ("NoSuchKey", "404", "NotFound"):
                    raise ObjectStoreError(f"There is no object {what}; check the URI.") from None
                if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                    raise ObjectStoreError(f"Access to {what} was denied ({code}); check the AWS credentials "
                                           "and the bucket policy.") from None
                if code in _UNAVAILABLE_CODES:
                    raise ObjectStoreUnavailable(f"S3 answered {code} for {what}; it is overloaded or down, "
                                                 "retry later.") from exc
                raise ObjectStoreError(f"S3 refused {what} ({code or exc}); check the URI and the S3 service.") \
                    from exc
            except (EndpointConnectionError, BotoConnectionError) as exc:
                endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS"
                raise ObjectStoreUnavailable(f"S3 at {endpoint} could not be reached for {what}; check that it is "
                                             "up and that AWS_ENDPOINT_URL_S3 points at it.") from exc
            except Exception as exc:  # noqa: BLE001 - classified below
                if not _is_transient(exc):
                    if isinstance(exc, HTTPClientError):   # connection closed or broken before an answer
                        raise ObjectStoreUnavailable(f"S3 dropped the connection for {what} ({type(exc).__name__}); "
                                                     "retry when it is back.") from exc
                    raise
                if attempt == _ATTEMPTS - 1:
                    raise ObjectStoreUnavailable(f"Reading {what} from S3 kept failing ({type(exc).__name__}) after "
                                           f"{_ATTEMPTS} attempts; retry later.") from exc
            delay = _BASE_DELAY_S * (2 ** attempt) * (0.5 + random.random())
            log.warning("transient S3 error on %s; retrying in %.1fs", what, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _pages(self, prefix: str) -> Iterator[dict]:
        paginator = s3_client().get_paginator("list_objects_v2")  # type: ignore[attr-defined]
        full = self._key(prefix)
        full = f"{full}/" if full else ""
        yield from paginator.paginate(Bucket=self.bucket, Prefix=full)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        def run() -> list[ObjectInfo]:
            base = f"{self.prefix}/" if self.prefix else ""
            out = []
            for page in self._pages(prefix):
                for obj in page.get("Contents", []):
                    out.append(ObjectInfo(key=obj["Key"][len(base):], size=int(obj["Size"]),
                                          etag=str(obj.get("ETag", "")).strip('"')))
            return sorted(out, key=lambda o: o.key)

        return self._call(join_uri(self.uri, prefix), run)

    def get_bytes(self, key: str) -> bytes:
        def run() -> bytes:
            resp = s3_client().get_object(Bucket=self.bucket, Key=self._key(key))  # type: ignore[attr-defined]
            return resp["Body"].read()

        return self._call(join_uri(self.uri, key), run)

    def download(self, key: str, dest: Path) -> None:
        self._call(join_uri(self.uri, key),
                   lambda: s3_client().download_file(self.bucket, self._key(key), str(dest)))  # type: ignore[attr-defined]

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(join_uri(self.uri, key),
                   lambda: s3_client().put_object(Bucket=self.bucket, Key=self._key(key), Body=data))  # type: ignore[attr-defined]

    def upload(self, path: Path, key: str) -> None:
        self._call(join_uri(self.uri, key),
                   lambda: s3_client().upload_file(str(path), self.bucket, self._key(key)))  # type: ignore[attr-defined]

    def delete(self, key: str) -> None:
        self._call(join_uri(self.uri, key),
                   lambda: s3_client().delete_object(Bucket=self.bucket, Key=self._key(key)))  # type: ignore[attr-defined]

    def child(self, prefix: str) -> "S3Store":
        return S3Store(self.bucket, self._key(prefix))
