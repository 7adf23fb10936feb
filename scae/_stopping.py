"""When training stops: a step budget that grows with the data, and a convergence rule on the loss.

A default fit (no ``max_epochs``) trains until the loss has stopped improving, checked on windows of
optimizer steps rather than epochs, so the rule means the same thing for 450 cells (two steps per epoch)
and for 10^7 cells (thousands of steps per epoch). The total loss of each window of ``window`` steps is
averaged on the device and read once; the fit has converged when the mean of the last ``span`` windows is
less than ``tol`` (relative) below the mean of the ``span`` windows before them, after at least
``min_steps``. The budget (``max_steps``) is an upper bound that grows with the number of minibatches per
epoch. The decision depends only on loss values, so a rerun with the same seed on the same device stops at
the same step; under ``torchrun`` the window means are averaged across processes before the decision, so
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

    window: int = 50
    span: int = 4
    tol: float = 0.005
    min_steps: int = 1000
    max_steps: int = 3000

    def __post_init__(self) -> None:
        for name in ("window", "span", "min_steps", "max_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                msg = f"StopRule.{name} must be a positive int, got {value!r}"
                raise ValueError(msg)
        if not (isinstance(self.tol, (int, float)) and math.isfinite(self.tol) and self.tol >= 0):
            msg = f"StopRule.tol must be a finite number >= 0, got {self.tol!r}"
            raise ValueError(msg)


def step_budget(n_cells: int, batch_size: int, *, epochs: int = 30, low: int = 3000, high: int = 6000) -> int:
    """Upper bound of optimizer steps of a default fit: ``epochs`` passes over the data, clipped to [low, high].

    Up to about 100,000 cells (at 256 cells per minibatch) that is ``low``, the fixed budget of earlier versions;
    larger data sets may train up to ``high`` steps. The convergence rule usually stops before (measured on
    flowsom_bal and levine3k: 2,150-2,900 steps).
    """
    steps_per_epoch = max(1, math.ceil(n_cells / max(1, min(batch_size, n_cells))))
    return int(min(high, max(low, epochs * steps_per_epoch)))


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
