"""When a fit stops: the convergence rule, the step budget, max_epochs, reruns."""

import numpy as np
import pytest

import scae
from scae._stopping import Convergence, StopRule, step_budget


def _feed(rule, values):
    """Window means in, the step at which the rule says converged (None: never)."""
    conv = Convergence(rule)
    for i, v in enumerate(values, start=1):
        if conv.update(v, i * rule.window):
            return i * rule.window
    return None


def test_rule_stops_when_the_curve_flattens():
    rule = StopRule(window=10, span=3, tol=0.01, min_steps=50, max_steps=10_000)
    # exponential decay to a plateau: improvement per block falls below 1% at a predictable point
    steps = np.arange(1, 201) * 10
    curve = 1.0 + 2.0 * np.exp(-steps / 300)
    stopped = _feed(rule, curve)
    assert stopped is not None

    # first step where mean(last 3 windows) is < 1% below mean(3 windows before)
    def improvement(i):  # windows i-6..i-4 against i-3..i-1
        before, last = curve[i - 6 : i - 3].mean(), curve[i - 3 : i].mean()
        return (before - last) / before

    expected = next(s for i, s in enumerate(steps, start=1) if s >= 50 and i >= 6 and improvement(i) < 0.01)
    assert stopped == expected
    assert 600 < stopped < 1500


def test_rule_waits_for_min_steps_and_for_two_blocks():
    rule = StopRule(window=10, span=3, tol=0.01, min_steps=200, max_steps=10_000)
    assert _feed(rule, [1.0] * 19) is None  # flat, but only 190 steps
    assert _feed(rule, [1.0] * 20) == 200
    assert _feed(StopRule(window=10, span=3, tol=0.01, min_steps=1), [1.0] * 5) is None  # < 2 blocks
    # a curve still falling 5% per block never converges
    assert _feed(rule, [0.95 ** (i / 3) * 10 for i in range(100)]) is None


def test_step_budget_grows_with_cells_within_bounds():
    assert step_budget(450, 512) == 150  # 1 step per epoch: the floor
    assert step_budget(3_000, 512) == 150  # levine3k: 8 epochs of 6 steps are below the floor
    assert step_budget(19_225, 512) == 8 * 38  # flowsom_bal_flow: 8 passes
    assert step_budget(50_000, 512) == 8 * 98
    assert step_budget(10**6, 512) == 6000  # the ceiling
    assert step_budget(10**5, 512) > step_budget(10**4, 512)


BAD_RULES = [("window", 0), ("span", -1), ("min_steps", 1.5), ("max_steps", True), ("tol", float("nan")), ("tol", -0.1)]


@pytest.mark.parametrize(("field", "value"), BAD_RULES)
def test_rule_refuses_bad_settings(field, value):
    with pytest.raises(ValueError, match=f"StopRule.{field}"):
        StopRule(**{field: value})


#: a small network keeps the fits below to seconds
FAST = {"hidden": (64, 32, 16), "progress": False, "device": "cpu"}


def test_default_fit_converges_on_real_data_and_says_why(levine, grown):
    # levine3k grown to 100,000 cells: a budget of 8 passes (1,568 steps of 512), the loss flattens long before
    a = grown(levine, 100_000)
    scae.tl.fit(a, random_state=0, **FAST)
    rt = a.uns["scae"]["runtime"]
    assert rt["max_steps"] == step_budget(100_000, 512) == 1568
    assert rt["stop_reason"] == "converged"
    assert StopRule().min_steps <= rt["steps"] < rt["max_steps"]
    assert rt["epochs"] == len(a.uns["scae"]["history"]["total"])
    # the loss went down before it flattened
    total = a.uns["scae"]["history"]["total"]
    assert total[-1] < 0.8 * total[0]


def test_small_data_trains_its_budget(small):
    scae.tl.fit(small, random_state=0, **FAST)
    rt = small.uns["scae"]["runtime"]
    assert rt["stop_reason"] == "max_steps" and rt["steps"] == rt["max_steps"] == step_budget(small.n_obs, 512)
    assert rt["epochs"] == rt["steps"] // 2 == len(small.uns["scae"]["history"]["total"])  # 600 cells: 2 steps/pass


def test_stopping_decision_is_identical_across_reruns(small):
    runs = []
    for _ in range(2):
        a = small.copy()
        scae.tl.fit(a, random_state=3, max_epochs=2000, early_stopping=True, **FAST)  # the rule decides
        runs.append(a)
    assert runs[0].uns["scae"]["runtime"]["stop_reason"] == "converged"
    assert runs[0].uns["scae"]["runtime"]["steps"] == runs[1].uns["scae"]["runtime"]["steps"]
    np.testing.assert_array_equal(runs[0].uns["scae"]["history"]["total"], runs[1].uns["scae"]["history"]["total"])
    np.testing.assert_array_equal(runs[0].obs["scae_cluster"], runs[1].obs["scae_cluster"])


def test_max_epochs_runs_exactly_that_many(small):
    scae.tl.fit(small, max_epochs=7, random_state=0, **FAST)
    rt = small.uns["scae"]["runtime"]
    steps_per_epoch = int(np.ceil(small.n_obs / 512))
    assert rt["epochs"] == 7 and rt["steps"] == 7 * steps_per_epoch and rt["stop_reason"] == "max_epochs"
    assert len(small.uns["scae"]["history"]["total"]) == 7


def test_max_epochs_is_an_upper_bound_with_early_stopping(small):
    model = scae.SAUCIE(small, random_state=0, device="cpu", hidden=FAST["hidden"])
    model.train(max_epochs=3, early_stopping=True, progress=False)
    assert model.runtime["epochs"] == 3 and model.runtime["stop_reason"] == "max_epochs"  # too short to converge
    model = scae.SAUCIE(small, random_state=0, device="cpu", hidden=FAST["hidden"])
    model.train(max_epochs=10_000, early_stopping=True, progress=False)
    assert model.runtime["stop_reason"] == "converged" and model.runtime["epochs"] < 10_000


def test_backed_fit_uses_the_same_rule(small, tmp_path):
    path = tmp_path / "small.h5ad"
    small.write_h5ad(path)
    import anndata as ad

    backed = ad.read_h5ad(path, backed="r")
    out = tmp_path / "out.h5ad"
    scae.tl.fit(backed, random_state=0, out_path=str(out), max_epochs=2000, early_stopping=True, **FAST)
    rt = backed.uns["scae"]["runtime"]
    assert rt["stop_reason"] == "converged" and StopRule().min_steps <= rt["steps"] < rt["max_steps"] == 2000 * 2
