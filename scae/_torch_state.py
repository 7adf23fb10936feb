"""Fits that do not depend on the caller's global torch state.

A notebook can leave torch in a state that a fit must not inherit: gradients off (``torch.set_grad_enabled(False)``,
or a call from inside ``torch.no_grad()`` / ``torch.inference_mode()``), float64 as the default dtype, another
default device (``torch.set_default_device``), or an enclosing ``torch.autocast``. Each made a fit fail inside torch
("element 0 of tensors does not require grad", "mat1 and mat2 must have the same dtype", "index_add_(): self
(BFloat16) and source (Float)") or compute other numbers. The network is built under :func:`construction_defaults`,
trained under :func:`trains` and its outputs computed under :func:`computes`; the caller's state is restored
afterwards (``tests/test_fit.py``).
"""

from __future__ import annotations

import contextlib
import functools

import torch


@contextlib.contextmanager
def setting(get, set_, value):
    """``set_(value)`` for the block, then ``set_`` back to what ``get()`` gave before (also after an error)."""
    before = get()
    set_(value)
    try:
        yield
    finally:
        set_(before)


def default_dtype(dtype: torch.dtype = torch.float32):
    """``dtype`` as torch's default dtype in the block (float32: scae's networks and data)."""
    return setting(torch.get_default_dtype, torch.set_default_dtype, dtype)


@contextlib.contextmanager
def construction_defaults():
    """float32 default dtype, the CPU as default device and inference mode off, for building a network (then moved
    to its device): the same parameters whatever the caller set.
    """
    with default_dtype(), torch.device("cpu"), torch.inference_mode(False):
        yield


@contextlib.contextmanager
def isolated(*, grad: bool = False):
    """float32 default dtype, inference mode off and any enclosing autocast off (scae's own ``precision`` autocast,
    entered inside, still applies); with ``grad``, gradients on.

    Not the default-device mode of :func:`construction_defaults`: it adds ~3 us to every torch call, and the tensors
    of a fit name their device.
    """
    with (
        default_dtype(),
        torch.inference_mode(False),
        torch.enable_grad() if grad else contextlib.nullcontext(),
        torch.autocast("cpu", enabled=False),
        torch.autocast("cuda", enabled=False),
    ):
        yield


def trains(fn):
    """Run ``fn`` (a training loop) under :func:`isolated` with gradients on."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with isolated(grad=True):
            return fn(*args, **kwargs)

    return wrapper


def computes(fn):
    """Run ``fn`` (a forward pass for outputs) under :func:`isolated`: float32 outputs whatever autocast encloses it."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with isolated():
            return fn(*args, **kwargs)

    return wrapper
