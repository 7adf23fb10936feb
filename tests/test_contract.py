"""One AnnData contract on every path: the same uns schema, and outputs that appear whole or not at all."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

import scae
from scae import _contract, _fit, distributed

KW = {"hidden": (16, 8), "max_epochs": 1, "batch_size": 256, "random_state": 0, "progress": False}


@pytest.fixture
def cells(levine, tmp_path):
    a = levine[:1500].copy()
    path = tmp_path / "in.h5ad"
    a.write_h5ad(path)
    return a, path


def test_uns_schema_is_the_same_on_every_path(cells, tmp_path):
    a, path = cells
    memory = a.copy()
    scae.tl.fit(memory, save_model=tmp_path / "model", **KW)
    backed = ad.read_h5ad(path, backed="r")
    scae.tl.fit(backed, out_path=str(tmp_path / "out.h5ad"), **KW)
    mapped = a[:400].copy()
    scae.tl.transform(scae.SAUCIE.load(tmp_path / "model"), mapped)
    argv = [str(path), str(tmp_path / "dist.h5ad"), "--max-epochs", "1", "--hidden", "16", "8", "--seed", "0"]
    distributed.run(distributed.build_parser().parse_args(argv))
    records = {
        "memory": memory.uns["scae"],
        "backed": backed.uns["scae"],
        "transform": mapped.uns["scae"],
        "distributed": ad.read_h5ad(tmp_path / "dist.h5ad").uns["scae"],
    }
    for mode, uns in records.items():
        assert set(uns) == set(_contract.UNS_KEYS), (mode, sorted(set(uns) ^ set(_contract.UNS_KEYS)))
        # the torchrun entry point run alone is a backed single-process fit
        assert uns["mode"] == {"distributed": "backed"}.get(mode, mode)
        assert uns["seed"] == 0 and {"torch", "anndata", "scae"} <= set(uns["versions"])
        assert uns["cluster_sizes"].sum() == (400 if mode == "transform" else a.n_obs), mode
        assert uns["cluster_means"].shape == (len(uns["cluster_sizes"]), a.n_vars)
        assert uns["runtime"]["total_s"] > 0
    assert records["backed"]["backed"] and not records["memory"]["backed"] and records["transform"]["mapped"]
    assert records["transform"]["n_by_code"] > 0 and records["memory"]["n_by_code"] == -1
    # backed cluster statistics (read by row chunks) are those of the same labels in memory
    labels = backed.obs["scae_cluster"]
    by_cluster = a.to_df().groupby(labels.to_numpy(), observed=True)
    order = list(labels.cat.categories)
    np.testing.assert_allclose(records["backed"]["cluster_means"].to_numpy(), by_cluster.mean().loc[order], rtol=1e-5)
    np.testing.assert_allclose(records["backed"]["cluster_medians"].to_numpy(), by_cluster.median().loc[order])
    backed.file.close()
    for mode, written in (("memory", memory), ("transform", mapped)):  # every key survives writing
        written.write_h5ad(tmp_path / f"{mode}.h5ad")
        assert set(ad.read_h5ad(tmp_path / f"{mode}.h5ad").uns["scae"]) == set(_contract.UNS_KEYS)


def _failing_stream(monkeypatch):
    real = _fit.stream_outputs

    def stream_then_fail(*args, **kwargs):
        real(*args, **kwargs)  # codes and imputed values have been written to the sink
        raise RuntimeError("disk full")

    monkeypatch.setattr(_fit, "stream_outputs", stream_then_fail)


def test_backed_fit_failing_after_training_leaves_no_out_path(cells, tmp_path, monkeypatch, guard):
    _, path = cells
    out = tmp_path / "out.h5ad"
    backed = ad.read_h5ad(path, backed="r")
    _failing_stream(monkeypatch)
    with pytest.raises(RuntimeError, match="disk full"):
        scae.tl.fit(backed, out_path=str(out), **KW)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5ad"]  # no out.h5ad, no temporary file
    assert "scae" not in backed.uns and "X_scae" not in backed.obsm and "scae_cluster" not in backed.obs
    out.write_bytes(b"an earlier result")
    with pytest.raises(RuntimeError, match="disk full"):
        scae.tl.fit(backed, out_path=str(out), **KW)
    assert out.read_bytes() == b"an earlier result"  # an earlier output stays as it was
    monkeypatch.undo()
    scae.tl.fit(backed, out_path=str(out), **KW)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5ad", "out.h5ad"]
    assert ad.read_h5ad(out).obsm["X_scae_codes"].shape == (1500, 16)
    backed.file.close()
