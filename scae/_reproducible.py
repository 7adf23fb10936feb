"""Seeds and ``deterministic=True``: what makes a fit repeatable.

:func:`resolve_seed` turns ``random_state=None`` into a drawn seed that the fit records (``uns[key]["params"]``,
``model.random_state``, the saved model), so that any fit can be repeated.

``deterministic=True`` runs torch's deterministic algorithms around the device work of a fit.

On the CPU a scae fit is bit-reproducible for one seed, thread count and set of package versions without
anything more. On CUDA some kernels are not: float atomics (``index_add_``/``scatter_add_`` in backward passes,
the device-side cluster sums of :mod:`scae._device_cut`) add in whatever order the threads arrive, so two fits
with one seed can differ in the last bits, and the step at which early stopping ends a fit can move.

:func:`deterministic_algorithms` runs the training loop (:func:`scae._pipeline.train_model`) and the
device-side clustering (:func:`scae._pipeline.cut_labels`) under ``torch.use_deterministic_algorithms(True)``:
torch then runs its ordered variants of those kernels (slower) and raises a ``RuntimeError`` naming any
operation that has none. cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` set to ``:4096:8`` or ``:16:8`` for that
(torch raises otherwise): it is set to ``:4096:8`` where unset (torch reads it when it first sizes the
workspace, so set it before the process's first CUDA matrix product to have that size apply too; it stays set
afterwards, as cuBLAS keeps the workspace it sized), and a value other than those two is an error. torch's
previous setting of deterministic algorithms is restored afterwards, also after an error or Ctrl-C. Under torchrun
the gradient all-reduce is NCCL's, outside this setting.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets

import torch

logger = logging.getLogger("scae")

CUBLAS_VARIABLE = "CUBLAS_WORKSPACE_CONFIG"
#: The values of ``CUBLAS_WORKSPACE_CONFIG`` with which cuBLAS is deterministic (CUDA ≥ 10.2).
CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")


def resolve_seed(random_state: int | None, group=None) -> int:
    """``random_state`` as an int; ``None`` draws a 32-bit seed from the operating system's entropy (rank 0's
    under torchrun, broadcast to every rank), which the fit then records like a given one.
    """
    if random_state is not None:
        return int(random_state)
    seed = secrets.randbits(32)
    if group is not None:
        seed = int(group.broadcast(seed))
    logger.info("random_state=None: drew seed %d (pass random_state=%d to repeat this fit)", seed, seed)
    return seed


def check_cublas_config(device: torch.device) -> None:
    """Raise a ``ValueError`` when ``CUBLAS_WORKSPACE_CONFIG`` is set to a value that keeps cuBLAS nondeterministic."""
    value = os.environ.get(CUBLAS_VARIABLE)
    if device.type == "cuda" and value is not None and value not in CUBLAS_DETERMINISTIC:
        msg = (
            f"deterministic=True on CUDA needs {CUBLAS_VARIABLE} unset or one of "
            f"{', '.join(map(repr, CUBLAS_DETERMINISTIC))}, but it is {value!r}: cuBLAS is not deterministic with it"
        )
        raise ValueError(msg)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool, device: torch.device):
    """Run the block under ``torch.use_deterministic_algorithms(True)`` when ``enabled`` (see the module)."""
    if not enabled:
        yield
        return
    check_cublas_config(device)
    if device.type == "cuda" and CUBLAS_VARIABLE not in os.environ:
        os.environ[CUBLAS_VARIABLE] = CUBLAS_DETERMINISTIC[0]
        logger.debug("set %s=%s for deterministic=True", CUBLAS_VARIABLE, CUBLAS_DETERMINISTIC[0])
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
