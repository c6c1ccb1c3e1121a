"""The local cache: concurrent fills from several processes, verification, atomicity, LRU eviction."""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from workers.cache import MANIFEST, CacheError, LocalCache
from workers.checkpoints import fingerprint_of
from workers.objectstore import ObjectInfo, open_store


def _put(uri: str, files: dict[str, bytes]) -> tuple[str, tuple[ObjectInfo, ...]]:
    store = open_store(uri)
    for key, data in files.items():
        store.put_bytes(key, data)
    listed = tuple(store.list())
    return fingerprint_of(listed), listed


def _fill(args: tuple[str, str, str, tuple[ObjectInfo, ...]]) -> tuple[str, bytes, int]:
    root, uri, fp, files = args
    path = LocalCache(root).fetch(uri, fp, files)
    return str(path), (path / "model.safetensors").read_bytes(), (path / "model.safetensors").stat().st_ino


def test_concurrent_fills_from_several_processes(s3_bucket: str, tmp_path: Path) -> None:
    uri = f"s3://{s3_bucket}/run/step-1"
    weights = os.urandom(3 << 20)
    fp, files = _put(uri, {"config.json": b"{}", "model.safetensors": weights})
    root = str(tmp_path / "cache")
    ctx = mp.get_context("spawn")  # fresh interpreters, as separate Ray workers would be
    with ctx.Pool(4) as pool:
        results = pool.map(_fill, [(root, uri, fp, files)] * 4)
    assert len({p for p, _, _ in results}) == 1
    assert all(data == weights for _, data, _ in results)
    assert len({ino for _, _, ino in results}) == 1   # one fill; the others waited and used it
    cache = LocalCache(root)
    assert len(cache.entries()) == 1
    assert list((Path(root) / "tmp").iterdir()) == []
    entry = Path(results[0][0])
    assert sorted(p.name for p in entry.iterdir()) == sorted(["config.json", "model.safetensors", MANIFEST])


def test_changed_object_is_a_new_entry(tmp_path: Path, s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/run/step-2"
    cache = LocalCache(tmp_path / "cache")
    fp1, files1 = _put(uri, {"config.json": b"{}", "model.safetensors": b"one"})
    first = cache.fetch(uri, fp1, files1)
    fp2, files2 = _put(uri, {"model.safetensors": b"two!"})
    assert fp2 != fp1
    second = cache.fetch(uri, fp2, files2)
    assert first != second
    assert (first / "model.safetensors").read_bytes() == b"one"
    assert (second / "model.safetensors").read_bytes() == b"two!"
    assert cache.fetch(uri, fp2, files2) == second


@pytest.mark.parametrize("same_size", [True, False])
def test_object_changed_since_listing_leaves_no_entry(tmp_path: Path, s3_bucket: str, same_size: bool) -> None:
    uri = f"s3://{s3_bucket}/run/step-3"
    fp, files = _put(uri, {"config.json": b"{}", "model.safetensors": b"original"})
    open_store(uri).put_bytes("model.safetensors", b"tampered" if same_size else b"tampered-longer")
    cache = LocalCache(tmp_path / "cache")
    with pytest.raises(CacheError, match=rf"{uri}/model.safetensors"):
        cache.fetch(uri, fp, files)
    assert cache.entries() == []
    assert list((tmp_path / "cache" / "entries").iterdir()) == []
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


def test_file_backend_and_crash_leftovers(tmp_path: Path) -> None:
    uri = (tmp_path / "objects" / "r" / "step-1").as_uri()
    fp, files = _put(uri, {"config.json": b"{}", "model.safetensors": b"w" * 100})
    cache = LocalCache(tmp_path / "cache")
    final = cache.entry_dir(uri, fp)
    # What a crashed fill leaves behind: a temp dir, and no manifest in place.
    (tmp_path / "cache" / "tmp" / f"{final.name}-12345-deadbeef").mkdir()
    path = cache.fetch(uri, fp, files)
    assert path == final and (path / "model.safetensors").read_bytes() == b"w" * 100
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


def _last_used(cache: LocalCache, uri: str, fp: str, when: float) -> None:
    """Set an entry's last-used time (its manifest's mtime) explicitly: no sleeping for distinct mtimes."""
    os.utime(cache.entry_dir(uri, fp) / MANIFEST, (when, when))


def test_lru_eviction_beyond_the_size_bound(tmp_path: Path) -> None:
    cache = LocalCache(tmp_path / "cache", max_bytes=250, evict_grace_s=0.0)
    start = time.time()
    entries = {}
    for i in range(3):
        uri = (tmp_path / "objects" / f"step-{i}").as_uri()
        fp, files = _put(uri, {"model.safetensors": bytes([i]) * 100})
        entries[i] = (uri, fp, files)
        cache.fetch(uri, fp, files)
        _last_used(cache, uri, fp, start - 300 + 100 * i)  # distinct last-used times, older than any fetch below
    # 300 bytes > 250: the least recently used (step-0) went when step-2 arrived.
    kept = {p.name for p, _, _ in cache.entries()}
    assert cache.entry_dir(*entries[0][:2]).name not in kept
    assert {cache.entry_dir(*entries[i][:2]).name for i in (1, 2)} == kept
    # Using step-1 makes step-2 the oldest; refetching step-0 evicts step-2.
    cache.fetch(*entries[1])          # touched now: newer than step-2's explicit time
    cache.fetch(*entries[0])
    kept = {p.name for p, _, _ in cache.entries()}
    assert kept == {cache.entry_dir(*entries[i][:2]).name for i in (0, 1)}
    assert sum(size for _, size, _ in cache.entries()) <= 250
