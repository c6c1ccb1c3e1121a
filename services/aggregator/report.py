"""What one aggregation found, as data and as rich tables for the terminal."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.aggregator.bootstrap import StageUncertainty
from services.aggregator.curves import SettingCurve
from services.aggregator.stability import Recommendation, SettingStability
from services.aggregator.stages import DetectedStage, StageDetection


@dataclass(frozen=True)
class SettingStage:
    """A detected stage with the setting it belongs to."""

    setting_key: str
    label: str
    hyperparameters: dict[str, Any]
    stage: DetectedStage
    uncertainty: StageUncertainty | None = None   # bootstrap intervals and type probabilities
    heads: str = ""                               # heads whose scores moved in the stage, e.g. "0.1 prev-token +0.52"

    def as_dict(self) -> dict[str, Any]:
        s = self.stage
        out = {"setting": self.label, "setting_key": self.setting_key, "stage": s.index + 1,
               "start_step": s.start_step, "end_step": s.end_step, "kind": s.kind,
               "llc_start": s.llc_start, "llc_end": s.llc_end, "llc_change": s.llc_change,
               "loss_start": s.loss_start, "loss_end": s.loss_end, "loss_change": s.loss_change,
               "heads": self.heads}
        if self.uncertainty is not None:
            out.update(self.uncertainty.as_dict())
        return out

    @property
    def steps_text(self) -> str:
        """"312 [280–350] – 880 [820–940]": each boundary with its bootstrap interval."""
        u = self.uncertainty
        if u is None:
            return f"{self.stage.start_step}–{self.stage.end_step}"
        return f"{u.interval_text('start')} – {u.interval_text('end')}"

    @property
    def kind_text(self) -> str:
        u = self.uncertainty
        if u is None or not u.kind_probability:
            return self.stage.kind
        return f"{self.stage.kind} ({u.kind_probability.get(self.stage.kind, 0.0):.0%})"


@dataclass
class AggregateReport:
    sweep_id: int
    sweep_name: str
    out_dir: Path
    curves: list[SettingCurve]
    detections: dict[str, StageDetection]        # by setting key
    stages: list[SettingStage]
    stability: list[SettingStability]
    recommended: Recommendation | None
    primary_key: str | None                       # the setting logged as MLflow `llc`
    counts: dict[str, int]                        # the sweep's jobs by status
    loss_source: str                              # which loss typed the stages
    plots: list[Path] = field(default_factory=list)
    artifacts: list[Path] = field(default_factory=list)
    artifact_uris: list[str] = field(default_factory=list)   # the same files in the object store
    parent_run_id: str | None = None
    mlflow_run_id: str | None = None
    tracking_error: str | None = None
    notes: list[str] = field(default_factory=list)
    head_scores: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)   # step → head → scores
    bootstraps: dict[str, Any] = field(default_factory=dict)      # setting key → BootstrapStages

    @property
    def left_out(self) -> dict[str, int]:
        """Jobs not in any curve, by status (diverged, failed, not finished yet)."""
        return {k: v for k, v in self.counts.items() if k != "succeeded" and v}

    def stages_for(self, setting_key: str) -> list[DetectedStage]:
        return [s.stage for s in self.stages if s.setting_key == setting_key]

    def table(self) -> Any:
        """The stages as a rich Table (recommended setting first, marked ★)."""
        from rich.table import Table

        table = Table(title=f"Developmental stages — sweep {self.sweep_id} ({self.sweep_name})")
        for name, justify in (("setting", "left"), ("stage", "right"), ("steps [5–95 % interval]", "right"),
                              ("type (prob.)", "center"), ("Δλ̂", "right"), ("Δloss", "right"),
                              ("heads that moved", "left")):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        rec = self.recommended.key if self.recommended else None
        order = sorted(self.stages, key=lambda s: (s.setting_key != rec, s.label, s.stage.index))
        for item in order:
            s = item.stage
            mark = "★ " if item.setting_key == rec else ""
            dloss = "—" if s.loss_change is None else f"{s.loss_change:+.3g}"
            table.add_row(f"{mark}{item.label}", str(s.index + 1), item.steps_text, item.kind_text,
                          f"{s.llc_change:+.3g}", dloss, item.heads or "—")
        if not self.stages:
            table.add_row("(none)", "", "", "", "", "", "")
        return table

    def stability_table(self) -> Any:
        from rich.table import Table

        table = Table(title="Hyperparameter stability")
        for name in ("setting", "checkpoints", "max R-hat", "max spread", "min λ̂", "verdict"):
            table.add_column(name)
        for v in self.stability:
            verdict = "usable" if v.usable else "; ".join(v.reasons)
            if self.recommended and v.key == self.recommended.key:
                verdict = "★ recommended"
            table.add_row(v.label, str(v.checkpoints), "—" if v.max_r_hat is None else f"{v.max_r_hat:.3f}",
                          "—" if v.max_rel_spread is None else f"{v.max_rel_spread:.0%}",
                          "—" if v.min_llc is None else f"{v.min_llc:.3g}", verdict)
        return table

    # -- files --------------------------------------------------------------------------

    def write_stage_files(self) -> list[Path]:
        """stages.csv, stages.json and stability.csv under out_dir (MLflow artifacts)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        rows = [s.as_dict() for s in self.stages]
        fields = ["setting", "setting_key", "stage", "start_step", "end_step", "kind", "llc_start", "llc_end",
                  "llc_change", "loss_start", "loss_end", "loss_change", "heads", "start_interval", "end_interval",
                  "kind_probability", "resolved"]
        csv_path = self.out_dir / "stages.csv"
        with csv_path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(rows)
        json_path = self.out_dir / "stages.json"
        json_path.write_text(json.dumps({
            "sweep_id": self.sweep_id, "sweep_name": self.sweep_name, "loss_source": self.loss_source,
            "step_axis": "log(step + 1)", "stages": rows,
            "recommended": None if self.recommended is None else {
                "setting": self.recommended.label, "hyperparameters": self.recommended.hyperparameters,
                "reason": self.recommended.reason},
            "left_out": self.left_out,
        }, indent=2, default=str))
        stab_path = self.out_dir / "stability.csv"
        with stab_path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["setting", "step", "llc_mean", "llc_std", "n_estimates", "loss_wstar", "r_hat_max"])
            for curve in self.curves:
                for p in curve.points:
                    writer.writerow([curve.label, p.step, p.llc_mean, p.llc_std, p.n_estimates, p.loss_wstar, p.r_hat_max])
        return [csv_path, json_path, stab_path]
