"""Size-bounded local cache of object-store prefixes (checkpoints, datasets).

Entries are keyed by uri + fingerprint, so a changed object in the store is a new
entry. A fill downloads into a temp dir, verifies sizes (and MD5 ETags), then renames
into place, under a per-entry file lock: several worker processes asking for the same
checkpoint at once download it once, and no reader ever sees a partial entry.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from filelock import FileLock, Timeout

from workers.objectstore import ObjectInfo, md5_file, open_store

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 20 * 2**30
MANIFEST = ".llc-cache.json"
# Entries used this recently are never evicted: another process may be loading them.
_EVICT_GRACE_S = 60.0
#: a full disk: make room (evict) and try again, then fall back to a temporary directory
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class CacheError(ValueError):
    """A download that does not match what the store listed (changed or corrupt object)."""


def default_cache_dir() -> Path:
    """`LLC_CACHE_DIR`, else `$LLC_HOME/cache` (services.core.endpoints reports this same directory)."""
    if os.environ.get("LLC_CACHE_DIR"):
        return Path(os.environ["LLC_CACHE_DIR"]).expanduser()
    home = Path(os.environ.get("LLC_HOME", Path.home() / ".llc")).expanduser()
    return home / "cache"


def entry_key(uri: str, fingerprint: str) -> str:
    return hashlib.sha256(f"{uri.rstrip('/')}\n{fingerprint}".encode()).hexdigest()[:32]


def _is_md5(etag: str) -> bool:
    return len(etag) == 32 and all(c in "0123456789abcdef" for c in etag.lower())


class LocalCache:
    """A cache directory shared by every process on a node."""

    def __init__(self, root: Path | str | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 evict_grace_s: float = _EVICT_GRACE_S) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.max_bytes = max_bytes
        self.evict_grace_s = evict_grace_s
        self.fallback_reason: str | None = None    # why this cache lives in a temporary directory
        try:
            self._prepare(self.root)
        except OSError as exc:   # read-only, full, or not a directory: jobs still run, uncached for long
            self._fall_back(f"{type(exc).__name__}: {exc.strerror or exc}")

    @staticmethod
    def _prepare(root: Path) -> None:
        """Create the layout and prove it writable (a read-only mount lets mkdir of existing dirs pass)."""
        for sub in ("entries", "locks", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        probe = root / "tmp" / f".probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        probe.write_bytes(b"ok")
        probe.unlink()

    def _fall_back(self, reason: str) -> None:
        """Move to a per-user directory under the system temp dir, shared by this node's workers."""
        if self.fallback_reason is not None:
            raise OSError(errno.ENOSPC, f"the fallback cache {self.root} is unusable too ({reason})")
        fallback = Path(tempfile.gettempdir()) / f"llc-cache-fallback-{os.getuid()}"
        log.warning("cache directory %s is unusable (%s); caching in %s instead: fix LLC_CACHE_DIR or free space",
                    self.root, reason, fallback)
        fallback.mkdir(mode=0o700, exist_ok=True)
        self._prepare(fallback)
        self.root = fallback
        self.fallback_reason = reason

    def cached(self, uri: str, fingerprint: str) -> tuple[Path, list[ObjectInfo]] | None:
        """The complete entry for (uri, fingerprint) and its files, without asking the store."""
        final = self.entry_dir(uri, fingerprint)
        try:
            meta = json.loads((final / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        self._touch(final)
        return final, [ObjectInfo(key=k, size=int(size), etag=str(etag)) for k, size, etag in meta["files"]]

    def entry_dir(self, uri: str, fingerprint: str) -> Path:
        return self.root / "entries" / entry_key(uri, fingerprint)

    def _lock(self, key: str) -> FileLock:
        return FileLock(str(self.root / "locks" / f"{key}.lock"))

    def fetch(self, uri: str, fingerprint: str, files: Sequence[ObjectInfo]) -> Path:
        """The local directory holding `files` (keys relative to `uri`), downloading them if needed.

        A full disk first evicts every entry not in use and tries again, then falls back to a
        temporary directory; only when that is full too does the OSError reach the job.
        """
        return self._on_full_disk(lambda: self._fetch(uri, fingerprint, files))

    def _on_full_disk(self, fill: Callable[[], Path]) -> Path:
        try:
            return fill()
        except OSError as exc:
            if exc.errno == errno.EROFS:      # remounted read-only under us: eviction cannot help
                self._fall_back(f"read-only: {exc.strerror}")
                return fill()
            if exc.errno not in _FULL_ERRNOS:
                raise
            log.warning("cache %s is full (%s); evicting unused entries and retrying", self.root, exc.strerror)
        bound, self.max_bytes = self.max_bytes, 0
        try:
            self.evict()
        finally:
            self.max_bytes = bound
        try:
            return fill()
        except OSError as exc:
            if exc.errno not in _FULL_ERRNOS:
                raise
            self._fall_back(f"still full after eviction: {exc.strerror}")
        return fill()

    def _fetch(self, uri: str, fingerprint: str, files: Sequence[ObjectInfo]) -> Path:
        key = entry_key(uri, fingerprint)
        final = self.root / "entries" / key
        if (final / MANIFEST).is_file():
            self._touch(final)
            return final
        with self._lock(key):
            if (final / MANIFEST).is_file():
                self._touch(final)
                return final
            for stale in (self.root / "tmp").glob(f"{key}-*"):
                shutil.rmtree(stale, ignore_errors=True)  # left by a crashed fill; we hold the lock
            if final.exists():  # a directory without manifest cannot come from us; clear it
                shutil.rmtree(final, ignore_errors=True)
            tmp = self.root / "tmp" / f"{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir(parents=True)
            try:
                self._download(uri, files, tmp)
                total = sum(f.size for f in files)
                (tmp / MANIFEST).write_text(json.dumps({
                    "uri": uri, "fingerprint": fingerprint, "bytes": total,
                    "files": [[f.key, f.size, f.etag] for f in files],
                }))
                os.replace(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            self._touch(final)
        self.evict(keep=key)
        return final

    def _download(self, uri: str, files: Sequence[ObjectInfo], dest: Path) -> None:
        store = open_store(uri)
        for info in files:
            path = dest / info.key
            path.parent.mkdir(parents=True, exist_ok=True)
            store.download(info.key, path)
            size = path.stat().st_size
            if size != info.size:
                raise CacheError(f"The object {uri}/{info.key} has {size} bytes but was listed with "
                                 f"{info.size}; it changed while being read, list the checkpoint again.")
            if uri.startswith("s3://") and _is_md5(info.etag) and md5_file(path) != info.etag.lower():
                raise CacheError(f"The object {uri}/{info.key} does not match its ETag (corrupt download or "
                                 "changed object); fetch it again.")

    @staticmethod
    def _touch(path: Path) -> None:
        try:
            os.utime(path / MANIFEST)
        except FileNotFoundError:
            pass

    def entries(self) -> list[tuple[Path, int, float]]:
        """(dir, bytes, last used) of every complete entry."""
        out = []
        for entry in (self.root / "entries").iterdir():
            manifest = entry / MANIFEST
            try:
                meta = json.loads(manifest.read_text())
                out.append((entry, int(meta["bytes"]), manifest.stat().st_mtime))
            except (OSError, ValueError, KeyError):
                continue
        return out

    def evict(self, *, keep: str | None = None) -> int:
        """Remove least-recently-used entries beyond `max_bytes`; returns bytes freed."""
        with FileLock(str(self.root / "locks" / "_evict.lock")):
            entries = sorted(self.entries(), key=lambda e: e[2])
            total = sum(e[1] for e in entries)
            freed = 0
            now = time.time()
            for path, size, used in entries:
                if total <= self.max_bytes:
                    break
                if path.name == keep or now - used < self.evict_grace_s:
                    continue
                lock = self._lock(path.name)
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    continue
                try:
                    trash = self.root / "tmp" / f"trash-{path.name}-{uuid.uuid4().hex[:8]}"
                    os.replace(path, trash)
                    shutil.rmtree(trash, ignore_errors=True)
                finally:
                    lock.release()
                total -= size
                freed += size
            if total > self.max_bytes:
                log.info("cache %s holds %d bytes over its %d-byte bound (entries in use)", self.root,
                         total, self.max_bytes)
            return freed

