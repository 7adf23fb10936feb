"""Device-dependent defaults and fast-path options: batch size, learning rate, fused Adam, bf16 autocast and
``torch.compile`` with fallbacks (the CUDA-graph step is :mod:`scae._step`).

Training data live on the device (:class:`scae.data.RowSource`, up to ``scae.data.DENSE_BUDGET_BYTES``),
the minibatch indices of an epoch are copied there at once (:class:`scae.train.Sampler`) and loss values are
read once per window of the stopping rule and once per epoch, so a step never waits for the host. What is
left is per-step launch overhead, which CUDA graphs remove (:mod:`scae._step`), a larger batch amortizes and
``torch.compile`` reduces (kernel fusion).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

logger = logging.getLogger("scae")

#: Default minibatch size per device type (the network is tiny: on a GPU, a step costs about the same
#: for 256 and for several thousand cells, so larger batches give proportionally more cells/s).
DEFAULT_BATCH_SIZE = {"cpu": 512, "cuda": 4096}

#: With ``batch_key``, a default minibatch shrinks to what the smallest batch can fill (each minibatch draws
#: ``batch_size // n_batches`` cells from every batch), down to this many cells per batch; smaller batches are
#: refused (see :func:`min_cells_per_batch`). Measured on CellBench (449 singlets, 2,000 HVGs) with Drop-seq cut
#: to 40 cells (minibatch 80) and to 20 (minibatch 40), seeds 0-1, 2026-11-29: MMD between the batches in the
#: embedding 0.08-0.09 against 1.36-1.46 uncorrected (40 cells), 0.24 against 1.82-2.60 (20 cells); cell-line kNN
#: accuracy 0.98-1.00 throughout. Before, a default minibatch did not shrink below 256 cells
#: (:data:`MIN_DEFAULT_BATCH_SIZE`), so two batches needed 128 cells each: a TCGA cohort of 121 samples from two
#: centres could not be corrected without ``batch_size``.
MIN_DEFAULT_CELLS_PER_BATCH = 16
#: The smallest default minibatch before it could shrink further; with more than 16 batches its share
#: (``256 // n_batches``) stays the floor, so no batch accepted then is refused now.
MIN_DEFAULT_BATCH_SIZE = 256

PRECISIONS = ("32", "bf16")


#: On a GPU, a data set too small for this many minibatches of the device's default size per pass gets smaller
#: minibatches (a power of two, at least the CPU default): few, large steps per pass gave unstable clusters.
MIN_STEPS_PER_EPOCH = 32


def default_batch_size(device: torch.device, n_cells: int | None = None) -> int:
    """Minibatch size used when ``batch_size=None``: 512 on CPU; on CUDA 4096, for small data less.

    On CUDA the minibatch is the largest power of two giving :data:`MIN_STEPS_PER_EPOCH` steps per pass over
    ``n_cells``, between 512 and 4096: flowsom_bal_flow (19,225 cells) trains with 512, as on the CPU, and
    from 131,072 cells on the minibatch is 4096. Measured on flowsom_bal_flow (seeds 0-2, one H200): 150 steps
    of 4096 gave k=7 F1 0.761/0.974/0.924; on the CPU, 600 steps of 4096 gave 0.896/0.959/0.974 while the
    512 default gives 0.982/0.953/0.950, and a CUDA step costs about the same for 512 and 4096 cells.
    """
    base = DEFAULT_BATCH_SIZE.get(device.type, DEFAULT_BATCH_SIZE["cpu"])
    floor = DEFAULT_BATCH_SIZE["cpu"]
    if n_cells is None or base <= floor:
        return base
    fits = 2 ** int(math.floor(math.log2(max(1, int(n_cells) // MIN_STEPS_PER_EPOCH))))
    return int(min(base, max(floor, fits)))


def default_learning_rate(batch_size: int) -> float:
    """Adam learning rate used when ``learning_rate=None``: 3e-3 up to a minibatch of 512, then growing with the
    fifth root of the minibatch (4.5e-3 at 4,096, 7.9e-3 at 65,536), at most 1e-2.

    Larger minibatches take fewer, less noisy steps per pass, but few large steps at a high rate land in poor
    codes. Measured on the CPU on flowsom_bal_flow, minibatch 4,096 (~150 steps, the convergence rule ends the
    fit), 2026-11-27: seeds 0-19 k=7 F1 0.938 on average (6 of 20 below 0.93) at 4.5e-3 against 0.913 (9 of 20)
    at 8.5e-3 (the square-root rule used before), automatic F1 0.914 against 0.894; seeds 0-9 at 3e-3 0.931
    (6 of 10 below 0.93), at 6e-3 0.940 (2 of 10) with automatic F1 0.894 (3 of 10 below 0.85).
    """
    return float(min(1e-2, 3e-3 * (max(int(batch_size), 512) / 512) ** 0.2))


def adam(params, lr: float, device: torch.device, *, capturable: bool = False) -> torch.optim.Adam:
    """Adam with the fused update (one kernel for all parameters) on CPU and CUDA, the loop elsewhere.

    On two CPU cores the fused step is ~0.3 ms faster than the per-parameter loop (~5-20% of a step of the
    default network); on a GPU it removes most of the optimizer's kernel launches. ``capturable`` keeps the
    step counts on the device so the update can be captured in a CUDA graph (:mod:`scae._step`).
    """
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(params, lr=lr, fused=fused or None, capturable=bool(capturable))


def flat_adam(net: torch.nn.Module, lr: float) -> tuple[FlatAdam, Callable[[], object]]:
    """Fused Adam over one flat buffer that holds every trainable parameter of ``net`` (CPU), and its zero_grad.

    The parameters become views into one vector and their gradients views into another, so the update is one
    fused call over one tensor instead of per-parameter bookkeeping (~0.3 ms of a ~4 ms step of the default
    network on two CPU cores). Autograd adds each step's gradients into the zeroed views in place, so the
    update applies Adam's formula to the same gradients as with separate tensors (the fused kernel's vector
    and scalar paths split the elements differently, so the last bit can differ). Used for CPU fits outside
    ``torch.compile`` and torchrun (see :func:`scae._step.make_step`). The update is :class:`FlatAdam`'s.
    """
    params = [p for p in net.parameters() if p.requires_grad]
    first = params[0]
    flat = torch.empty(sum(p.numel() for p in params), dtype=first.dtype, device=first.device)
    bounds = []
    start = 0
    for p in params:
        stop = start + p.numel()
        flat[start:stop].copy_(p.detach().reshape(-1))
        p.data = flat[start:stop].view_as(p)  # the old storage is freed here
        p.grad = None
        bounds.append((start, stop))
        start = stop
    grad = torch.zeros_like(flat)  # allocated after the old parameters are gone: no higher peak than before
    for p, (start, stop) in zip(params, bounds, strict=True):
        p.grad = grad[start:stop].view_as(p)
    vector = torch.nn.Parameter(flat)
    vector.grad = grad
    return FlatAdam(vector, lr), grad.zero_


class FlatAdam:
    """Adam with torch's default settings over one parameter ``vector`` (with its ``.grad``), without an optimizer
    object: each :meth:`step` is the fused update that ``torch.optim.Adam(..., fused=True).step()`` runs, called
    through torch's functional ``torch.optim.adam.adam`` on state held here.

    Why not ``torch.optim.Adam``: a ``torch.optim.Optimizer`` imports ``torch._dynamo`` when it is built, which
    took 1.3-1.8 s on two cores, the largest part of what a process's first CPU fit costs beyond later ones
    (``scae fit`` on the command line, a notebook's first fit: flowsom_bal_flow 6.0 s against 1.9 s). The
    functional call imports nothing more (it goes through dynamo only while ``torch.compile`` traces it). It is
    documented API (torch 2.15 also lists it as ``torch.optim.functional.adam``, the same function): the
    caller holds the state, the update increments the step count.
    ``tests/test_fused.py`` checks the steps against ``torch.optim.Adam``.
    """

    def __init__(self, vector: torch.nn.Parameter, lr: float, *, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        self.vector, self.lr, self.betas, self.eps = vector, float(lr), betas, eps
        self.exp_avg = torch.zeros_like(vector, memory_format=torch.preserve_format)
        self.exp_avg_sq = torch.zeros_like(vector, memory_format=torch.preserve_format)
        self.steps = torch.zeros((), dtype=torch.float32, device=vector.device)  # what Adam keeps for fused updates
        from torch.optim.adam import adam  # (torch.optim is loaded with torch; looked up once, not every step)

        self._update = adam

    @property
    def param_groups(self) -> list[dict]:
        """The one group, as ``torch.optim`` lists it (``params`` and ``lr``)."""
        return [{"params": [self.vector], "lr": self.lr}]

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of the vector from its ``.grad``."""
        self._update(
            [self.vector], [self.vector.grad], [self.exp_avg], [self.exp_avg_sq], [], [self.steps],
            fused=True, amsgrad=False, beta1=self.betas[0], beta2=self.betas[1], lr=self.lr,
            weight_decay=0.0, eps=self.eps, maximize=False,
        )  # fmt: skip


def can_flatten(net: torch.nn.Module, device: torch.device) -> bool:
    """Whether :func:`flat_adam` applies: CPU, every trainable parameter dense with one dtype."""
    params = [p for p in net.parameters() if p.requires_grad]
    return (
        device.type == "cpu"
        and len(params) > 0
        and all(p.dtype == params[0].dtype and p.layout == torch.strided for p in params)
    )


def min_cells_per_batch(n_batches: int) -> int:
    """Cells every batch needs under a default minibatch: 16, or ``256 // n_batches`` above 16 batches; at least 2."""
    return max(2, min(MIN_DEFAULT_CELLS_PER_BATCH, MIN_DEFAULT_BATCH_SIZE // max(1, n_batches)))


def batch_size_for_batches(batch_size: int, batch_counts) -> int:
    """Default minibatch with batches: at most ``batch_size`` and no more than every batch can fill with distinct
    cells (each minibatch draws ``batch_size // n_batches`` cells from every batch).
    """
    counts = [int(c) for c in batch_counts]
    return int(min(batch_size, len(counts) * min(counts)))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """``None`` for ``"32"``; ``torch.bfloat16`` for ``"bf16"`` where the device supports it (else a warning)."""
    if precision not in PRECISIONS:
        msg = f"`precision` must be one of {PRECISIONS}, got {precision!r}"
        raise ValueError(msg)
    if precision == "32":
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        logger.warning("bf16 autocast is not supported on %s; training in float32", device)
        return None
    if device.type not in ("cuda", "cpu"):
        logger.warning("bf16 autocast is not supported on device type %r; training in float32", device.type)
        return None
    return torch.bfloat16


class _Guarded:
    """Calls the compiled function; on any compile/runtime failure of its first call, falls back to eager."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.compiled = None
        self.ok: bool | None = None
        try:
            self.compiled = torch.compile(fn, dynamic=False)
        except Exception as e:  # noqa: BLE001 - any failure means: no compile here
            logger.warning("torch.compile unavailable (%s); training without it", e)
            self.ok = False

    def __call__(self, *args, **kwargs):
        if self.ok is False:
            return self.fn(*args, **kwargs)
        if self.ok:
            return self.compiled(*args, **kwargs)
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            logger.warning("torch.compile failed (%s: %s); training without it", type(e).__name__, str(e)[:200])
            self.ok = False
            return self.fn(*args, **kwargs)
        self.ok = True
        return out


def step_function(fn, *, device: torch.device, autocast_dtype: torch.dtype | None = None, compile: bool = False):
    """Wrap the loss function ``fn`` with optional ``torch.compile`` (guarded) and autocast."""
    f = _Guarded(fn) if compile else fn
    if autocast_dtype is None:
        return f

    def run(*args, **kwargs):
        # no cast cache: each weight is cast once per step anyway, and a cache cannot live in a CUDA graph
        with torch.autocast(device_type=device.type, dtype=autocast_dtype, cache_enabled=False):
            terms = f(*args, **kwargs)
        return {k: v.float() for k, v in terms.items()}

    return run
