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


def test_the_node_of_a_run_killed_before_it_left_a_note_is_read_from_ray_s_error() -> None:
    from services.scheduler.placement import node_of

    oom = (f"Task was killed due to the node running low on memory.\nMemory on the node (IP: 10.0.0.5, ID: {A}) was "
           "1.2GB used / 1.3GB limit (0.95)")
    assert node_of(None, RuntimeError(oom)) == A
    assert node_of(None, RuntimeError(f"The node with node id: {B} and address: 10.0.0.6 has been marked dead")) == B
    assert node_of(None, RuntimeError("The worker died unexpectedly while executing this task.")) is None
