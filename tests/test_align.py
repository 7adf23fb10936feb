"""Batch alignment onto the reference (scae._align) and the ``"moments"`` reconstruction of other batches."""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc
import torch

import scae
from scae import _align, losses, train
from scae.data import RowSource
from scae.metrics import cluster_scores
from scae.nn.network import SAUCIENet


def _two_batches(seed: int = 0):
    """Batch 1 is batch 0's cells scaled and shifted per feature: aligning must undo exactly that."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(60, 5, generator=g) * torch.tensor([1.0, 2.0, 0.5, 1.5, 1.0]) + 3.0
    scale, shift = torch.tensor([2.0, 0.5, 1.0, 3.0, 0.25]), torch.tensor([1.0, -4.0, 0.0, 2.0, 5.0])
    x = torch.cat([x0, x0 * scale + shift])
    return x, torch.tensor([0] * 60 + [1] * 60)


def _minibatch_aligned(x: torch.Tensor, batch: torch.Tensor, reference: int) -> torch.Tensor:
    return _align.align(x, batch, _align.rows_alignment(x, batch, reference=reference, n_batches=2))


def test_minibatch_alignment_undoes_a_per_feature_affine_batch_effect():
    x, batch = _two_batches()
    aligned = _minibatch_aligned(x, batch, 0)
    torch.testing.assert_close(aligned[60:], x[:60], atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(aligned[:60], x[:60], atol=1e-5, rtol=1e-5)  # the reference stays put
    # the other way round: batch 0 moved onto batch 1
    back = _minibatch_aligned(x, batch, 1)
    torch.testing.assert_close(back[:60], x[60:], atol=5e-3, rtol=1e-3)


def test_scale_factor_is_bounded():
    x = torch.cat([torch.randn(50, 2, generator=torch.Generator().manual_seed(1)), torch.zeros(400, 2)])
    x[50, 0] = 1.0  # one cell of batch 1 expresses feature 0: its std is tiny (0.05 against about 1)
    batch = torch.tensor([0] * 50 + [1] * 400)
    aligned = _minibatch_aligned(x, batch, 0)
    assert float(aligned[50, 0] - aligned[51, 0]) == pytest.approx(_align.MAX_SCALE, rel=1e-4)


def test_reference_moments_mse_keeps_the_output_scale():
    """The z-scored form lets the output of a batch shrink to nothing at no cost; this one does not."""
    x, batch = _two_batches()
    aligned = _minibatch_aligned(x, batch, 0)
    assert float(losses.reference_moments_mse(aligned, aligned, batch, reference=0)) == 0.0
    shrunk = aligned.clone()
    shrunk[60:] = 0.2 * aligned[60:]  # the whole batch shrunk five-fold
    assert float(losses.batch_standardized_mse(x, shrunk, batch, n_batches=2)) < 1e-2
    assert float(losses.reference_moments_mse(aligned, shrunk, batch, reference=0)) > 1.0
    other = aligned.clone()
    other[:60] = 0.0  # reference rows are reconstructed value for value elsewhere: not looked at here
    assert float(losses.reference_moments_mse(aligned, other, batch, reference=0)) == 0.0


def _net(n_features: int) -> SAUCIENet:
    torch.manual_seed(0)
    mean, std = torch.linspace(-1, 1, n_features), torch.linspace(0.5, 2, n_features)
    return SAUCIENet(n_features, hidden=(8,), feature_mean=mean, feature_std=std)


def test_whole_data_alignment_matches_numpy_in_any_chunking(monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 7)).astype(np.float32)
    codes = rng.integers(0, 3, 500)
    X[codes == 2] = X[codes == 2] * 2.5 - 1.0
    net = _net(7)
    z = ((X - net.feature_mean.numpy()) / net.feature_std.numpy()).astype(np.float64)
    mean = np.stack([z[codes == b].mean(0) for b in range(3)])
    std = np.stack([np.sqrt(z[codes == b].var(0) + 1e-4) for b in range(3)])
    expected_scale = std[1] / std
    results = []
    for chunk_values in (1 << 22, 7 * 64):  # one chunk, or chunks of 64 rows
        monkeypatch.setattr(_align, "CHUNK_VALUES", chunk_values)
        source = RowSource(X, torch.device("cpu"))
        results.append(_align.batch_alignment(net, source, torch.from_numpy(codes), reference=1, n_batches=3))
    for scale, shift in results:
        np.testing.assert_allclose(scale.numpy(), expected_scale, rtol=1e-5)
        np.testing.assert_allclose(shift.numpy(), mean[1] - mean * expected_scale, rtol=1e-5, atol=1e-5)
    aligned = _align.align(torch.from_numpy(z).float(), torch.from_numpy(codes), results[0]).double().numpy()
    for b in range(3):  # every batch now has the reference's moments
        np.testing.assert_allclose(aligned[codes == b].mean(0), mean[1], atol=1e-4)
        np.testing.assert_allclose(aligned[codes == b].std(0), std[1], rtol=1e-3, atol=1e-3)


_REDUCE = """
import sys, numpy as np, torch, torch.distributed as dist
from scae import _align
from scae.data import RowSource
from scae.nn.network import SAUCIENet
rank, init, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method="file://" + init, rank=rank, world_size=2)
rng = np.random.default_rng(0)
X = rng.normal(size=(300, 6)).astype(np.float32)
codes = rng.integers(0, 2, 300)
X[codes == 1] += 2.0
part = slice(0, 110) if rank == 0 else slice(110, 300)  # shards of different sizes
torch.manual_seed(0)
net = SAUCIENet(6, hidden=(8,))
src = RowSource(X[part], torch.device("cpu"))
scale, shift = _align.batch_alignment(net, src, torch.from_numpy(codes[part]), reference=0, n_batches=2,
                                      distributed=True)
torch.save(torch.stack([scale, shift]), out + "." + str(rank))
dist.destroy_process_group()
"""


def test_processes_align_with_the_moments_of_all_shards(two_gloo_processes):
    a0, a1 = two_gloo_processes(_REDUCE)
    assert torch.equal(a0, a1)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6)).astype(np.float32)
    codes = rng.integers(0, 2, 300)
    X[codes == 1] += 2.0
    torch.manual_seed(0)
    net = SAUCIENet(6, hidden=(8,))
    whole = _align.batch_alignment(net, RowSource(X, torch.device("cpu")), torch.from_numpy(codes), reference=0,
                                   n_batches=2)  # fmt: skip
    torch.testing.assert_close(a0, torch.stack(whole), atol=1e-6, rtol=1e-6)


def test_fit_aligns_once_before_the_first_step(monkeypatch):
    seen, calls = [], []
    original_loss, original_align = train.compute_losses, _align.batch_alignment

    def spy(*args, batch_alignment=None, **kwargs):
        seen.append(None if batch_alignment is None else tuple(batch_alignment[0].shape))
        return original_loss(*args, batch_alignment=batch_alignment, **kwargs)

    def counting(*args, **kwargs):
        calls.append(1)
        return original_align(*args, **kwargs)

    monkeypatch.setattr(train, "compute_losses", spy)
    monkeypatch.setattr(_align, "batch_alignment", counting)
    rng = np.random.default_rng(0)
    adata = sc.AnnData(rng.normal(size=(300, 12)).astype(np.float32))
    adata.obs["batch"] = np.repeat(["a", "b", "c"], 100)
    scae.tl.fit(adata, batch_key="batch", max_epochs=2, batch_size=96, progress=False, device="cpu")
    assert len(calls) == 1 and len(seen) >= 4 and set(seen) == {(3, 12)}
    seen.clear()
    scae.tl.fit(adata, batch_key="batch", lambda_b=0.0, max_epochs=1, batch_size=96, progress=False, device="cpu")
    assert len(calls) == 1 and set(seen) == {None}  # no correction, no alignment


def _planted_flow(flow, seed: int = 11):
    """flowsom_bal_flow with a planted batch effect: a random half of the cells, each marker scaled by
    U(0.75, 1.25) and shifted by N(0, 0.3 SD) (the kind of per-channel shift a cytometer drift makes)."""
    rng = np.random.default_rng(seed)
    adata = flow.copy()
    b = rng.integers(0, 2, adata.n_obs)
    X = np.asarray(adata.X, dtype=np.float32).copy()
    scale, shift = rng.uniform(0.75, 1.25, X.shape[1]), rng.normal(0, 0.3, X.shape[1]) * X.std(0)
    X[b == 1] = X[b == 1] * scale + shift
    adata.X = X
    adata.obs["batch"] = np.where(b == 1, "B", "A")
    return adata


def test_planted_cytometry_batch_effect_is_removed_and_gates_recovered(flow):
    """Seeds 0-3: k=7 F1 0.964/0.950/0.964/0.963 (``batch_reconstruction="zscore"``: 0.918/0.729/0.947/0.944);
    share of the 15 nearest neighbours in the embedding from the same batch 0.52-0.53 (zscore 0.54-0.55,
    0.71-0.73 without ``batch_key``; 0.5 is perfect mixing)."""
    from sklearn.neighbors import NearestNeighbors

    adata0 = _planted_flow(flow)
    truth = adata0.obs["cell_type"].astype(str).to_numpy()
    keep = truth != "Unlabeled"
    b = adata0.obs["batch"].to_numpy()
    for seed in (0, 1):
        adata = adata0.copy()
        scae.tl.fit(adata, batch_key="batch", random_state=seed, progress=False, device="cpu")
        scae.tl.cluster(adata, n_clusters=7)
        f1 = cluster_scores(truth[keep], adata.obs["scae_cluster"].astype(str).to_numpy()[keep])["f1"]
        assert f1 > 0.90, (seed, f1)
        emb = adata.obsm["X_scae"]
        nn = NearestNeighbors(n_neighbors=16).fit(emb).kneighbors(emb, return_distance=False)[:, 1:]
        same = float((b[nn] == b[:, None]).mean())
        assert same < 0.6, (seed, same)
