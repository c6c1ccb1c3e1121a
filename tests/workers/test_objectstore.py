"""The object store against a real moto S3 server over HTTP and the file:// backend."""
from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from workers.objectstore import ObjectStoreError, join_uri, open_store, s3_client


@pytest.fixture(params=["s3", "file"])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        return f"s3://{bucket}/some/prefix"
    return (tmp_path / "objects").as_uri()


def test_put_get_list_round_trip(store_uri: str, tmp_path: Path) -> None:
    store = open_store(store_uri)
    store.put_bytes("run/step-1/config.json", b'{"a": 1}')
    src = tmp_path / "w.bin"
    src.write_bytes(bytes(range(256)) * 10)
    store.upload(src, "run/step-1/model.safetensors")
    store.put_bytes("other/x", b"x")

    listed = store.list("run")
    assert [o.key for o in listed] == ["run/step-1/config.json", "run/step-1/model.safetensors"]
    assert [o.size for o in listed] == [8, 2560]
    assert all(o.etag for o in listed)
    assert store.get_bytes("run/step-1/config.json") == b'{"a": 1}'
    dest = tmp_path / "out.bin"
    store.download("run/step-1/model.safetensors", dest)
    assert dest.read_bytes() == src.read_bytes()

    child = store.child("run/step-1")
    assert child.uri == join_uri(store_uri, "run", "step-1")
    assert sorted(o.key for o in child.list()) == ["config.json", "model.safetensors"]
    assert open_store(child.uri).get_bytes("config.json") == b'{"a": 1}'

    before = {o.key: o.etag for o in store.list("run")}
    store.put_bytes("run/step-1/config.json", b'{"a": 2}')
    after = {o.key: o.etag for o in store.list("run")}
    assert before["run/step-1/config.json"] != after["run/step-1/config.json"]
    store.delete("other/x")
    assert store.list("other") == []


def test_missing_object_names_the_uri(store_uri: str) -> None:
    store = open_store(store_uri)
    with pytest.raises(ObjectStoreError, match="no object .*nothing-here"):
        store.get_bytes("nothing-here")
    assert store.list("nothing-here") == []


def test_missing_bucket_is_one_clear_sentence(s3_endpoint: str) -> None:
    with pytest.raises(ObjectStoreError, match=r"bucket 'no-such-bucket-x' .* does not exist; create it"):
        open_store("s3://no-such-bucket-x/runs").list()


def test_unreachable_endpoint_is_one_clear_sentence(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    with pytest.raises(ObjectStoreError, match="could not be reached .*AWS_ENDPOINT_URL_S3"):
        open_store("s3://any-bucket/x").list()


@pytest.mark.parametrize("uri", ["http://host/x", "s3:///nobucket", "file://remotehost/x", "/plain/path"])
def test_bad_uris_are_refused(uri: str) -> None:
    with pytest.raises(ObjectStoreError, match="URI"):
        open_store(uri)


def test_file_store_rejects_escaping_keys(tmp_path: Path) -> None:
    with pytest.raises(ObjectStoreError, match="not a plain relative path"):
        open_store(tmp_path.as_uri()).get_bytes("../etc/passwd")


def _client_owner(_: int) -> tuple[int, int, bool]:
    """Runs in a forked child whose inherited client belongs to the parent's pid."""
    import os

    from workers import objectstore

    first, second = s3_client(), s3_client()
    return os.getpid(), objectstore._CLIENT[0][0], first is second


def test_one_client_per_process_and_fresh_after_fork(s3_endpoint: str) -> None:
    import os

    assert s3_client() is s3_client()
    with mp.get_context("fork").Pool(2) as pool:
        children = pool.map(_client_owner, range(4))
    for pid, owner, reused in children:
        assert pid != os.getpid()
        assert owner == pid   # the child built its own client instead of using the parent's...
        assert reused         # ...and then kept using it


def test_transfers_broken_mid_stream_are_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import IncompleteReadError

    from workers import objectstore

    monkeypatch.setattr(objectstore, "_BASE_DELAY_S", 0.001)
    store = objectstore.S3Store("bucket", "prefix")
    failures = iter([IncompleteReadError(actual_bytes=1, expected_bytes=9)] * 2)

    def flaky() -> bytes:
        for exc in failures:
            raise exc
        return b"payload"

    assert store._call("s3://bucket/prefix/x", flaky) == b"payload"

    def broken() -> bytes:
        raise IncompleteReadError(actual_bytes=1, expected_bytes=9)

    with pytest.raises(ObjectStoreError, match=r"Reading s3://bucket/prefix/x from S3 kept failing .* 5 attempts"):
        store._call("s3://bucket/prefix/x", broken)

    def bug() -> bytes:
        raise KeyError("not transient")

    with pytest.raises(KeyError):   # programming errors are not retried or disguised
        store._call("s3://bucket/prefix/x", bug)
