"""Clusters of the default fit across floating-point paths and at the CUDA minibatch (slow), and cut into the
reference count on real data grown to 100,000 cells.

Seeds 0-2 under 1 and 2 torch threads, and a run whose feature moments are computed in float32 instead of
float64: the same algorithm, slightly different numbers, as on another CPU or BLAS. Each path is one draw
from the distribution of fits. Before the separation rule of the merge (scae/_merge.py MAX_SEPARATION) about
one default fit in thirteen put NK and NK T cells in one cluster (automatic F1 below 0.85); with it, none of 68
saved flowsom_bal_flow fits (CPU seeds 0-59, 8 CUDA fits) is below 0.89, so the test allows one run of the 9
below the floor (a mode rarer than one fit in 68) instead of two. Clusters holding >= 1% of the cells are
counted: the rule keeps a few small separated groups (< 1% of the cells each) apart. Measured on the 2-core
CPU (2026-11-28, ~3 s a fit), automatic / k=7 F1 (automatic ARI, clusters):
seed 0: 1 thread 0.976 / 0.977 (0.989, 9), 2 threads 0.971 / 0.971 (0.985, 8), float32 moments 0.967 / 0.967
(0.984, 9); seed 1: 0.922 / 0.922 (0.959, 7; 0.767 before the rule), 0.964 / 0.964 (0.983, 7), 0.956 / 0.956
(0.978, 7); seed 2: 0.974 / 0.974 (0.993, 7), 0.967 / 0.967 (0.994, 7), 0.970 / 0.970 (0.991, 7).
"""

import anndata
import numpy as np
import pytest
import torch

import scae
import scae.data
from scae.metrics import cluster_scores

# the floors of test_fit.py
F1_FLOOR = 0.78
ARI_FLOOR = 0.95
K7_F1_FLOOR = 0.90
#: runs of the 9 that may fall below F1_FLOOR (the NK / NK T mode; see the module docstring)
MAX_RUNS_BELOW_F1_FLOOR = 1


def _float32_moments(X):
    X32 = np.asarray(X, dtype=np.float32)
    mean, std = X32.mean(0), X32.std(0)
    std[std < 1e-6] = 1.0
    return mean, std


RUNS = [(seed, threads, False) for seed in (0, 1, 2) for threads in (1, 2)] + [(seed, 2, True) for seed in (0, 1, 2)]


def _scores(a, labels, keep) -> tuple[dict, dict]:
    auto = cluster_scores(labels[keep], a.obs["scae_cluster"].astype(str).to_numpy()[keep])
    scae.tl.cluster(a, n_clusters=7)
    k7 = cluster_scores(labels[keep], a.obs["scae_cluster"].astype(str).to_numpy()[keep])
    return auto, k7


@pytest.mark.slow
def test_default_clusters_hold_floors_across_floating_point_paths(flow, monkeypatch):
    labels = flow.obs["cell_type"].astype(str).to_numpy()
    keep = labels != "Unlabeled"
    moments = scae.data.feature_moments
    before = torch.get_num_threads()
    below = []
    for seed, threads, float32_moments in RUNS:
        monkeypatch.setattr(scae.data, "feature_moments", _float32_moments if float32_moments else moments)
        torch.set_num_threads(threads)
        try:
            a = flow.copy()
            scae.tl.fit(a, random_state=seed, progress=False, device="cpu")
        finally:
            torch.set_num_threads(before)
        sizes = a.obs["scae_cluster"].value_counts().to_numpy()  # of the automatic clusters
        auto, k7 = _scores(a, labels, keep)
        run = (seed, threads, float32_moments)
        print(
            run,
            f"auto F1 {auto['f1']:.3f} ARI {auto['ari']:.3f} ({auto['n_clusters']} clusters), k=7 F1 {k7['f1']:.3f}",
        )
        assert 5 <= np.count_nonzero(sizes >= 0.01 * a.n_obs) <= 9, (run, sizes)
        assert auto["ari"] > ARI_FLOOR, (run, auto)
        assert k7["f1"] > K7_F1_FLOOR and k7["ari"] > ARI_FLOOR, (run, k7)
        if auto["f1"] <= F1_FLOOR:
            below.append((run, round(auto["f1"], 3)))
    assert len(below) <= MAX_RUNS_BELOW_F1_FLOOR, below


@pytest.fixture(scope="module")
def flow_131k(flow):
    """flowsom_bal_flow grown to 131,072 cells (resampled with N(0, 0.05) noise per marker): the size from
    which CUDA fits take minibatches of 4,096 (scae._fast.default_batch_size keeps 32 steps per pass)."""
    rng = np.random.default_rng(0)
    idx = rng.integers(0, flow.n_obs, 131_072)
    x = np.asarray(flow.X)[idx] + rng.normal(0, 0.05, (idx.size, flow.n_vars)).astype(np.float32)
    out = anndata.AnnData(x.astype(np.float32), var=flow.var.copy())
    out.obs["cell_type"] = flow.obs["cell_type"].to_numpy()[idx]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cuda_minibatch_on_the_cpu(flow_131k, seed):
    """A minibatch of 4,096 with its default learning rate and step budget, on the CPU, holds the CUDA floors of
    tests/test_cuda.py. A CUDA fit draws the same minibatches (scae.train.Sampler uses a CPU generator), so this
    is the GPU algorithm checked without a GPU (the CPU computes the clustering layer's gradients by hand, the
    GPU by autograd: the same formulas). The data are grown to 131,072 cells because CUDA uses 4,096 only from
    there on; on flowsom_bal_flow itself a minibatch of 4,096 means 5 steps a pass, a setting no default takes
    (there, 150 steps of 4,096 gave k=7 F1 below 0.93 in 6 of 20 seeds). Measured 2026-11-27 (256 steps, learning
    rate 4.5e-3, ~8 s a fit): automatic F1 0.972/0.940/0.938, k=7 0.973/0.951/0.955 (seeds 0/1/2); seeds 3-7 k=7
    0.950/0.798/0.929/0.981/0.959 — large minibatches are less steady than 512 (8 of 80 below 0.93). With the
    separation rule of the merge (2026-11-28): automatic 0.972/0.939/0.938 (8/9/8 clusters), k=7 0.973/0.951/0.955.
    """
    flow = flow_131k
    labels = flow.obs["cell_type"].astype(str).to_numpy()
    keep = labels != "Unlabeled"
    a = flow.copy()
    scae.tl.fit(a, random_state=seed, batch_size=4096, progress=False, device="cpu")
    rt = a.uns["scae"]["runtime"]
    assert rt["batch_size"] == 4096 and rt["max_steps"] == 8 * 32
    auto, k7 = _scores(a, labels, keep)
    print(seed, f"auto F1 {auto['f1']:.3f} ({auto['n_clusters']} clusters), k=7 F1 {k7['f1']:.3f}")
    assert auto["f1"] >= 0.78, auto
    assert k7["f1"] >= 0.93, k7


def test_n_clusters_holds_on_levine_grown_to_100k(levine, grown):
    """levine3k grown to 100,000 cells, default fit, seed 1: cut into its 3 PhenoGraph groups.

    Two outlying code groups (0.3% and 0.8% of the cells) used to merge into one group over the 1% bar once every
    remaining pair was kept apart, and took one of the 3 clusters: two of the groups shared a cluster (k=3 F1 0.58,
    2026-12-07; 0.99 since; seeds 0-9: 0.95-0.99). About 6 s on 2 cores."""
    a = grown(levine, 100_000)
    labels = a.obs["phenograph_cluster"].astype(str).to_numpy()
    scae.tl.fit(a, random_state=1, progress=False, device="cpu")
    scae.tl.cluster(a, n_clusters=3)
    assert a.obs["scae_cluster"].nunique() == 3
    assert cluster_scores(labels, a.obs["scae_cluster"].astype(str).to_numpy())["f1"] >= 0.93
