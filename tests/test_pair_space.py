"""Within-cluster distances of wide inputs on principal components (scae._pair_space)."""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc
import torch

import scae
from scae import _pair_space, losses, train
from scae._pair_space import PAIR_COMPONENTS, pair_projection
from scae.metrics import cluster_scores


def _wide(n: int, p: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(3.0, 0.1, p)  # distinct variances: the principal axes are well defined
    return torch.randn(n, p, generator=g) * scales @ torch.linalg.qr(torch.randn(p, p, generator=g))[0]


def _top_axes(rows: torch.Tensor, k: int) -> torch.Tensor:
    c = rows.double() - rows.double().mean(0)
    return torch.linalg.svd(c, full_matrices=False)[2][:k].T


def _same_subspace(a: torch.Tensor, b: torch.Tensor) -> float:
    """Smallest cosine of the principal angles between the column spans of ``a`` and ``b``."""
    return float(torch.linalg.svdvals(a.double().T @ b.double()).min())


def test_narrow_inputs_keep_plain_distances():
    assert pair_projection(torch.randn(300, PAIR_COMPONENTS)) is None
    assert pair_projection(torch.randn(300, 8)) is None


@pytest.mark.parametrize(("n", "p"), [(400, 200), (300, 765), (80, 60)])
def test_axes_are_the_top_principal_components(n, p):
    z = _wide(n, p)
    axes = pair_projection(z)
    assert axes.shape == (p, PAIR_COMPONENTS) and axes.dtype == torch.float32
    assert torch.allclose(axes.T @ axes, torch.eye(PAIR_COMPONENTS), atol=1e-5)
    assert _same_subspace(axes, _top_axes(z, PAIR_COMPONENTS)) > 0.999


def test_axes_limited_by_the_rank_and_the_row_cap():
    z = _wide(30, 120)
    assert pair_projection(z).shape == (120, 29)  # 30 centred rows span 29 dimensions
    big = _wide(3 * _pair_space.MAX_ROWS + 5, 90, seed=1)
    step = -(-big.shape[0] // _pair_space.MAX_ROWS)
    assert _same_subspace(pair_projection(big), _top_axes(big[::step], PAIR_COMPONENTS)) > 0.999


def test_full_orthonormal_basis_leaves_the_within_cluster_term_unchanged():
    x = _wide(64, 80)
    codes = torch.relu(torch.randn(64, 16, generator=torch.Generator().manual_seed(2)))
    basis = torch.linalg.qr(torch.randn(80, 80, generator=torch.Generator().manual_seed(3)))[0]
    plain = losses.within_cluster_distance(x, codes)
    rotated = losses.within_cluster_distance(x @ basis, codes)
    assert torch.allclose(plain, rotated, rtol=1e-4)
    projected = losses.within_cluster_distance(x @ basis[:, :5], codes)
    assert not torch.allclose(plain, projected, rtol=1e-3)  # few axes: another distance


def test_first_minibatch_sets_the_projection(monkeypatch):
    seen = []
    original = train.compute_losses

    def spy(*args, pair_projection=None, **kwargs):
        seen.append(None if pair_projection is None else tuple(pair_projection.shape))
        return original(*args, pair_projection=pair_projection, **kwargs)

    monkeypatch.setattr(train, "compute_losses", spy)
    rng = np.random.default_rng(0)
    for p, expected in ((120, (120, PAIR_COMPONENTS)), (20, None)):
        seen.clear()
        adata = sc.AnnData(rng.normal(size=(300, p)).astype(np.float32))
        scae.tl.fit(adata, max_epochs=2, batch_size=128, progress=False, device="cpu")
        assert len(seen) == 6 and set(seen) == {expected}


_GATHER = """
import sys, torch, torch.distributed as dist
from scae._pair_space import pair_projection
rank, init, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method="file://" + init, rank=rank, world_size=2)
g = torch.Generator().manual_seed(0)
z = torch.randn(300, 100, generator=g) * torch.linspace(3.0, 0.1, 100)
rows = z[:120] if rank == 0 else z[120:]  # shards of different sizes
torch.save(pair_projection(rows, distributed=True), out + "." + str(rank))
dist.destroy_process_group()
"""


def test_ranks_agree_on_the_axes_of_all_their_rows(two_gloo_processes):
    a0, a1 = two_gloo_processes(_GATHER)
    assert torch.equal(a0, a1)
    z = torch.randn(300, 100, generator=torch.Generator().manual_seed(0)) * torch.linspace(3.0, 0.1, 100)
    assert _same_subspace(a0, pair_projection(z)) > 0.9999


@pytest.mark.parametrize("values", ["scaled", "log-normalized"])
def test_codes_do_not_collapse_on_rna(values, pbmc68k):
    """pbmc68k_reduced, 700 cells x 765 genes: ``X`` (scaled) or ``.raw`` (log-normalized). Seeds 0-7 without the
    projection: scaled 2-12 clusters (2 in 3 seeds), log-normalized 2 clusters in 6 of 8 seeds (F1 0.12-0.36);
    with it 7-15 clusters, F1 0.34-0.54, ARI 0.39-0.59 against ``bulk_labels`` (Louvain stored with the data:
    11 clusters, F1 0.47, ARI 0.42).
    """
    adata0 = pbmc68k
    if values == "log-normalized":
        raw = adata0.raw.to_adata()
        raw.obs = adata0.obs.copy()
        adata0 = raw
    truth = adata0.obs["bulk_labels"].astype(str).to_numpy()
    for seed in (0, 1, 2):
        adata = adata0.copy()
        scae.tl.fit(adata, random_state=seed, progress=False, device="cpu")
        labels = adata.obs["scae_cluster"].astype(str).to_numpy()
        scores = cluster_scores(truth, labels)
        assert len(np.unique(labels)) >= 5, (seed, len(np.unique(labels)))
        assert scores["f1"] > 0.30 and scores["ari"] > 0.33, (seed, scores)
