"""Where each attempt of a job ran, and where its retry should go after an infrastructure fault.

A task notes its Ray node under its attempt's key in the cluster's key-value store (GCS) as it
starts, so the node is known even when the worker is killed (OOM, SIGKILL) and returns nothing.
After an infrastructure fault the scheduler steers the retry to another alive node that can run
it (`NodeAffinitySchedulingStrategy(soft=True)`: if that node dies first Ray places it anywhere).
Ray has no anti-affinity for tasks, hence the explicit pick.
"""
from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterable, Mapping
from typing import Any

from services.scheduler.feasibility import fits

log = logging.getLogger(__name__)

#: key-value namespace of the attempt → node notes (one short key per running attempt)
NAMESPACE = "llc-attempts"


def note_node(attempt: str | None) -> str | None:
    """In the task: this worker's node id, also noted under `attempt` for the driver to read."""
    import ray

    if not ray.is_initialized():
        return None
    node = ray.get_runtime_context().get_node_id()
    if attempt:
        try:
            from ray.experimental import internal_kv

            internal_kv._internal_kv_put(attempt, node, overwrite=True, namespace=NAMESPACE)
        except Exception as exc:  # a note we cannot leave only costs the steering of a retry
            log.warning("could not note the node of attempt %s: %s", attempt, exc)
    return node


def forget(attempt: str) -> None:
    """In the task, once it returns: its note is no longer needed."""
    try:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_del(attempt, namespace=NAMESPACE)
    except Exception:
        pass


#: how Ray names the node in the errors of a task killed for memory, or of a lost node
_NODE_IN_ERROR = (re.compile(r"Memory on the node \(IP: [^,)]*, ID: ([0-9a-f]{56})\)"),
                  re.compile(r"node with node id: ([0-9a-f]{56})"))


def node_of(attempt: str | None, error: BaseException | None = None) -> str | None:
    """In the driver, after an attempt failed: the node it ran on, from its note (removed) or,
    when it was killed before it could leave one (Ray's memory monitor kills a worker as it
    starts), from Ray's error; None when neither says."""
    value: Any = None
    if attempt:
        try:
            from ray.experimental import internal_kv

            value = internal_kv._internal_kv_get(attempt, namespace=NAMESPACE)
            if value is not None:
                internal_kv._internal_kv_del(attempt, namespace=NAMESPACE)
        except Exception as exc:
            log.warning("could not read the node of attempt %s: %s", attempt, exc)
    if value is not None:
        return value.decode() if isinstance(value, bytes) else str(value)
    text = str(error) if error is not None else ""
    for pattern in _NODE_IN_ERROR:
        if found := pattern.search(text):
            return found.group(1)
    return None


def elsewhere(avoid: Iterable[str], demand: Mapping[str, float], nodes: Iterable[Mapping[str, Any]]) -> str | None:
    """An alive node, not one of `avoid`, whose resources cover `demand` (`nodes` as `ray.nodes()`
    gives them); None when there is no other such node."""
    bad = set(avoid)
    fit = [str(n["NodeID"]) for n in nodes
           if n.get("Alive") and n.get("NodeID") not in bad and fits(demand, n.get("Resources") or {})]
    return random.choice(fit) if fit else None


def steer(options: Mapping[str, Any], node: str | None) -> dict[str, Any]:
    """Task options that prefer `node` (soft affinity), or the options as they are when None."""
    out = dict(options)
    out.pop("scheduling_strategy", None)
    if node is not None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        out["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=True)
    return out
