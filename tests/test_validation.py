"""Bad input gets a ValueError naming the problem, and the AnnData is left unchanged."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scae


def _with(adata, fn):
    a = adata.copy()
    fn(a)
    return a


def _set_donor(values):
    def fn(a):
        a.obs["donor"] = values(a)

    return fn


def _set_x(value):
    def fn(a):
        X = np.array(a.X, copy=True)
        X[5, 2] = value
        a.X = X

    return fn


CASES = {
    "nan": (_set_x(np.nan), {}, "1 NaN"),
    "inf": (_set_x(np.inf), {}, "1 infinite"),
    "unknown_layer": (lambda a: None, {"layer": "counts"}, "layer 'counts' not found"),
    "unknown_batch_key": (lambda a: None, {"batch_key": "donor"}, "batch_key 'donor' not found"),
    "nan_in_batch": (
        _set_donor(lambda a: pd.Series(["a", None] * (a.n_obs // 2), index=a.obs_names)),
        {"batch_key": "donor"},
        "1 missing values|300 missing values",
    ),
    "unknown_reference": (
        _set_donor(lambda a: np.repeat(["a", "b"], a.n_obs // 2)),
        {"batch_key": "donor", "reference_batch": "c"},
        "reference_batch 'c' is not a batch",
    ),
    "tiny_batch": (
        _set_donor(lambda a: ["solo"] + ["a"] * (a.n_obs - 1)),
        {"batch_key": "donor"},
        "fewer than 16 cells, the fewest a default minibatch draws from each batch .*'solo' \\(1 cells\\)",
    ),
    "per_cell_batch_values": (  # a continuous score named as batch_key: 600 "batches" of one cell each
        _set_donor(lambda a: np.random.default_rng(0).normal(size=a.n_obs)),
        {"batch_key": "donor"},
        r"adata.obs\['donor'\] has 600 distinct values for 600 cells.*\(1 cells\) and 595 more\); batch_key names "
        "a column of batches",
    ),
    "negative_lambda": (lambda a: None, {"lambda_c": -1.0}, "`lambda_c` must be a finite number >= 0"),
    "duplicate_var_names": (
        lambda a: setattr(a, "var_names", [a.var_names[0], *a.var_names[:-1]]),
        {},
        r"adata.var_names has 1 duplicated name \(e.g. \['.+'\]\); .*var_names_make_unique",
    ),
    "beyond_float32": (  # finite in float64, infinite once on the device: refused instead of a NaN loss
        lambda a: setattr(a, "X", np.where(np.arange(a.n_vars) == 1, -4e38, np.asarray(a.X, dtype=np.float64))),
        {},
        r"adata.X holds values up to 4e\+38 in magnitude, beyond float32 \(3.4e\+38\).*transform the data first",
    ),
    "nan_sparse": (
        lambda a: setattr(a, "X", sp.csr_matrix(np.where(np.arange(a.n_vars) == 0, np.nan, a.X))),
        {},
        "NaN",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_raises_and_leaves_adata_unchanged(small, case, guard):
    prepare, kwargs, message = CASES[case]
    adata = _with(small, prepare)
    check = guard(adata)
    with pytest.raises(ValueError, match=message):
        scae.tl.fit(adata, max_epochs=1, progress=False, **kwargs)
    check()


def test_empty_adata():
    adata = ad.AnnData(np.zeros((0, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="empty"):
        scae.tl.fit(adata, progress=False)
    with pytest.raises(ValueError, match="empty"):
        scae.tl.fit(ad.AnnData(np.zeros((5, 0), dtype=np.float32)), progress=False)


def test_non_numeric_data(small):
    adata = ad.AnnData(np.array([["a", "b"], ["c", "d"]], dtype=object))
    snap_obs = adata.obs.copy()
    with pytest.raises(ValueError, match="non-numeric dtype object"):
        scae.tl.fit(adata, progress=False)
    assert adata.obs.equals(snap_obs) and not adata.obsm


def test_not_anndata():
    with pytest.raises(TypeError, match="expected an AnnData"):
        scae.tl.fit(np.zeros((4, 3)), progress=False)


def test_untransformed_input_warns(small, caplog):
    adata = small.copy()
    adata.X = adata.layers["raw"]
    with caplog.at_level("WARNING", logger="scae"):
        scae.SAUCIE(adata)
    assert "expects transformed data" in caplog.text


def test_single_batch_warns(small, caplog):
    a = small.copy()
    a.obs["run"] = "r1"
    with caplog.at_level("WARNING", logger="scae"):
        scae.SAUCIE(a, batch_key="run")
    assert "adata.obs['run'] holds a single batch ('r1'): there is no batch effect to correct" in caplog.text
    caplog.clear()
    a.obs["run"] = np.repeat(["r1", "r2"], a.n_obs // 2)
    with caplog.at_level("WARNING", logger="scae"):
        scae.SAUCIE(a, batch_key="run")
    assert "single batch" not in caplog.text


def test_raw_counts_below_the_large_value_bar_warn(data_dir, caplog, tmp_path):
    """Whole numbers up to 100 (CellBench counts of the genes that never exceed 100) are named as raw counts:
    in memory, sparse, backed and in one block of a mixed model; 0/1/2 dosages and their log1p are not."""
    a = scae.datasets.cellbench(data_dir)
    X = a.X.toarray() if sp.issparse(a.X) else np.asarray(a.X)
    peak = X.max(0)
    keep = (peak > 10) & (peak <= 100)
    counts = ad.AnnData(X[:, keep].astype(np.float32), obs=a.obs[[]].copy())
    top = int(X[:, keep].max())
    expected = f"holds whole numbers from 0 to {top}, like raw counts"
    counts.write_h5ad(tmp_path / "counts.h5ad")
    for matrix in (counts.X, sp.csr_matrix(counts.X)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="scae"):
            scae.SAUCIE(ad.AnnData(matrix), hidden=(8, 4, 2))
        assert f"adata.X {expected}" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="scae"):
        backed = ad.read_h5ad(tmp_path / "counts.h5ad", backed="r")
        scae.SAUCIE(backed, hidden=(8, 4, 2))
        backed.file.close()
    assert f"adata.X {expected}" in caplog.text
    mixed = counts.copy()
    mixed.var["kind"] = np.where(np.arange(mixed.n_vars) < 10, "dosage", "rna")
    mixed.X[:, :10] = np.minimum(mixed.X[:, :10], 2)
    mixed.write_h5ad(tmp_path / "mixed.h5ad")
    for backed in (None, "r"):  # the in-memory checks, and the chunked scan of a backed file
        caplog.clear()
        with caplog.at_level("WARNING", logger="scae"):
            m = mixed if backed is None else ad.read_h5ad(tmp_path / "mixed.h5ad", backed=backed)
            scae.SAUCIE(m, hidden=(8, 4, 2), block_key="kind", likelihood={"rna": "mse", "dosage": "mse"})
        assert f"block 'rna' of adata.X {expected}" in caplog.text and "'dosage'" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="scae"):
        scae.SAUCIE(ad.AnnData(np.minimum(counts.X, 2)), hidden=(8, 4, 2))  # dosages 0/1/2
        scae.SAUCIE(ad.AnnData(np.log1p(counts.X)), hidden=(8, 4, 2))
        scae.SAUCIE(counts, hidden=(8, 4, 2), likelihood="nb")
    assert "raw counts" not in caplog.text


def test_transformed_inputs_do_not_warn(data_dir, pbmc68k, caplog):
    """log2 bulk expression (TCGA CRC, up to 28.6) and scaled RNA (pbmc68k_reduced X, up to 28.4) are transformed."""
    with caplog.at_level("WARNING", logger="scae"):
        scae.SAUCIE(scae.datasets.tcga_coread(data_dir))
        scae.SAUCIE(pbmc68k)
    assert "expects transformed data" not in caplog.text


def test_unknown_device(small):
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        scae.tl.fit(small, device="gpu0", progress=False)


def test_outputs_larger_than_memory_fail_before_training(small, guard, monkeypatch):
    # 600 cells x (256 codes + 2 + 2 x 33 features) x 4 bytes = 0.78 MB of outputs; pretend 0.5 MB is left
    monkeypatch.setattr(scae._fit, "_available_memory", lambda: 2**19)
    check = guard(small)
    with pytest.raises(MemoryError, match=r"600 × 256 float32 .* backed='r'.*out_path="):
        scae.tl.fit(small, max_epochs=1000, progress=False)
    check()
    monkeypatch.setattr(scae._fit, "_available_memory", lambda: 2 * 2**20)
    scae.tl.fit(small, max_epochs=1, progress=False)
    assert small.obsm["X_scae_codes"].shape == (600, 256)
    monkeypatch.undo()
    available = scae._fit._available_memory()  # MemAvailable + SwapFree on Linux, None elsewhere
    assert available is None or 2**20 < available < 2**50


def test_unused_highly_variable_genes_warn(data_dir, caplog, tmp_path):
    """A gene selection in var['highly_variable'] that scae would not use (it trains on every gene given) is named."""
    import scanpy as sc

    adata = scae.datasets.cellbench(data_dir)  # 499 cells x 15,073 genes, raw counts
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=2000)
    before = adata.var.copy()
    with caplog.at_level("WARNING", logger="scae"):
        scae.SAUCIE(adata, hidden=(8, 4, 2)).train(max_epochs=1, progress=False).save(tmp_path / "m")
    assert f"marks 2000 of {adata.n_vars} genes, but scae trains on all of them" in caplog.text
    pd.testing.assert_frame_equal(adata.var, before)
    caplog.clear()
    with caplog.at_level("WARNING", logger="scae"):
        subset = adata[:, adata.var["highly_variable"]].copy()
        scae.SAUCIE(subset, hidden=(8, 4, 2)).train(max_epochs=1, progress=False)  # the selection: nothing to say
        adata.var["highly_variable"] = True
        scae.SAUCIE(adata, hidden=(8, 4, 2)).train(max_epochs=1, progress=False)  # every gene marked
        adata.var["highly_variable"] = before["highly_variable"]
        scae.SAUCIE.load(tmp_path / "m", adata).train(max_epochs=1, progress=False)  # fine-tuning a loaded model
    assert "highly_variable" not in caplog.text


def test_acquisition_channels_warn(caplog):
    """All 55 channels of the bundled CytoNorm file (Time, Event_length, beadDist among them) get a warning that
    names them and the var column to subset with; its 37 markers do not; gene names never match."""
    full = scae.datasets.cytonorm(markers_only=False)
    with caplog.at_level("WARNING", logger="scae"):
        scae.SAUCIE(full, hidden=(16, 8, 4)).train(max_epochs=1, progress=False)
    assert "include 'Time', 'Event_length', 'beadDist', which record the acquisition" in caplog.text
    assert "adata[:, adata.var['is_marker']].copy()" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="scae"):
        scae.SAUCIE(scae.datasets.cytonorm(), hidden=(16, 8, 4)).train(max_epochs=1, progress=False)
    assert "acquisition" not in caplog.text
    assert scae._values.acquisition_channels(["Event #", "TIME", "FSC-A", "CD3", "TIMELESS", "Widths"]) == [
        "Event #",
        "TIME",
    ]
