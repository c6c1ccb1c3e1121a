"""`aggregate_sweep`: a sweep's results → λ̂ curves, stages (stored), stability, plots, MLflow.

Runs on demand (`llc aggregate SWEEP`) and when a sweep's last job finishes (the scheduler
calls it). Stages are replaced per sweep, plots and tables are rewritten, and the MLflow
aggregate run is replaced, so aggregating again never duplicates anything.
"""
from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from services.aggregator.bootstrap import BootstrapStages, bootstrap_stages
from services.aggregator.curves import SettingCurve, build_curves
from services.aggregator.head_scores import (HeadScores, describe_moves, head_llc_moves, mlflow_head_series, moved_heads,
                                            read_head_scores)
from services.aggregator.heads import head_maps, plot_head_map
from services.aggregator.plots import LossSeries, plot_overview, plot_setting
from services.aggregator.report import AggregateReport, SettingStage
from services.aggregator.stability import assess, recommend
from services.aggregator.stages import StageDetection
from services.core.paths import llc_home
from services.store.db import ensure_schema, session_scope
from services.store.entities import StageRow
from services.store.results import sweep_results
from services.store.stages import replace_stages
from services.store.sweeps import get_sweep
from services.tracking import Tracker, TrackingUnavailable, sweep_parent_run

METADATA_FILE = "metadata.json"
# Which metadata loss types the stages, best first (held-out loss beats one training batch).
LOSS_PREFERENCE: tuple[str, ...] = ("loss", "train_loss", "training_loss")


def default_out_dir(sweep_id: int) -> Path:
    return llc_home() / "aggregates" / f"sweep-{sweep_id}"


def read_checkpoint_metadata(checkpoint_uri: str) -> dict[str, float] | None:
    """Numeric fields of the checkpoint's metadata.json (None when it has none)."""
    from workers.objectstore import ObjectStoreError, open_store

    try:
        raw = open_store(checkpoint_uri).get_bytes(METADATA_FILE)
    except ObjectStoreError as exc:
        if str(exc).startswith("There is no object"):  # metadata is optional
            return None
        raise
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{checkpoint_uri}/{METADATA_FILE} is not valid JSON; rewrite or delete it.") from exc
    if not isinstance(doc, dict):
        return None
    return {k: float(v) for k, v in doc.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def _metadata_by_step(rows: Sequence[Any], notes: list[str]) -> dict[int, dict[str, float]]:
    """metadata.json per checkpoint step; the first unreadable store stops the reading (a
    dead endpoint would otherwise cost its retries once per checkpoint)."""
    seen: dict[str, dict[str, float] | None] = {}
    out: dict[int, dict[str, float]] = {}
    for row in rows:
        uri = row.checkpoint_uri
        if uri not in seen:
            try:
                seen[uri] = read_checkpoint_metadata(uri)
            except Exception as exc:
                notes.append(f"checkpoint metadata not read ({' '.join(str(exc).split())[:200]}); "
                             "stages are typed by the results' loss_wstar")
                return {}
        if seen[uri]:
            out[int(row.step)] = seen[uri]  # type: ignore[assignment]
    return out


def _loss_series(curves: Sequence[SettingCurve], metadata: dict[int, dict[str, float]]) -> dict[str, tuple[list[float], list[float]]]:
    """Every loss known per checkpoint: loss_wstar from the results, metadata.json fields."""
    init: dict[int, list[float]] = defaultdict(list)
    for c in curves:
        for p in c.points:
            if p.loss_wstar is not None:
                init[p.step].append(p.loss_wstar)
    series: dict[str, tuple[list[float], list[float]]] = {}
    if init:
        steps = sorted(init)
        series["loss_wstar"] = ([float(s) for s in steps], [float(np.mean(init[s])) for s in steps])
    names = sorted({k for m in metadata.values() for k in m if "loss" in k})
    for name in names:
        steps = sorted(s for s, m in metadata.items() if name in m)
        series[name] = ([float(s) for s in steps], [metadata[s][name] for s in steps])
    return series


def _pick_loss(series: dict[str, tuple[list[float], list[float]]]) -> str | None:
    for name in (*LOSS_PREFERENCE, "loss_wstar"):
        if name in series and len(series[name][0]) >= 2:
            return name
    return None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "setting"


def aggregate_sweep(*, sweep_id: int, database_url: str, tracker: Tracker | None = None,
                    out_dir: Path | None = None, log_to_mlflow: bool = True, z: float = 3.0,
                    r_hat_threshold: float = 1.1, max_rel_spread: float = 0.5,
                    bootstrap_replicates: int = 100, max_diverged_share: float = 0.0,
                    storage_uri: str | None = None) -> AggregateReport:
    """Aggregate one sweep; MLflow only with a `tracker` and `log_to_mlflow`. An
    unreachable tracking server does not lose the work: stages are stored and files written,
    and the report's `tracking_error` says what failed. Step 0 is kept (fits use log(step+1)).
    max_diverged_share: jobs that dropped at most this share of their chains stay in the curves
    (marked); 0 leaves every job with a diverged chain out. With `storage_uri`, plots and stage
    files are also put under `<storage>/aggregates/sweep-<id>/` so a team finds them where its
    checkpoints are, not on one machine's disk."""
    ensure_schema(database_url)
    with session_scope(database_url) as session:
        sweep = get_sweep(session, sweep_id=sweep_id)
        sweep_name = sweep.name
        rows = sweep_results(session, sweep_id=sweep_id)

    notes: list[str] = []
    curves, counts = build_curves(rows, max_diverged_share=max_diverged_share)
    metadata = _metadata_by_step([r for r in rows if r.status == "succeeded"], notes)
    losses = _loss_series(curves, metadata)
    loss_name = _pick_loss(losses)

    heads = read_head_scores((int(r.step), r.checkpoint_uri) for r in rows if r.status == "succeeded")
    detections: dict[str, StageDetection] = {}
    boots: dict[str, BootstrapStages] = {}
    for curve in curves:
        if len(curve.points) < 2:
            continue
        steps, mean, _, sem = curve.arrays()
        if loss_name == "loss_wstar":  # this setting's own L_n(w*) per checkpoint
            lsteps = [p.step for p in curve.points if p.loss_wstar is not None]
            lvals = [p.loss_wstar for p in curve.points if p.loss_wstar is not None]
        elif loss_name is not None:
            lsteps, lvals = losses[loss_name]
        else:
            lsteps, lvals = [], []
        boot = bootstrap_stages(steps, [p.estimates or (p.llc_mean,) for p in curve.points],
                                loss_steps=lsteps or None, loss=lvals if len(lvals) >= 2 else None, z=z,
                                replicates=bootstrap_replicates)
        boots[curve.key] = boot
        detections[curve.key] = boot.detection

    verdicts = assess(curves, r_hat_threshold=r_hat_threshold, max_rel_spread=max_rel_spread)
    recommended = recommend(verdicts)
    primary = recommended.key if recommended else None
    if primary is None and curves:
        by_quality = sorted(zip(verdicts, curves, strict=True), key=lambda vc: (-len(vc[1].points), len(vc[0].reasons)))
        primary = by_quality[0][1].key
        notes.append("no setting is usable (see the stability table); MLflow `llc` follows the setting with the most estimates")

    stages = [_setting_stage(c, u, heads, curves) for c in curves for u in (boots[c.key].stages if c.key in boots else ())]
    stored = [StageRow(hyperparameters=s.hyperparameters, start_step=s.stage.start_step, end_step=s.stage.end_step,
                       kind=s.stage.kind, llc_change=s.stage.llc_change, loss_change=s.stage.loss_change,
                       details={**s.as_dict(), "loss_source": loss_name, "step_axis": "log(step + 1)"})
              for s in stages]
    with session_scope(database_url) as session:
        replace_stages(session, sweep_id=sweep_id, stages=stored)

    report = AggregateReport(
        sweep_id=sweep_id, sweep_name=sweep_name, out_dir=out_dir or default_out_dir(sweep_id), curves=curves,
        detections=detections, stages=stages, stability=verdicts, recommended=recommended, primary_key=primary,
        counts=dict(counts), loss_source=loss_name or "none", notes=notes)
    report.head_scores = heads
    report.bootstraps = boots
    _write_plots(report, losses, loss_name)
    head_files = _write_head_maps(report)
    report.artifacts = [*report.plots, *report.write_stage_files(), *head_files]
    if storage_uri:
        from workers.objectstore import ObjectStoreError

        try:
            report.artifact_uris = _upload(report.artifacts, storage_uri=storage_uri, sweep_id=sweep_id)
        except ObjectStoreError as exc:   # the local files and MLflow still have them
            notes.append(f"plots not copied to the object store: {exc}")

    if log_to_mlflow and tracker is not None:
        try:
            report.parent_run_id = sweep_parent_run(tracker, sweep_id=sweep_id, database_url=database_url)
            report.mlflow_run_id = tracker.log_aggregate(parent_run_id=report.parent_run_id,
                                                         series={**mlflow_series(report, losses),
                                                                 **mlflow_head_series(heads)},
                                                         artifacts=report.artifacts)
        except TrackingUnavailable as exc:
            report.tracking_error = str(exc)
    return report


def _setting_stage(curve: SettingCurve, u: Any, heads: HeadScores, curves: Sequence[SettingCurve]) -> SettingStage:
    """The stage with the heads whose scores (checkpoint metadata) and per-head λ̂ (component
    curves) moved in it."""
    start, end = u.stage.start_step, u.stage.end_step
    moves = moved_heads(heads, start, end) if heads else []
    llc_moves = head_llc_moves(curves, curve, start, end)
    text = "; ".join(t for t in (describe_moves(moves), describe_moves(llc_moves)) if t)
    return SettingStage(curve.key, curve.label, curve.hyperparameters, u.stage, uncertainty=u, heads=text)


def _upload(paths: list[Path], *, storage_uri: str, sweep_id: int) -> list[str]:
    from workers.objectstore import join_uri, open_store

    store = open_store(join_uri(storage_uri, "aggregates", f"sweep-{sweep_id}"))
    for path in paths:
        store.upload(path, path.name)
    return [join_uri(store.uri, p.name) for p in paths]


def _write_plots(report: AggregateReport, losses: dict[str, tuple[list[float], list[float]]],
                 loss_name: str | None) -> None:
    shown: LossSeries = {k: v for k, v in losses.items() if k in {loss_name, "loss_wstar", "in_context_loss"}}
    for i, curve in enumerate(report.curves):
        if not curve.points:
            continue
        path = report.out_dir / f"llc-{i + 1:02d}-{_slug(curve.metric_label)}.png"
        title = f"{report.sweep_name}: λ̂ over training — {curve.label or 'setting'}"
        report.plots.append(plot_setting(path, curve=curve, detection=report.detections.get(curve.key),
                                         losses=shown, title=title))
    _write_head_plots(report, shown)
    if any(c.points for c in report.curves):
        rec = report.recommended.key if report.recommended else None
        report.plots.insert(0, plot_overview(
            report.out_dir / "overview.png", curves=[c for c in report.curves if c.points],
            detection=report.detections.get(report.primary_key or ""), recommended_key=rec, losses=shown,
            title=f"{report.sweep_name} (sweep {report.sweep_id}): λ̂ per setting; stages of "
                  f"{'the recommended' if rec else 'the primary'} setting"))


def _write_head_maps(report: AggregateReport) -> list[Path]:
    """Per-head λ̂ heatmap PNG + clusters JSON per setting; the clusters go into the report's notes."""
    files: list[Path] = []
    for i, hm in enumerate(head_maps(report.curves)):
        name = f"heads-{i + 1:02d}{'-' + _slug(hm.setting) if hm.setting else ''}"
        title = f"{report.sweep_name}: λ̂ per head over training{' — ' + hm.setting if hm.setting else ''}"
        report.plots.append(plot_head_map(report.out_dir / f"{name}.png", hm, title=title))
        doc = {"setting": hm.setting, "steps": list(hm.steps), "heads": list(hm.heads), "clusters": list(hm.clusters),
               "llc": [[v if math.isfinite(v) else None for v in row] for row in hm.values.tolist()]}
        path = report.out_dir / f"{name}.json"
        path.write_text(json.dumps(doc, indent=1))
        files.append(path)
        report.notes.append(hm.describe())
    return files


def _write_head_plots(report: AggregateReport, losses: LossSeries) -> None:
    """The head-score heatmap, and the primary setting's stages next to the heads (when the
    checkpoints carry head scores)."""
    from services.aggregator.head_plots import plot_head_heatmap, plot_stages_with_heads

    if not report.head_scores:
        return
    report.plots.append(plot_head_heatmap(report.out_dir / "heads.png", scores=report.head_scores,
                                          title=f"{report.sweep_name}: per-head scores over training"))
    key = report.primary_key
    curve = next((c for c in report.curves if c.key == key), None)
    if curve is not None and key in report.bootstraps:
        report.plots.append(plot_stages_with_heads(
            report.out_dir / "stages-heads.png", curve=curve, boot=report.bootstraps[key], losses=losses,
            scores=report.head_scores, title=f"{report.sweep_name}: stages of {curve.label or 'the setting'} and heads"))


def mlflow_series(report: AggregateReport, losses: dict[str, tuple[list[float], list[float]]]
                  ) -> dict[str, list[tuple[int, float]]]:
    """Metric name → (training step, value): `llc/<setting>` per setting, `llc` for the
    recommended (else primary) setting, its band as `llc_std`, and the losses."""
    series: dict[str, list[tuple[int, float]]] = {}
    for curve in report.curves:
        pts = [(p.step, p.llc_mean) for p in curve.points]
        if not pts:
            continue
        series[f"llc/{curve.metric_label}"] = pts
        series[f"llc_std/{curve.metric_label}"] = [(p.step, p.llc_std) for p in curve.points if p.llc_std == p.llc_std]
        if curve.key == report.primary_key:
            series["llc"] = pts
            series["llc_std"] = series[f"llc_std/{curve.metric_label}"]
    for name, (steps, values) in losses.items():
        series[f"loss/{name}"] = [(int(s), float(v)) for s, v in zip(steps, values, strict=True)]
    return series
