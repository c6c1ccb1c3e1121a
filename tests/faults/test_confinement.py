"""The local object store stays inside its root: no `..` paths, no symlinks out of it."""
from __future__ import annotations

from pathlib import Path

import pytest

from services.cli import main as llc_main
from services.core.endpoints import StoragePathError, under_storage
from workers.objectstore import ObjectStoreError, open_store


def test_relative_paths_with_dot_dot_are_refused() -> None:
    with pytest.raises(StoragePathError, match=r"The path '\.\./\.\./x' leaves the storage root file:///srv/objects"):
        under_storage("../../x", "file:///srv/objects")
    with pytest.raises(StoragePathError):
        under_storage("runs/./a", "s3://bucket/prefix")
    assert under_storage("runs/a/", "s3://bucket/prefix") == "s3://bucket/prefix/runs/a"
    assert under_storage("file:///elsewhere/run", "s3://bucket/prefix") == "file:///elsewhere/run"


def test_submit_with_an_escaping_run_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = (tmp_path / "objects").as_uri()
    rc = llc_main(["submit", "storage=local", f"storage.uri={storage}", "sweep.run=../../../../etc",
                   f"store.url=sqlite:///{tmp_path / 'llc.db'}"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("llc: error: The path '../../../../etc' leaves the storage root") and err.count("\n") == 1
    assert not (tmp_path / "llc.db").exists()


def test_symlinks_out_of_the_root_are_neither_listed_nor_read(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    ckpt = root / "run" / "step-1"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    (ckpt / "model.safetensors").symlink_to(secret)
    (ckpt / "inside.json").symlink_to(ckpt / "config.json")      # a link inside the root is fine
    (root / "run" / "outside").symlink_to(tmp_path, target_is_directory=True)

    store = open_store(root.as_uri())
    assert [o.key for o in store.list("run")] == ["run/step-1/config.json", "run/step-1/inside.json"]
    with pytest.raises(ObjectStoreError, match="is a symlink out of the store root"):
        store.get_bytes("run/step-1/model.safetensors")
    with pytest.raises(ObjectStoreError, match="is a symlink out of the store root"):
        store.download("run/outside/secret.txt", tmp_path / "copy")
    with pytest.raises(ObjectStoreError, match="not a plain relative path"):
        store.get_bytes("run/../../secret.txt")
    checkpoint = open_store(ckpt.as_uri())        # a checkpoint opened on its own is confined to itself
    assert [o.key for o in checkpoint.list()] == ["config.json", "inside.json"]
    assert store.get_bytes("run/step-1/inside.json") == b"{}"
