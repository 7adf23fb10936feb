"""Cluster outputs users read: statistics in uns, re-cutting without retraining, heatmap; quality on real data."""

import anndata as ad
import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
import pytest

import scae
from scae.metrics import cluster_scores

FAST = {"hidden": (64, 32, 16), "max_epochs": 20, "progress": False}


@pytest.fixture(scope="module")
def small_fitted(levine):
    rng = np.random.default_rng(1)
    a = levine[np.sort(rng.choice(levine.n_obs, 900, replace=False))].copy()
    scae.tl.fit(a, random_state=0, **FAST)
    return a


def test_fit_writes_cluster_stats(small_fitted, tmp_path):
    a = small_fitted
    info = a.uns["scae"]
    means, medians, sizes = info["cluster_means"], info["cluster_medians"], info["cluster_sizes"]
    k = a.obs["scae_cluster"].cat.categories.size
    assert means.shape == medians.shape == (k, a.n_vars) and sizes.shape == (k,)
    assert list(means.columns) == list(a.var_names) and list(means.index) == [str(i) for i in range(k)]
    assert sizes.sum() == a.n_obs and np.all(np.diff(sizes) <= 0)  # cluster 0 is the largest
    expect = pd.DataFrame(a.X, columns=a.var_names).groupby(a.obs["scae_cluster"].to_numpy(), observed=True)
    np.testing.assert_allclose(means.loc["0"], expect.mean().loc["0"], rtol=1e-5)
    last = str(k - 1)
    np.testing.assert_allclose(medians.loc[last], expect.median().loc[last], rtol=1e-5)
    path = tmp_path / "a.h5ad"
    a.write_h5ad(path)
    b = ad.read_h5ad(path)
    pd.testing.assert_frame_equal(b.uns["scae"]["cluster_medians"], medians)
    np.testing.assert_array_equal(b.uns["scae"]["cluster_sizes"], sizes)


def test_recluster_to_n_clusters_and_back(small_fitted, guard):
    a = small_fitted.copy()
    before = a.obs["scae_cluster"].copy()
    b = scae.tl.cluster(a, n_clusters=3, copy=True)
    assert b.obs["scae_cluster"].cat.categories.size == 3 and b.uns["scae"]["n_clusters"] == 3
    assert b.uns["scae"]["cluster_means"].shape == (3, a.n_vars)
    assert a.obs["scae_cluster"].equals(before)  # copy=True leaves the input alone
    scae.tl.cluster(a)  # the defaults reproduce what fit wrote
    assert np.array_equal(a.obs["scae_cluster"].to_numpy(), before.to_numpy())
    s = cluster_scores(a.obs["phenograph_cluster"], b.obs["scae_cluster"])
    assert s["ari"] > 0.4, s  # 80 training steps only; measured 0.53
    check = guard(a)
    with pytest.raises(ValueError, match="n_clusters"):
        scae.tl.cluster(a, n_clusters=0)
    bare = a.copy()
    del bare.layers["scae_imputed"]
    with pytest.raises(KeyError, match="impute=True"):
        scae.tl.cluster(bare)
    with pytest.raises(KeyError, match="run `scae.tl.fit"):
        scae.tl.cluster(ad.AnnData(a.X.copy()))
    check()


def test_more_clusters_than_codes_warn(small_fitted, caplog):
    """``n_clusters`` above the number of code clusters cannot be met (merging does not split): the clusters
    stay the code clusters and a warning says how many were made and how to get more; a reachable count is quiet."""
    a = small_fitted.copy()
    with caplog.at_level("WARNING", logger="scae"):
        scae.tl.cluster(a, n_clusters=3)
    assert "n_clusters=" not in caplog.text
    with caplog.at_level("WARNING", logger="scae"):
        scae.tl.cluster(a, n_clusters=500)
    k = a.obs["scae_cluster"].cat.categories.size
    assert k < 500 and a.uns["scae"]["n_clusters"] == k
    assert f"n_clusters=500, but the codes form only {k} clusters, which merging cannot split: {k} made" in caplog.text
    assert "lower `min_cluster_size` or `threshold`" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="scae"):
        assert scae.cluster.merge_clusters(np.repeat([0, 1], 50), np.zeros((100, 2)), n_clusters=5).max() == 1
    assert "n_clusters=5, but the codes form only 2 clusters" in caplog.text


def test_cluster_stats_other_grouping_and_errors(small, guard):
    check = guard(small)
    with pytest.raises(KeyError, match="run `scae.tl.fit"):
        scae.tl.cluster_stats(small)
    with pytest.raises(KeyError, match="pass an existing obs column"):
        scae.tl.cluster_stats(small, groupby="nope")
    with pytest.raises(KeyError, match="scae.tl.fit"):
        scae.pl.clusters(small, show=False)
    check()
    scae.tl.cluster_stats(small, groupby="phenograph_cluster")
    assert list(small.uns["scae"]["cluster_means"].index) == ["cluster1", "cluster2", "cluster3"]


def test_pl_clusters_and_embedding(small_fitted):
    ax = scae.pl.clusters(small_fitted, show=False)
    k = small_fitted.uns["scae"]["cluster_means"].shape[0]
    assert len(ax.get_yticklabels()) == k and len(ax.get_xticklabels()) == small_fitted.n_vars
    ax = scae.pl.clusters(small_fitted, stat="mean", standard_scale=None, show=False)
    assert ax.images[0].get_array().max() == pytest.approx(small_fitted.uns["scae"]["cluster_means"].to_numpy().max())
    with pytest.raises(ValueError, match="stat"):
        scae.pl.clusters(small_fitted, stat="mode", show=False)
    axes = scae.pl.embedding(small_fitted, color=["scae_cluster", "phenograph_cluster"], show=False)
    assert len(axes) == 2
    matplotlib.pyplot.close("all")


def test_granularity_table_equals_recuts_and_plot(small_fitted, guard):
    """Each row of tl.granularity is what tl.cluster gives at that threshold; nothing is written."""
    a = small_fitted
    check = guard(a)
    thresholds = [8.0, 1.5, 2.3, 3.0, 4.0]  # any order: the table is sorted
    table = scae.tl.granularity(a, thresholds=thresholds)
    assert list(table.index) == sorted(thresholds) and table.index.name == "merge_threshold"
    assert list(table.columns) == ["n_clusters", "n_large", "largest_share"]
    for t, row in table.iterrows():
        labels = scae.tl.cluster(a, merge_threshold=t, copy=True).obs["scae_cluster"]
        sizes = labels.value_counts(normalize=True)
        assert row["n_clusters"] == labels.nunique() and row["n_large"] == int((sizes >= 0.01).sum()), t
        assert row["largest_share"] == pytest.approx(sizes.max())
    assert table.loc[2.3, "n_clusters"] == a.obs["scae_cluster"].nunique()  # the fit's own threshold
    assert table.loc[8.0, "n_clusters"] < table.loc[2.3, "n_clusters"]  # larger thresholds coarsen cytometry too
    check()
    for bad in ([], [0.0, 2.0], [np.nan], "abc", [-1]):
        with pytest.raises(ValueError, match="thresholds"):
            scae.tl.granularity(a, thresholds=bad)
    for bad in (1.5, "0.1", -0.1):
        with pytest.raises(ValueError, match="min_share"):
            scae.tl.granularity(a, min_share=bad)
    with pytest.raises(KeyError, match="run `scae.tl.fit"):
        scae.tl.granularity(ad.AnnData(a.X.copy()))
    ax = scae.pl.granularity(a, thresholds=thresholds, show=False)
    lines = ax.get_lines()
    assert list(lines[0].get_ydata()) == list(table["n_clusters"])
    assert lines[-1].get_xdata()[0] == 2.3  # the threshold in use, marked
    matplotlib.pyplot.close("all")
    check()


def test_names_with_slashes_survive_write_h5ad(small, tmp_path):
    """anndata 0.13 refuses '/' in uns keys: marker and block names with '/' must not make the result unwritable."""
    a = small.copy()
    a.var_names = [f"{name}/{i}" for i, name in enumerate(a.var_names)]
    a.var["block"] = np.where(np.arange(a.n_vars) < a.n_vars // 2, "panel/a", "panel/b")
    a.obs["donor"] = np.repeat(["d/1", "d/2"], [a.n_obs // 2, a.n_obs - a.n_obs // 2])
    scae.tl.fit(a, block_key="block", batch_key="donor", max_epochs=2, hidden=(32, 16, 8), progress=False)
    info = a.uns["scae"]
    assert list(info["cluster_means"].columns) == [n.replace("/", "\u2215") for n in a.var_names]
    assert info["blocks"] == {"panel\u2215a": "mse", "panel\u2215b": "mse"}
    assert {"reconstruction_panel\u2215a", "reconstruction_panel\u2215b"} <= set(info["history"])
    a.write_h5ad(tmp_path / "slashes.h5ad")
    b = ad.read_h5ad(tmp_path / "slashes.h5ad")
    assert list(b.var_names) == list(a.var_names)  # var names keep their '/'
    assert list(b.uns["scae"]["batch_categories"]) == ["d/1", "d/2"]  # values keep theirs too
    np.testing.assert_allclose(b.uns["scae"]["cluster_means"].to_numpy(), info["cluster_means"].to_numpy())
    scae.pl.clusters(b, show=False)


@pytest.fixture(scope="module")
def counts(data_dir):
    """300 real CellBench singlets × their 300 most expressed genes: raw counts (CSR)."""
    a = scae.datasets.cellbench(data_dir)
    a = a[a.obs["demuxlet_cls"].astype(str) != "DBL"]
    a = a[np.sort(np.random.default_rng(0).choice(a.n_obs, 300, replace=False))]
    top = np.argsort(-np.asarray(a.X.sum(0)).ravel())[:300]
    return a[:, np.sort(top)].copy()


@pytest.mark.parametrize(
    ("likelihood", "extra"),
    [("mse", {}), ("nb", {}), ("zinb", {}), ("nb", {"imputed_units": "normalized"}), ("zinb", {"batch_key": "batch"})],
)
def test_recluster_reproduces_fit_for_every_likelihood(counts, likelihood, extra):
    a = counts.copy()
    if likelihood == "mse":  # continuous input: log1p of counts per 10,000
        sc_norm = np.asarray(a.X.sum(1)).ravel()
        a.X = np.log1p(a.X.toarray() / sc_norm[:, None] * 1e4).astype(np.float32)
    kw = {"hidden": (64, 32, 16), "max_epochs": 3, "random_state": 0, "progress": False, **extra}
    for cut in ({"merge_threshold": None}, {"n_clusters": 3}):
        scae.tl.fit(a, likelihood=likelihood, min_cluster_size=5, **cut, **kw)
        fitted = a.obs["scae_cluster"].to_numpy()
        n_codes = len(np.unique(scae.cluster.hash_codes(scae.cluster.binarize(a.obsm["X_scae_codes"]))))
        assert n_codes > len(set(fitted)) > 1  # rare codes were absorbed (and merged): the features matter
        again = scae.tl.cluster(a, min_cluster_size=5, copy=True, **cut)
        np.testing.assert_array_equal(again.obs["scae_cluster"].to_numpy(), fitted)
