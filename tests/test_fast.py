"""GPU fast-path options, checked on whatever device runs the tests (CPU here)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import scae
from scae import _fast, _reproducible


def test_default_batch_size_by_device():
    assert _fast.default_batch_size(torch.device("cpu")) == 512
    assert _fast.default_batch_size(torch.device("cuda")) == 4096
    # on CUDA, small data keeps MIN_STEPS_PER_EPOCH minibatches per pass (powers of two, 512 to 4096)
    cuda = torch.device("cuda")
    sizes = [_fast.default_batch_size(cuda, n) for n in (450, 19_225, 65_536, 100_000, 131_072, 10**7)]
    assert sizes == [512, 512, 2048, 2048, 4096, 4096]
    assert _fast.default_batch_size(torch.device("cpu"), 10**7) == 512


def test_default_minibatch_with_batches():
    """The default shrinks to what the smallest batch fills; a batch needs 16 cells, or with more than 16 batches
    the share of a 256-cell minibatch (the floor before the default could shrink: nothing accepted then is refused)."""
    assert [_fast.min_cells_per_batch(b) for b in (1, 2, 3, 16, 17, 32, 100, 300)] == [16, 16, 16, 16, 15, 8, 2, 2]
    for b in range(16, 400):
        assert _fast.min_cells_per_batch(b) == max(2, 256 // b)
    assert _fast.batch_size_for_batches(512, [41, 80]) == 82
    assert _fast.batch_size_for_batches(512, [2000, 1000, 50]) == 150
    assert _fast.batch_size_for_batches(512, [2000, 1000]) == 512
    assert _fast.batch_size_for_batches(4096, [3000] * 3) == 4096
    assert _fast.batch_size_for_batches(4096, [1000] * 3) == 3000


def test_default_learning_rate_grows_with_the_minibatch(small, levine):
    assert _fast.default_learning_rate(256) == _fast.default_learning_rate(512) == pytest.approx(3e-3)
    assert _fast.default_learning_rate(4096) == pytest.approx(3e-3 * 8**0.2)
    assert _fast.default_learning_rate(65536) == pytest.approx(3e-3 * 128**0.2)
    assert _fast.default_learning_rate(2**22) == pytest.approx(1e-2)  # the cap
    assert scae.SAUCIE(levine, device="cpu", batch_size=4096).learning_rate == pytest.approx(3e-3 * (3000 / 512) ** 0.2)
    # a minibatch larger than the data is all of it: 600 cells
    assert scae.SAUCIE(small, device="cpu", batch_size=4096).learning_rate == pytest.approx(3e-3 * (600 / 512) ** 0.2)
    assert scae.SAUCIE(small, device="cpu", batch_size=4096, learning_rate=1e-4).learning_rate == 1e-4


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


def test_pairwise_subset_keeps_batches_balanced():
    # a stratified minibatch lays batches out in equal contiguous runs; the strided subset takes the
    # same share of every run, so each batch stays equally represented in the MMD estimate
    from scae.train import Sampler, pairwise_subset

    codes = torch.tensor([0] * 5000 + [1] * 300 + [2] * 40)
    gen, cpu = torch.Generator().manual_seed(0), torch.device("cpu")
    sampler = Sampler(codes.numel(), 4096, batch_codes=codes, n_batches=3, generator=gen, device=cpu)
    idx = next(sampler.epoch())
    sub = codes[idx][pairwise_subset(idx.numel(), 256)]
    counts = torch.bincount(sub, minlength=3)
    assert 200 <= sub.numel() <= 256
    assert counts.max() - counts.min() <= 1, counts
    assert pairwise_subset(200, 256) == slice(None) and pairwise_subset(5000, None) == slice(None)


def test_pairwise_cells_at_or_above_batch_size_changes_nothing(small):
    kw = {"hidden": (64, 32, 16), "batch_size": 128, "device": "cpu"}  # bit-identical: a CPU promise
    a = scae.SAUCIE(small, pairwise_cells=128, **kw).train(3, progress=False)
    b = scae.SAUCIE(small, pairwise_cells=None, **kw).train(3, progress=False)
    c = scae.SAUCIE(small, pairwise_cells=32, **kw).train(3, progress=False)
    np.testing.assert_array_equal(a.get_embedding(), b.get_embedding())
    assert not np.array_equal(a.get_embedding(), c.get_embedding())
    assert c.history["within_cluster"][-1] < c.history["within_cluster"][0]
    with pytest.raises(ValueError, match="pairwise_cells"):
        scae.SAUCIE(small, pairwise_cells=1)


def test_sampler_draws_the_cpu_minibatches_from_a_cpu_generator():
    """Rows on another device get the minibatches a CPU fit of the same seed draws (here both on the CPU: the
    per-epoch path is forced), with and without batches."""
    from scae.train import Sampler

    codes = torch.from_numpy(np.random.default_rng(0).integers(0, 3, 1000))
    for batch_codes in (None, codes):
        runs = []
        for per_epoch in (False, True):
            gen = torch.Generator().manual_seed(7)
            s = Sampler(1000, 96, batch_codes=batch_codes, n_batches=3, generator=gen, device=torch.device("cpu"))
            s._per_epoch = per_epoch
            runs.append([torch.cat(list(s.epoch())) for _ in range(2)])
        for a, b in zip(*runs, strict=True):
            assert torch.equal(a, b)
        assert not torch.equal(runs[0][0], runs[0][1])  # epochs differ


def test_deterministic_algorithms_set_cublas_config_on_cuda_only(monkeypatch):
    name = "CUBLAS_WORKSPACE_CONFIG"
    monkeypatch.setenv(name, ":4096:8")
    monkeypatch.delenv(name)  # (recorded: unset again after the test)
    with _reproducible.deterministic_algorithms(True, torch.device("cpu")):
        assert torch.are_deterministic_algorithms_enabled() and name not in os.environ
    with _reproducible.deterministic_algorithms(False, torch.device("cuda")):
        assert not torch.are_deterministic_algorithms_enabled() and name not in os.environ
    with _reproducible.deterministic_algorithms(True, torch.device("cuda")):  # no CUDA op runs inside
        assert torch.are_deterministic_algorithms_enabled() and os.environ[name] == ":4096:8"
    assert not torch.are_deterministic_algorithms_enabled()
    monkeypatch.setenv(name, ":16:8")
    _reproducible.check_cublas_config(torch.device("cuda"))
    monkeypatch.setenv(name, ":0:0")
    _reproducible.check_cublas_config(torch.device("cpu"))  # cuBLAS is not used on the CPU
    expected = r"CUBLAS_WORKSPACE_CONFIG unset or one of ':4096:8', ':16:8', but it is ':0:0'"
    with pytest.raises(ValueError, match=expected):
        with _reproducible.deterministic_algorithms(True, torch.device("cuda")):
            pass
    assert not torch.are_deterministic_algorithms_enabled()
