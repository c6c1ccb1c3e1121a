"""`llc train-demo` through the real command-line entry point."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.cli import main
from services.cli.train_demo import default_run_uri
from workers.checkpoints import discover_checkpoints


def test_default_out_is_under_the_embedded_store(capsys: pytest.CaptureFixture[str]) -> None:
    # conftest points LLC_HOME at a temp dir and clears LLC_STORAGE_URI.
    uri = default_run_uri()
    assert uri.startswith("file://") and uri.endswith("/objects/demo-run")
    assert main(["train-demo", "--steps", "6", "--checkpoints", "3", "--dataset-sequences", "8", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"{uri}: 3 checkpoints, steps 0..6 (trained in" in out
    assert [r.step for r in discover_checkpoints(uri)] == [0, 1, 6]
    path = Path(uri.removeprefix("file://"))
    assert json.loads((path / "train_config.json").read_text())["steps"] == 6
    assert set(json.loads((path / "step-6" / "metadata.json").read_text())) >= {
        "step", "train_loss", "in_context_loss", "induction_score"}
    # Same settings again: reused, not retrained.
    assert main(["train-demo", "--steps", "6", "--checkpoints", "3", "--dataset-sequences", "8", "--quiet"]) == 0
    assert "(reused)" in capsys.readouterr().out
    # Different settings on the same prefix: refused in one sentence; --force replaces the run.
    assert main(["train-demo", "--steps", "7", "--checkpoints", "3", "--dataset-sequences", "8", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"llc: error: The run prefix {uri} already holds other objects") and err.count("\n") == 1
    assert [r.step for r in discover_checkpoints(uri)] == [0, 1, 6]
    assert main(["train-demo", "--steps", "7", "--checkpoints", "3", "--dataset-sequences", "8", "--quiet",
                 "--force"]) == 0
    assert [r.step for r in discover_checkpoints(uri)] == [0, 1, 7]


def test_bad_options_and_uris_are_one_sentence(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["train-demo", "--steps", "0", "--out", tmp_path.as_uri()]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
    assert main(["train-demo", "--steps", "2", "--out", "http://example.com/run", "--quiet"]) == 2
    assert "neither s3://bucket/prefix nor file:///path" in capsys.readouterr().err
    assert main(["train-demo", "--skip-bigram", "1.5", "--out", tmp_path.as_uri()]) == 2
    assert "--skip-bigram is a probability in [0, 1), got 1.5" in capsys.readouterr().err
    assert main(["train-demo", "--weight-decay", "-0.1", "--out", tmp_path.as_uri()]) == 2
    assert "--weight-decay must be a finite number >= 0, got -0.1" in capsys.readouterr().err
    assert main(["train-demo", "--warmup-steps", "-1", "--out", tmp_path.as_uri()]) == 2
    assert "--warmup-steps must be >= 0, got -1" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())   # refused before anything was written


def test_weight_decay_and_warmup_reach_the_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["train-demo", "--steps", "4", "--checkpoints", "2", "--dataset-sequences", "8", "--quiet",
                 "--weight-decay", "2.0", "--warmup-steps", "0", "--out", out.as_uri()]) == 0
    config = json.loads((out / "train_config.json").read_text())
    assert (config["weight_decay"], config["warmup_steps"]) == (2.0, 0)


def test_skip_bigram_period_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train-demo", "--skip-bigram", "0.3", "--skip-bigram-period", "0", "--out", tmp_path.as_uri()]) == 2
    assert "--skip-bigram-period must be at least 1, got 0" in capsys.readouterr().err
