"""λ̂ over training per hyperparameter setting: smooth fit, stages, stability, plots, MLflow."""
from __future__ import annotations

from services.aggregator.report import AggregateReport, SettingStage
from services.aggregator.service import aggregate_sweep
from services.aggregator.stability import Recommendation, SettingStability
from services.aggregator.stages import DetectedStage, StageDetection, detect_stages, fit_curve

__all__ = ["AggregateReport", "DetectedStage", "Recommendation", "SettingStability", "SettingStage", "StageDetection",
           "aggregate_sweep", "detect_stages", "fit_curve"]
