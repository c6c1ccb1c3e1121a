"""Which in-flight demands no live node covers, and how the note reads."""
from __future__ import annotations

from services.scheduler.feasibility import demand_of, describe, short_of, unmet_demands, unschedulable_note

HEAD = {"Alive": True, "Resources": {"CPU": 2.0, "memory": 8 * 2**30}}
GPU_NODE = {"Alive": True, "Resources": {"CPU": 1.0, "GPU": 1.0}}
DEAD_GPU_NODE = {**GPU_NODE, "Alive": False}


def test_demand_of_task_options() -> None:
    assert demand_of({"num_cpus": 1.0, "num_gpus": 1.0, "max_retries": 2}) == {"CPU": 1.0, "GPU": 1.0}
    assert demand_of({"num_cpus": 1.0, "memory": 2**31}) == {"CPU": 1.0, "memory": float(2**31)}


def test_gpu_demand_is_unmet_once_the_gpu_node_is_dead() -> None:
    demands = [{"CPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}]
    assert unmet_demands(demands, [HEAD, GPU_NODE]) == []
    assert unmet_demands(demands, [HEAD, DEAD_GPU_NODE]) == [{"CPU": 1.0, "GPU": 1.0}]
    assert short_of({"CPU": 1.0, "GPU": 1.0}, [HEAD, DEAD_GPU_NODE]) == {"GPU": 1.0}


def test_a_mix_no_single_node_has_is_unmet_as_a_whole() -> None:
    demand = {"CPU": 2.0, "GPU": 1.0}     # the head has 2 CPUs, the GPU node 1 CPU
    assert unmet_demands([demand], [HEAD, GPU_NODE]) == [demand]
    assert short_of(demand, [HEAD, GPU_NODE]) == demand


def test_note_names_count_and_resources() -> None:
    assert describe({"CPU": 1.0, "GPU": 1.0}) == "{GPU: 1, CPU: 1}"
    assert describe({"memory": 3 * 2**30}) == "{memory GiB: 3}"
    assert unschedulable_note({"GPU": 1.0}, 5).startswith("5 jobs need {GPU: 1}; no node in the cluster offers it")
