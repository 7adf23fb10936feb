"""Every mode × every option on one small real dataset: the same contract, the same uns schema, the same clusters.

Modes: in memory, backed (``out_path``), torchrun with 2 gloo processes (``scae fit`` under torchrun), and
``tl.transform`` of the saved in-memory model. Options: mse, nb, batch_key, gene_sets, n_clusters. Data:
CellBench (2 platforms = batches), 300 most variable genes, log-normalized (raw counts for ``nb``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import scae
from scae import _contract
from scae._accumulator import ClusterAccumulator
from scae._pipeline import stream_outputs

BASE = {"hidden": (32, 16, 8), "max_epochs": 40, "random_state": 0, "progress": False}
OPTIONS = {
    "mse": {},
    "nb": {"likelihood": "nb"},
    "batch_key": {"batch_key": "batch"},
    "gene_sets": {"gene_sets": "sets", "min_genes": 5},
    "n_clusters": {"n_clusters": 3},
}
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


@pytest.fixture(scope="module")
def cellbench_small(data_dir):
    rna = scae.datasets.cellbench(data_dir)
    rna = rna[rna.obs["demuxlet_cls"] == "SNG"]
    counts = rna.X.toarray() if sp.issparse(rna.X) else np.asarray(rna.X)
    lognorm = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    keep = np.sort(np.argsort(-lognorm.var(0))[:300])
    obs = rna.obs[["batch", "cell_line_demuxlet"]].copy()
    var = rna.var.iloc[keep][[]].copy()
    return {
        "mse": ad.AnnData(lognorm[:, keep].astype(np.float32), obs=obs, var=var),
        "nb": ad.AnnData(counts[:, keep].astype(np.float32), obs=obs.copy(), var=var.copy()),
    }


def _gene_sets(adata) -> dict[str, list[str]]:
    """Four sets of the dataset's own genes (Ensembl ids), 20 each."""
    names = list(adata.var_names)
    return {f"set{i}": names[i * 20 : (i + 1) * 20] for i in range(4)}


def _kwargs(option: str, adata) -> dict:
    kw = {**BASE, **OPTIONS[option]}
    if kw.get("gene_sets") == "sets":
        kw["gene_sets"] = _gene_sets(adata)
    return kw


def _torchrun(src, out, kw: dict, tmp_path) -> ad.AnnData:
    lines = []
    for k, v in kw.items():
        if k == "progress":
            continue
        if k == "gene_sets":
            lines.append("[gene_sets]")
            lines += [f"{name} = {list(genes)!r}".replace("'", '"') for name, genes in v.items()]
            continue
        lines.insert(0, f"{k} = {list(v) if isinstance(v, tuple) else v!r}".replace("'", '"'))
    cfg = tmp_path / "params.toml"
    cfg.write_text("\n".join(lines) + "\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "scae", "fit", str(src), str(out),
           "--config", str(cfg), "--quiet"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return ad.read_h5ad(out)


def _streamed_labels(model_dir, data, src, kw) -> np.ndarray:
    """Labels of the streamed pipeline (backed row source, chunked passes) with a saved model's network."""
    model = scae.SAUCIE.load(model_dir, adata=data)
    backed = ad.read_h5ad(src, backed="r")
    model.X, model._source = backed.X, None  # the same network, rows read from the file
    model.row_source().block_rows = 128  # several chunks per pass
    scale = scae.cluster.common_scale(model.net.feature_std.numpy()) if model.plain else 1.0
    cut = {k: kw[k] for k in ("n_clusters", "merge_threshold", "min_cluster_size") if k in kw}
    acc = ClusterAccumulator(model.n_cells, merge_scale=scale, **cut)
    labels = stream_outputs(model, acc)[2]
    backed.file.close()
    return labels


def _contract_keys(a: ad.AnnData) -> dict:
    return {
        "obsm": sorted(k for k in a.obsm if k.startswith("X_scae")),
        "obs": sorted(k for k in a.obs if k.startswith("scae")),
        "varm": sorted(a.varm),
        "uns": sorted(a.uns["scae"]),
    }


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="no torchrun")
@pytest.mark.parametrize("option", list(OPTIONS))
def test_every_mode_same_contract_and_clusters(cellbench_small, option, tmp_path):
    data = cellbench_small["nb" if option == "nb" else "mse"]
    kw = _kwargs(option, data)
    src = tmp_path / "in.h5ad"
    data.write_h5ad(src)
    memory = data.copy()
    scae.tl.fit(memory, save_model=tmp_path / "model", **kw)
    backed = ad.read_h5ad(src, backed="r")
    scae.tl.fit(backed, out_path=str(tmp_path / "backed.h5ad"), **kw)
    backed_file = ad.read_h5ad(tmp_path / "backed.h5ad")
    backed.file.close()
    mapped = data.copy()
    scae.tl.transform(scae.SAUCIE.load(tmp_path / "model"), mapped, progress=False)
    torchrun = _torchrun(src, tmp_path / "torchrun.h5ad", kw, tmp_path)
    results = {"memory": memory, "backed": backed_file, "torchrun": torchrun, "transform": mapped}
    # the same contract keys and the same uns schema on every path
    expected = _contract_keys(memory)
    assert set(expected["uns"]) >= set(_contract.UNS_KEYS)
    for mode, a in results.items():
        assert _contract_keys(a) == expected, (mode, _contract_keys(a), expected)
        assert a.obsm["X_scae"].shape == (data.n_obs, 2) and np.isfinite(a.obsm["X_scae"]).all(), mode
        assert a.obs["scae_cluster"].notna().all(), mode
        layers = {k for k in a.layers if isinstance(k, str) and k.startswith("scae")}  # anndata 0.13: layers[None] = X
        assert layers and layers <= {"scae_imputed", "scae_corrected"}, (mode, layers)
    modes = {"memory": "memory", "backed": "backed", "torchrun": "distributed", "transform": "transform"}
    assert {m: results[m].uns["scae"]["mode"] for m in modes} == modes
    assert torchrun.uns["scae"]["world_size"] == 2
    if option == "n_clusters":
        fits = ("memory", "backed", "torchrun")
        assert {m: results[m].obs["scae_cluster"].nunique() for m in fits} == dict.fromkeys(fits, 3)
    if option == "gene_sets":
        assert all(a.obsm["X_scae_genesets"].shape == (data.n_obs, 4) for a in results.values())
    # identical clusters where the computation is the same: the streamed clustering of backed fits and torchrun,
    # run with the in-memory fit's network over the backed file, gives the in-memory labels (every likelihood);
    # the transform of the training cells reproduces them; tl.cluster re-cuts each fit's stored outputs exactly
    labels = memory.obs["scae_cluster"].to_numpy().astype(int)
    np.testing.assert_array_equal(_streamed_labels(tmp_path / "model", data, src, kw), labels)
    np.testing.assert_array_equal(mapped.obs["scae_cluster"].to_numpy().astype(int), labels)
    cut = {k: OPTIONS[option].get(k) for k in ("n_clusters",) if k in OPTIONS[option]}
    for mode in ("memory", "backed", "torchrun"):
        a = results[mode]
        if a.X is None:  # an out_path file holds the outputs, not the input
            a = a.copy()
            a.X = data.X.copy()
        recut = scae.tl.cluster(a, copy=True, **cut)
        np.testing.assert_array_equal(recut.obs["scae_cluster"].to_numpy(), a.obs["scae_cluster"].to_numpy())


@pytest.mark.parametrize("likelihood", ["mse", "nb", "zinb", "bernoulli"])
def test_streamed_and_recut_clusters_equal_in_memory_for_every_likelihood(cellbench_small, likelihood, tmp_path):
    """The same network gives the same clusters in memory, streamed from a backed file, and re-cut by tl.cluster."""
    data = cellbench_small["mse" if likelihood == "mse" else "nb"].copy()
    if likelihood == "bernoulli":
        data.X = (data.X > 0).astype(np.float32)
    # rare codes absorbed and code clusters merged into 3 (count models need ~300 steps to use several codes)
    kw = {**BASE, "max_epochs": 150, "likelihood": likelihood, "n_clusters": 3, "min_cluster_size": 3}
    src = tmp_path / "in.h5ad"
    data.write_h5ad(src)
    memory = data.copy()
    scae.tl.fit(memory, save_model=tmp_path / "model", **kw)
    labels = memory.obs["scae_cluster"].to_numpy().astype(int)
    assert labels.max() >= 1, "a single cluster cannot tell the paths apart"
    np.testing.assert_array_equal(_streamed_labels(tmp_path / "model", data, src, kw), labels)
    recut = scae.tl.cluster(memory, copy=True, n_clusters=3, min_cluster_size=3)
    np.testing.assert_array_equal(recut.obs["scae_cluster"].to_numpy().astype(int), labels)
