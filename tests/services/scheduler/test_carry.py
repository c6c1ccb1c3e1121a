"""epsilon=auto and gamma=auto picks are carried to later jobs of the same sweep and setting, nowhere else."""
from __future__ import annotations

from workers.job import DatasetSpec, JobSpec, SamplerSpec

from services.scheduler.carry import CalibrationCarry

AUTO = dict(epsilon="auto", gamma=100.0, nbeta=None, num_chains=2, num_draws=10, num_burnin=0, batch_size=8)


def _spec(**sampler) -> JobSpec:
    return JobSpec(checkpoint_uri="s3://b/run/step-1", fingerprint="f", step=1, dataset=DatasetSpec(uri="s3://b/d"),
                   sampler=SamplerSpec(**{**AUTO, **sampler}), seed=0)


def _result(eps: float, *, carried: bool = False) -> dict:
    return {"extra": {"calibration": {"epsilon": eps, "carried": carried, "reason": "test"}}}


def test_a_calibrated_pick_is_handed_to_later_jobs_of_the_same_setting_only() -> None:
    carry = CalibrationCarry()
    assert carry.apply(_spec(), (1,), AUTO).epsilon_hint is None
    carry.observe((1,), AUTO, _result(3e-5))
    assert carry.apply(_spec(), (1,), AUTO).epsilon_hint == 3e-5
    assert carry.apply(_spec(), (2,), AUTO).epsilon_hint is None                    # another sweep
    other = dict(AUTO, gamma=10.0)
    assert carry.apply(_spec(gamma=10.0), (1,), other).epsilon_hint is None         # another setting
    carry.observe((1,), AUTO, _result(1e-6, carried=True))                          # carried: nothing new
    assert carry.hint((1,), AUTO) == 3e-5
    carry.observe((1,), AUTO, _result(1e-5))                                        # a recalibration replaces it
    assert carry.hint((1,), AUTO) == 1e-5


def test_fixed_epsilon_jobs_are_left_alone() -> None:
    fixed = dict(AUTO, epsilon=1e-4)
    carry = CalibrationCarry()
    carry.observe((1,), fixed, _result(3e-5))
    assert carry.hint((1,), fixed) is None
    assert carry.apply(_spec(epsilon=1e-4), (1,), fixed).epsilon_hint is None


def test_a_gamma_pick_is_carried_alongside_the_epsilon_pick() -> None:
    both = dict(AUTO, gamma="auto")
    carry = CalibrationCarry()
    carry.observe((1,), both, {"extra": {"calibration": {"epsilon": 2e-5, "carried": False},
                                         "gamma_calibration": {"gamma": 12.0, "carried": False}}})
    spec = carry.apply(_spec(gamma="auto"), (1,), both)
    assert (spec.epsilon_hint, spec.gamma_hint) == (2e-5, 12.0)
    carry.observe((1,), both, {"extra": {"gamma_calibration": {"gamma": 3.0, "carried": True}}})   # carried: nothing new
    assert carry.hint((1,), both, "gamma") == 12.0
    assert carry.apply(_spec(), (1,), AUTO).gamma_hint is None                      # a fixed-gamma setting
