import math

import numpy as np
import pytest
import torch

from scae import losses


def test_squared_distances_matches_cdist():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(20, 5, generator=g), torch.randn(7, 5, generator=g)
    np.testing.assert_allclose(losses.squared_distances(a, b), torch.cdist(a, b).pow(2), rtol=1e-4, atol=1e-5)
    assert float(losses.squared_distances(a).diagonal().abs().max()) < 1e-5


def _mmd_loop(x, y, scales):
    """Direct double loop: biased squared MMD with the multi-scale kernel on rescaled distances."""
    pts = np.vstack([x, y])
    d2 = ((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)
    d2 = d2 / d2.max()
    k = sum(np.exp(-d2 / s) for s in scales)
    n = len(x)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


def test_mmd_matches_double_loop_and_sums_batches():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(30, 2))
    b1 = rng.normal(loc=1.0, size=(20, 2))
    emb = torch.tensor(np.vstack([ref, b1]), dtype=torch.float64)
    batch = torch.tensor([0] * 30 + [1] * 20)
    got = float(losses.mmd(emb, batch, reference=0, n_batches=2))
    assert got == pytest.approx(_mmd_loop(ref, b1, losses.MMD_SCALES), rel=1e-6)
    # a batch code that is absent from the minibatch contributes nothing
    got3 = float(losses.mmd(emb, batch, reference=0, n_batches=3))
    assert got3 == pytest.approx(got, rel=1e-9)
    # identical batches → 0; shifted batch → larger than a barely shifted one
    same = torch.tensor(np.vstack([ref, ref]), dtype=torch.float64)
    assert float(losses.mmd(same, torch.tensor([0] * 30 + [1] * 30), reference=0, n_batches=2)) == pytest.approx(
        0, abs=1e-9
    )


def test_id_regularization_entropy_values():
    uniform = torch.ones(10, 8)
    assert float(losses.id_regularization(uniform)) == pytest.approx(math.log(8), rel=1e-4)
    one_unit = torch.zeros(10, 8)
    one_unit[:, 3] = 2.0
    assert float(losses.id_regularization(one_unit)) == pytest.approx(0.0, abs=1e-5)


def test_within_cluster_distance_rewards_codes_that_follow_the_data():
    rng = np.random.default_rng(0)
    x = torch.tensor(np.vstack([rng.normal(0, 0.1, (20, 3)), rng.normal(5, 0.1, (20, 3))]), dtype=torch.float32)
    good = torch.zeros(40, 4)
    good[:20, 0] = 5.0
    good[20:, 1] = 5.0
    ignore = torch.ones(40, 4)
    assert float(losses.within_cluster_distance(x, ignore)) == pytest.approx(1.0, rel=1e-3)
    # cells of the other group differ in two units: similarity exp(-2), so about 0.24 of the all-pair distance
    assert float(losses.within_cluster_distance(x, good)) < 0.3


def test_batch_standardized_mse_ignores_per_batch_shift_and_scale():
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(40, 5)), dtype=torch.float32)
    batch = torch.tensor([0] * 20 + [1] * 20)
    moved = x.clone()
    moved[20:] = moved[20:] * 3.0 + 7.0
    assert float(losses.batch_standardized_mse(x, moved, batch, n_batches=2)) < 1e-3
    assert float(losses.batch_standardized_mse(x, torch.flip(x, [0]), batch, n_batches=2)) > 0.5


def test_within_batch_distance_mse_allows_moving_a_batch_but_not_scrambling_it():
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(40, 3)), dtype=torch.float32)
    batch = torch.tensor([0] * 20 + [1] * 20)
    moved = x.clone()
    moved[20:] = moved[20:] + 5.0  # batch 1 shifted as a whole: distances kept
    assert float(losses.within_batch_distance_mse(x, moved, batch, reference=0)) < 1e-6
    scrambled = moved.clone()
    scrambled[20:] = scrambled[20:] * torch.tensor([3.0, 0.1, 1.0])
    assert float(losses.within_batch_distance_mse(x, scrambled, batch, reference=0)) > 0.5
    # reference rows are not looked at by this term
    ref_changed = x.clone()
    ref_changed[:20] = 0.0
    assert float(losses.within_batch_distance_mse(x, ref_changed, batch, reference=0)) < 1e-6


def test_gaussian_kernel_broadcast_equals_the_loop():
    """The CUDA form of the MMD kernel (all bandwidths in one product) gives the CPU loop's values."""
    from scae.losses import MMD_SCALES, _kernel_sum_broadcast, gaussian_kernel_matrix

    d2 = torch.rand(200, 200, generator=torch.Generator().manual_seed(0))
    d2[0, 0] = 0.0
    loop = gaussian_kernel_matrix(d2)
    assert loop[0, 0].item() == pytest.approx(len(MMD_SCALES))
    torch.testing.assert_close(_kernel_sum_broadcast(d2, MMD_SCALES), loop, rtol=1e-6, atol=1e-5)


def test_squared_distances_stay_float32_under_bf16_autocast():
    """bf16 products would cancel: |a-b|^2 of nearby points must keep float32 precision under autocast."""
    from scae.losses import squared_distances

    a = torch.tensor([[1.0, 0.0], [1.01, 0.0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d2 = squared_distances(a)
    assert d2.dtype == torch.float32
    assert d2[0, 1].item() == pytest.approx(1e-4, rel=0.05)


def test_mmd_stays_float32_under_bf16_autocast():
    """The MMD is a difference of mean kernel values (within minus twice across batches): in bf16 it cancels."""
    from scae.losses import mmd

    g = torch.Generator().manual_seed(0)
    emb = torch.randn(256, 2, generator=g)
    batch = torch.arange(256) % 2
    emb[batch == 1] += 0.05  # two nearly mixed batches: a small MMD out of kernel sums of ~10
    exact = mmd(emb.double(), batch, reference=0, n_batches=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = mmd(emb, batch, reference=0, n_batches=2)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(exact.item(), rel=1e-3)


def test_self_distances_addmm_equal_the_plain_form():
    """The one-``addmm`` form of the distances of rows to themselves gives the two-argument form's values and
    gradients."""
    from scae.losses import _self_distances_addmm, squared_distances

    a = torch.randn(50, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    plain, fused = squared_distances(a, a), _self_distances_addmm(a)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    assert torch.all(torch.diagonal(fused) >= 0)
    (g_plain,) = torch.autograd.grad(plain.add(1e-3).sqrt().sum(), a)
    (g_fused,) = torch.autograd.grad(fused.add(1e-3).sqrt().sum(), a)
    torch.testing.assert_close(g_fused, g_plain, rtol=1e-3, atol=1e-3)
