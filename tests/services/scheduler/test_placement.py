"""Where a retry goes: another alive node that can run it, never the one it failed on."""
from __future__ import annotations

from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from services.scheduler.placement import elsewhere, steer

A, B, C = ("a" * 56, "b" * 56, "c" * 56)      # Ray node ids: 28 bytes in hex
NODES = [
    {"NodeID": A, "Alive": True, "Resources": {"CPU": 2.0}},
    {"NodeID": B, "Alive": True, "Resources": {"CPU": 2.0, "GPU": 1.0}},
    {"NodeID": C, "Alive": False, "Resources": {"CPU": 8.0, "GPU": 1.0}},
]


def test_a_retry_goes_to_an_alive_node_it_did_not_fail_on_that_fits() -> None:
    assert elsewhere([A], {"CPU": 1.0}, NODES) == B
    assert elsewhere([B], {"CPU": 1.0}, NODES) == A
    assert elsewhere([A], {"GPU": 1.0}, NODES) == B


def test_no_other_node_means_no_preference() -> None:
    assert elsewhere([B], {"GPU": 1.0}, NODES) is None          # c has a GPU but is dead; a has none
    assert elsewhere([A, B], {"CPU": 1.0}, NODES) is None


def test_steer_prefers_the_node_softly_and_keeps_the_other_options() -> None:
    opts = steer({"num_cpus": 1.0, "max_retries": 0}, B)
    strategy = opts.pop("scheduling_strategy")
    assert isinstance(strategy, NodeAffinitySchedulingStrategy)
    assert (strategy.node_id, strategy.soft) == (B, True)
    assert opts == {"num_cpus": 1.0, "max_retries": 0}
    assert steer({"num_cpus": 1.0, "scheduling_strategy": strategy}, None) == {"num_cpus": 1.0}
