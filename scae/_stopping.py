"""When training stops: a step budget that grows with the data, and a convergence rule on the loss.

A default fit (no ``max_epochs``) trains for a budget of passes over the data (:func:`step_budget`: 8
epochs, at least 150 and at most 6,000 optimizer steps) and stops earlier when the loss has stopped
improving. The rule is checked on windows of optimizer steps rather than epochs, so it means the same
thing for 450 cells (one step per epoch) and for 10^7 cells (thousands of steps per epoch): the total loss
of each window of ``window`` steps is averaged on the device and read once; the fit has converged when the
mean of the last ``span`` windows is less than ``tol`` (relative) below the mean of the ``span`` windows
before them, after at least ``min_steps``.

Why a budget of passes first: on the shared cytometry sets the clusters are as good after ~8 passes as
after 40 (flowsom_bal_flow, levine3k; see README "Time to result") while the total loss still falls by
0.3-1% per 100 steps, so no loss threshold separates "learned" from "not yet" on small data; on large data
(hundreds of steps per pass) the loss flattens within the budget and the rule ends the fit.

Why 8 passes: flowsom_bal_flow (the one shared set whose budget is set by passes, 38 steps each) clusters as
well after 8 passes as after 12, in two thirds of the time. 80 seeds (50-129, 2026-11-27, automatic clusters
at the merge threshold of 2.4 used then; 2.3 halves the NK/NK T mode, see scae/_merge.py): 8 passes gave
automatic F1 0.925 on average (13 fits of 80 below 0.85, where NK and NK T cells share a cluster) and k=7 F1
0.951 (8 below 0.93), 1.38 s a fit; 12 passes 0.917 (18 of 80) and 0.952 (4 below 0.93), 2.21 s; 6 passes
0.917 (14 of 80) and 0.943 (15 below 0.93). Seeds 10-49 (the step before scae/_cluster_grad.py's leaner
pairwise term): 8 passes 0.906 (11 of 40), k=7 0.950; 12 passes 0.917 (9 of 40), 0.953. A seed-to-seed spread
this wide (one fit in five or six in the NK/NK T mode at any budget, at 2.4) makes 40-seed means differ by ~0.02 between
runs; fewer passes than 8 lose k=7 quality.

The decision depends only on loss values, so a rerun with the same seed on the same device stops at the
same step; under ``torchrun`` the window means are averaged across processes before the decision, so
every process stops at the same step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: ``uns["scae"]["runtime"]["stop_reason"]`` values.
STOP_REASONS = ("converged", "max_steps", "max_epochs")


@dataclass(frozen=True)
class StopRule:
    """Convergence rule of a default fit (see the module docstring).

    Attributes
    ----------
    window
        Optimizer steps whose mean total loss is one value of the curve (one host read per window).
    span
        Windows per block: the last ``span`` windows are compared with the ``span`` before them.
    tol
        Relative improvement between the two blocks below which training has converged.
    min_steps
        No convergence decision before this many steps.
    max_steps
        Upper bound of steps (see :func:`step_budget`).
    """

    window: int = 25
    span: int = 4
    tol: float = 0.02
    min_steps: int = 150
    max_steps: int = 6000

    def __post_init__(self) -> None:
        for name in ("window", "span", "min_steps", "max_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                msg = f"StopRule.{name} must be a positive int, got {value!r}"
                raise ValueError(msg)
        if not (isinstance(self.tol, (int, float)) and math.isfinite(self.tol) and self.tol >= 0):
            msg = f"StopRule.tol must be a finite number >= 0, got {self.tol!r}"
            raise ValueError(msg)


#: Passes over the data of a default fit, and the bounds of its step budget (see :func:`step_budget`).
BUDGET_EPOCHS = 8
MIN_STEPS = 150
MAX_STEPS = 6000


def step_budget(
    n_cells: int, batch_size: int, *, epochs: int = BUDGET_EPOCHS, low: int = MIN_STEPS, high: int = MAX_STEPS
) -> int:
    """Upper bound of optimizer steps of a default fit: ``epochs`` passes over the data, clipped to [low, high].

    flowsom_bal_flow (19,225 cells, 38 steps of 512 per pass) gets 8 passes (304 steps); levine3k (3,000
    cells) and smaller sets get the floor of ``low`` steps (25+ passes); from about 384,000 cells on the
    budget is ``high`` steps (fewer than 8 passes) and the convergence rule usually ends the fit before.
    """
    return int(min(high, max(low, epochs * steps_per_epoch(n_cells, batch_size))))


def steps_per_epoch(n_cells: int, batch_size: int) -> int:
    """Minibatches of ``batch_size`` cells in one pass over ``n_cells`` (a batch larger than the data is all of it)."""
    return max(1, math.ceil(n_cells / max(1, min(batch_size, n_cells))))


class Convergence:
    """Feeds window means to a :class:`StopRule` and says when training has converged."""

    def __init__(self, rule: StopRule) -> None:
        self.rule = rule
        self.values: list[float] = []

    def update(self, window_mean: float, steps: int) -> bool:
        """Record the mean total loss of the window ending at ``steps``; ``True`` when converged."""
        self.values.append(float(window_mean))
        span = self.rule.span
        if steps < self.rule.min_steps or len(self.values) < 2 * span:
            return False
        last = sum(self.values[-span:]) / span
        before = sum(self.values[-2 * span : -span]) / span
        improvement = (before - last) / max(abs(before), 1e-12)
        return improvement < self.rule.tol
