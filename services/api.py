"""The service from a notebook: submit sweeps and read them back as pandas DataFrames.

    from services import api
    sub = api.submit(["sweep=demo", "sampler.epsilon=[1e-4,3e-4]"])
    api.status(sub.sweep_id)            # one row: counts by job state
    df = api.results(sub.sweep_id)      # one row per job
    api.curves(sub.sweep_id)            # λ̂ per (setting, checkpoint step)
    api.stages(sub.sweep_id)            # stages found by `llc aggregate`

Every call resolves its endpoints once, from `overrides` (Hydra, as on the command line) and
the tools' own variables, like the `llc` commands; a sweep is named by id or by name (newest).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from services.aggregator.curves import build_curves
from services.core.endpoints import Endpoints, resolve_endpoints
from services.core.labels import setting_labels
from services.core.numbers import finite_or_none
from services.core.status import JOB_STATES
from services.store import results as store_results
from services.store import stages as store_stages
from services.store import sweeps as store_sweeps
from services.store.db import check_schema, session_scope
from services.store.entities import ResultRow, SweepInfo
from services.sweeps.config import load_config
from services.sweeps.submit import SubmitOutcome, plan_sweep, submit_plan

#: results() columns before the hyperparameters, then after them
_LEAD = ("sweep_id", "job_id", "run", "checkpoint_uri", "step", "setting")
_TAIL = ("seed", "status", "llc_mean", "llc_std", "r_hat", "ess", "diverged", "init_loss", "loss_wstar", "nbeta",
         "num_chains", "num_draws", "wall_time_s", "device", "worker_host", "mlflow_run_id", "error", "key")


def endpoints(overrides: Sequence[str] = ()) -> Endpoints:
    """Where calls with these overrides go (composing the Hydra config only when overrides are given)."""
    return resolve_endpoints(load_config(list(overrides)) if overrides else None)


def submit(overrides: Sequence[str] = (), *, submitted_by: str | None = None) -> SubmitOutcome:
    """Submit a sweep (as `llc submit OVERRIDES`); finished job keys are reused, never re-run."""
    cfg = load_config(list(overrides))
    plan = plan_sweep(cfg)
    return submit_plan(plan, name=cfg.sweep.name, submitted_by=submitted_by, database_url=plan.endpoints.database_url)


def _url(overrides: Sequence[str]) -> str:
    url = endpoints(overrides).database_url
    check_schema(url)
    return url


def _sweep_and_rows(sweep: int | str, overrides: Sequence[str]) -> tuple[SweepInfo, list[ResultRow]]:
    with session_scope(_url(overrides)) as s:
        info = store_sweeps.find_sweep(s, sweep)
        return info, store_results.sweep_results(s, sweep_id=info.id)


def status(sweep: int | str | None = None, *, overrides: Sequence[str] = ()) -> pd.DataFrame:
    """One row per sweep (or just `sweep`): id, name, status, who, when, and job counts by state."""
    with session_scope(_url(overrides)) as s:
        sweeps = ([store_sweeps.find_sweep(s, sweep)] if sweep is not None else store_sweeps.list_sweeps(s))
        counts = store_sweeps.all_sweep_counts(s, sweep_ids=[sw.id for sw in sweeps])
    states = [str(st) for st in JOB_STATES]
    rows = [dict(sweep_id=sw.id, name=sw.name, status=sw.status, submitted_by=sw.submitted_by,
                 run=sw.training_run_uri, created_at=sw.created_at, finished_at=sw.finished_at,
                 **{st: counts[sw.id][st] for st in states}, total=sum(counts[sw.id].values()))
            for sw in sweeps]
    columns = ["sweep_id", "name", "status", "submitted_by", "run", "created_at", "finished_at", *states, "total"]
    return pd.DataFrame(rows, columns=columns)


def results(sweep: int | str, *, overrides: Sequence[str] = ()) -> pd.DataFrame:
    """One row per job of the sweep: run, step, hyperparameters (one column each), seed, λ̂, std,
    R-hat, ESS, diverged, wall time, MLflow run id, ... (result columns empty until it has one)."""
    info, rows = _sweep_and_rows(sweep, overrides)
    labels = setting_labels([r.hyperparameters for r in rows]) if rows else []
    hyper_names = sorted({k for r in rows for k in r.hyperparameters})
    records = []
    for row, label in zip(rows, labels, strict=True):
        diagnostics = row.diagnostics or {}
        record: dict[str, Any] = dict(sweep_id=info.id, job_id=row.job_id, run=info.training_run_uri,
                                      checkpoint_uri=row.checkpoint_uri, step=row.step, setting=label)
        record.update({k: _cell(row.hyperparameters.get(k)) for k in hyper_names})
        record.update(seed=row.seed, status=row.status, llc_mean=row.llc_mean, llc_std=row.llc_std,
                      r_hat=finite_or_none(diagnostics.get("r_hat")), ess=finite_or_none(diagnostics.get("ess")),
                      diverged=row.diverged, init_loss=row.init_loss, loss_wstar=row.loss_wstar, nbeta=row.nbeta,
                      num_chains=row.num_chains, num_draws=row.num_draws, wall_time_s=row.wall_time_s,
                      device=row.device, worker_host=row.worker_host, mlflow_run_id=row.mlflow_run_id,
                      error=row.error, key=row.key)
        records.append(record)
    return pd.DataFrame(records, columns=[*_LEAD, *hyper_names, *_TAIL])


def _cell(value: Any) -> Any:
    """Hyperparameter values as DataFrame cells: lists (sample_params) as one '+'-joined string."""
    return "+".join(map(str, value)) if isinstance(value, (list, tuple)) else value


def curves(sweep: int | str, *, overrides: Sequence[str] = ()) -> pd.DataFrame:
    """λ̂ over training: one row per (setting, checkpoint step), pooling chains and seeds as
    `llc aggregate` does (succeeded jobs only)."""
    _, rows = _sweep_and_rows(sweep, overrides)
    built, _ = build_curves(rows)
    columns = ["setting", "setting_key", "step", "llc_mean", "llc_std", "llc_sem", "n_estimates", "n_jobs",
               "loss_wstar", "r_hat_max"]
    records = [dict(setting=c.label, setting_key=c.key, step=p.step, llc_mean=p.llc_mean, llc_std=p.llc_std,
                    llc_sem=p.llc_sem, n_estimates=p.n_estimates, n_jobs=p.n_jobs, loss_wstar=p.loss_wstar,
                    r_hat_max=p.r_hat_max) for c in built for p in c.points]
    return pd.DataFrame(records, columns=columns)


def stages(sweep: int | str, *, overrides: Sequence[str] = ()) -> pd.DataFrame:
    """The developmental stages `llc aggregate` stored: one row per stage and setting."""
    with session_scope(_url(overrides)) as s:
        info = store_sweeps.find_sweep(s, sweep)
        found = store_stages.list_stages(s, sweep_id=info.id)
    labels = setting_labels([st.hyperparameters for st in found]) if found else []
    columns = ["sweep_id", "setting", "setting_key", "stage", "kind", "start_step", "end_step", "llc_change",
               "loss_change"]
    records, index = [], {}
    for st, label in zip(found, labels, strict=True):
        index[st.setting_key] = index.get(st.setting_key, 0) + 1
        records.append(dict(sweep_id=info.id, setting=label, setting_key=st.setting_key, stage=index[st.setting_key],
                            kind=st.kind, start_step=st.start_step, end_step=st.end_step, llc_change=st.llc_change,
                            loss_change=st.loss_change))
    return pd.DataFrame(records, columns=columns)
