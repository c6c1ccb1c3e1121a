"""Which in-flight tasks no live node can ever run: Ray queues such a task silently forever
(e.g. a GPU job after the only GPU node was lost), so the scheduler says so in the store."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: Ray task option → the node resource it consumes
_RESOURCE_OF_OPTION = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}


def demand_of(task_options: Mapping[str, Any]) -> dict[str, float]:
    """The node resources a task submitted with these `.options(...)` asks for."""
    return {res: float(task_options[opt]) for opt, res in _RESOURCE_OF_OPTION.items()
            if float(task_options.get(opt) or 0) > 0}


def fits(demand: Mapping[str, float], node_resources: Mapping[str, float]) -> bool:
    return all(float(node_resources.get(res, 0.0)) >= amount for res, amount in demand.items())


def unmet_demands(demands: Iterable[Mapping[str, float]], nodes: Iterable[Mapping[str, Any]]) -> list[dict[str, float]]:
    """The distinct demands that no alive node's total resources cover (`nodes` as `ray.nodes()` gives them)."""
    totals = [dict(n.get("Resources") or {}) for n in nodes if n.get("Alive")]
    out: list[dict[str, float]] = []
    for demand in demands:
        d = dict(demand)
        if d not in out and not any(fits(d, t) for t in totals):
            out.append(d)
    return out


def short_of(demand: Mapping[str, float], nodes: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The part of an unmet demand that no alive node has enough of (all of it when only the mix is missing)."""
    totals = [dict(n.get("Resources") or {}) for n in nodes if n.get("Alive")]
    missing = {r: a for r, a in demand.items() if not any(float(t.get(r, 0.0)) >= a for t in totals)}
    return missing or dict(demand)


def describe(demand: Mapping[str, float]) -> str:
    """{GPU: 1, CPU: 1} — memory in GiB, the way a sweep's resources are written."""
    parts = []
    for res in sorted(demand, key=lambda r: (r != "GPU", r)):
        amount = demand[res] / 2**30 if res == "memory" else demand[res]
        parts.append(f"{res}{' GiB' if res == 'memory' else ''}: {amount:g}")
    return "{" + ", ".join(parts) + "}"


def unschedulable_note(demand: Mapping[str, float], count: int) -> str:
    return (f"{count} job{'s' * (count != 1)} need {describe(demand)}; no node in the cluster offers it: add a node "
            "with these resources (e.g. a GPU worker) or cancel the sweep.")
