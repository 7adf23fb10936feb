"""Running again under the same ``key_added``, and re-cutting what a transform wrote (real CyTOF and TCGA data).

A second fit or transform replaces every output of the first (a stale corrected layer was re-cut instead of the
new imputed one); a transform writes the gene-set weights in the AnnData's gene order and takes extra genes;
``tl.cluster`` re-cuts a transform's outputs by the model's layer; ``save_model`` is checked before training.
"""

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scae
import scae._pipeline

FIT = {"hidden": (64, 32, 16), "max_epochs": 4, "progress": False, "random_state": 0}


@pytest.fixture(scope="module")
def cyto():
    a = scae.datasets.cytonorm()
    return a[np.sort(np.random.default_rng(0).choice(a.n_obs, 1500, replace=False))].copy()


def test_refit_removes_outputs_it_does_not_write(cyto):
    a = cyto.copy()
    scae.tl.fit(a, batch_key="batch", **FIT)
    assert {"scae_imputed", "scae_corrected"} <= set(a.layers)
    scae.tl.fit(a, **FIT)  # no batches: no corrected layer
    assert "scae_corrected" not in a.layers and "scae_imputed" in a.layers
    fitted = a.obs["scae_cluster"].to_numpy().copy()
    scae.tl.cluster(a)  # re-cut with the fit's settings: the fit's own clusters, not the old corrected layer's
    np.testing.assert_array_equal(a.obs["scae_cluster"].to_numpy(), fitted)
    scae.tl.fit(a, impute=False, **FIT)
    assert "scae_imputed" not in a.layers and "compensated" in a.layers  # the user's own layer stays
    with pytest.raises(KeyError, match=r"layers\['scae_imputed'\] not found"):
        scae.tl.cluster(a)
    scae.tl.fit(a, key_added="other", batch_key="batch", **FIT)  # another prefix is left alone
    assert "X_scae_codes" in a.obsm and "other_corrected" in a.layers and "scae_imputed" not in a.layers
    a.uns["other_rank_gene_sets"] = {"names": ["a set of the earlier fit"]}
    scae.tl.fit(a, key_added="other", layer="other_imputed", impute=False, **FIT)  # on the earlier denoised values
    assert "other_imputed" in a.layers and "other_corrected" not in a.layers and "other_rank_gene_sets" not in a.uns


@pytest.fixture(scope="module")
def gene_set_model(tmp_path_factory):
    adata = scae.datasets.tcga_coread()
    path = tmp_path_factory.mktemp("gs") / "model"
    with warnings.catch_warnings(action="ignore"):  # the hallmark sets with < 5 of the 500 genes are dropped
        scae.tl.fit(adata, gene_sets=scae.datasets.hallmark_gmt(), save_model=path, **FIT)
    return adata, scae.SAUCIE.load(path)


def test_transform_gene_set_weights_follow_the_adata_genes(gene_set_model, guard):
    adata, model = gene_set_model
    weights = adata.varm["scae_gene_set_weights"]
    assert weights.shape == (500, 36) and np.count_nonzero(weights) > 0
    perm = np.random.default_rng(0).permutation(adata.n_vars)
    shuffled = scae.tl.transform(model, adata[:, perm].copy(), copy=True)
    np.testing.assert_array_equal(shuffled.varm["scae_gene_set_weights"], weights[perm])
    np.testing.assert_allclose(shuffled.obsm["X_scae_genesets"], adata.obsm["X_scae_genesets"], atol=1e-5)
    extra = pd.DataFrame(index=["EXTRA1", "EXTRA2", "EXTRA3"])
    wider = ad.concat([adata, ad.AnnData(np.ones((adata.n_obs, 3), np.float32), obs=adata.obs[[]], var=extra)], axis=1)
    check = guard(wider)
    out = scae.tl.transform(model, wider, copy=True)
    check()
    np.testing.assert_array_equal(out.varm["scae_gene_set_weights"][:500], weights)
    assert (out.varm["scae_gene_set_weights"][500:] == 0).all()  # genes the model lacks are in no set
    assert np.isnan(out.layers["scae_imputed"][:, 500:]).all()
    scae.tl.cluster(out)  # re-cut on the model's 500 genes (the extra ones are NaN in the imputed layer)
    np.testing.assert_array_equal(out.obs["scae_cluster"].to_numpy(), adata.obs["scae_cluster"].to_numpy())


def test_recut_of_a_transform_uses_the_model_layer(tmp_path):
    a = scae.datasets.levine3k()
    a.layers["arcsinh"] = a.X.copy()
    a.X = a.layers["raw"].copy()  # raw intensities in X: the model was trained on the layer
    with warnings.catch_warnings(action="ignore"):  # ("values up to ...: scae expects transformed data")
        scae.tl.fit(a, layer="arcsinh", save_model=tmp_path / "m", **FIT)
    mapped = scae.tl.transform(tmp_path / "m", a, copy=True)
    assert mapped.uns["scae"]["params"]["layer"] == "arcsinh"
    assert mapped.uns["scae"]["params"]["imputed_units"] == "counts"
    scae.tl.cluster(mapped, merge_threshold=a.uns["scae"]["params"]["merge_threshold"])
    np.testing.assert_array_equal(mapped.obs["scae_cluster"].to_numpy(), a.obs["scae_cluster"].to_numpy())
    assert mapped.uns["scae"]["cluster_stats_params"]["layer"] == "arcsinh"
    means = mapped.uns["scae"]["cluster_means"].to_numpy()
    assert np.abs(means).max() < 10  # arcsinh values, not raw intensities (up to thousands)
    mapped.X = None  # the matrix in X is not needed to re-cut
    scae.tl.cluster(mapped, merge_threshold=a.uns["scae"]["params"]["merge_threshold"])
    np.testing.assert_array_equal(mapped.obs["scae_cluster"].to_numpy(), a.obs["scae_cluster"].to_numpy())


def test_save_model_checked_before_training(cyto, tmp_path, guard, monkeypatch):
    (tmp_path / "afile").write_text("")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("keep")
    a = cyto.copy()
    check = guard(a)

    def train_model(*args, **kwargs):
        raise AssertionError("trained before `save_model` was checked")

    monkeypatch.setattr(scae._pipeline, "train_model", train_model)
    with pytest.raises(ValueError, match=r"`save_model`: .*afile.* cannot be made: .*afile is a file"):
        scae.tl.fit(a, save_model=tmp_path / "afile" / "sub", **FIT)
    with pytest.raises(ValueError, match=r"`save_model`: .*notes exists and is not a scae model folder"):
        scae.tl.fit(a, save_model=tmp_path / "notes", **FIT)
    with pytest.raises(ValueError, match=r"`save_model`: .*afile exists and is not a folder"):
        scae.tl.fit(a, save_model=tmp_path / "afile", **FIT)
    check()
    assert (tmp_path / "notes" / "a.txt").read_text() == "keep"


def test_transform_warns_of_batches_too_small_to_impute(cyto, tmp_path):
    ref = cyto[cyto.obs["batch"] != "3"].copy()
    scae.tl.fit(ref, batch_key="batch", save_model=tmp_path / "m", **FIT)
    with pytest.warns(UserWarning, match=r"1 batch\(es\) of the new cells hold fewer than 30 cells \(smallest: 5\)"):
        scae.tl.transform(tmp_path / "m", cyto[cyto.obs["batch"] == "3"][:5].copy())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scae.tl.transform(tmp_path / "m", cyto[cyto.obs["batch"] == "3"][:40].copy())
    assert not [w for w in caught if "fewer than 30 cells" in str(w.message)]


def test_transform_checks_values_as_the_fit_does(tmp_path, caplog, guard):
    a = scae.datasets.levine3k()[:600].copy()
    scae.tl.fit(a, save_model=tmp_path / "m", **FIT)
    raw = a.copy()
    raw.X = raw.layers["raw"].copy()  # intensities without the arcsinh the model was trained on
    with caplog.at_level("WARNING", logger="scae"):
        scae.tl.transform(tmp_path / "m", raw)
    assert "adata.X has values up to" in caplog.text and "scae expects transformed data" in caplog.text
    counts = scae.datasets.cellbench()[:200, :300].copy()
    scae.tl.fit(counts, likelihood="nb", save_model=tmp_path / "nb", **FIT)
    halved = counts.copy()
    halved.X = halved.X.astype(np.float32) / 2  # no longer counts
    check = guard(halved)
    with pytest.raises(ValueError, match=r"non-integer values, but a count likelihood \('nb'/'zinb'\) needs raw"):
        scae.tl.transform(tmp_path / "nb", halved)
    check()
