"""GPU fast-path options, checked on whatever device runs the tests (CPU here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scae
from scae import _fast


def test_default_batch_size_by_device():
    assert _fast.default_batch_size(torch.device("cpu")) == 256
    assert _fast.default_batch_size(torch.device("cuda")) == 4096


def test_bf16_autocast_trains(small):
    scae.tl.fit(small, max_epochs=3, hidden=(64, 32, 16), precision="bf16", device="cpu", progress=False)
    hist = small.uns["scae"]["history"]["total"]
    assert np.isfinite(hist).all() and hist[-1] < hist[0]
    assert small.obsm["X_scae"].dtype == np.float32


def test_bad_precision_leaves_adata_unchanged(small, guard):
    check = guard(small)
    with pytest.raises(ValueError, match="precision"):
        scae.tl.fit(small, precision="fp8", progress=False)
    check()


def test_compile_failure_falls_back_to_eager(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: broken)
    f = _fast.step_function(lambda x: {"total": x * 2}, device=torch.device("cpu"), compile=True)
    assert float(f(torch.tensor(2.0))["total"]) == 4.0
    assert float(f(torch.tensor(3.0))["total"]) == 6.0
