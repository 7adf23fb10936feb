"""Mixed feature blocks (bulk multi-omics): one model, one likelihood and weight per block."""

import anndata as ad
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import scae

LIKELIHOODS = {"expression": "mse", "mutation": "bernoulli", "cnv": "bernoulli"}
# Measured on tcga_coread_cms with the fit below (150 epochs, hidden (64, 32, 16), CPU), seeds 0/1:
# AUC of imputed probabilities vs the binary calls mutation 0.805/0.818, cnv 0.906/0.930 (per-feature prevalence
# alone gives 0.61 / 0.58); correlation of imputed with input expression 0.710/0.724.
AUC_FLOOR = {"mutation": 0.75, "cnv": 0.85}
EXPRESSION_CORR_FLOOR = 0.65


@pytest.fixture(scope="module")
def multiomics(data_dir):
    return scae.datasets.tcga_coread(data_dir, multiomics=True)


def test_tcga_multiomics_helper(multiomics):
    a = multiomics
    assert a.shape == (121, 800)
    assert a.var["block"].value_counts().to_dict() == {"expression": 500, "mutation": 200, "cnv": 100}
    assert a.var_names.is_unique
    binary = a.X[:, (a.var["block"] != "expression").to_numpy()]
    assert set(np.unique(binary)) == {0.0, 1.0}


def test_mixed_block_model_fits_tcga(multiomics, tmp_path):
    a = multiomics.copy()
    scae.tl.fit(
        a,
        block_key="block",
        likelihood=LIKELIHOODS,
        block_weights={"expression": 1.0, "mutation": 2.0, "cnv": 2.0},
        max_epochs=150,
        hidden=(64, 32, 16),
        progress=False,
        random_state=0,
    )
    info = a.uns["scae"]
    assert info["blocks"] == LIKELIHOODS and info["params"]["block_key"] == "block"
    hist = info["history"]
    for block in LIKELIHOODS:
        v = hist[f"reconstruction_{block}"]
        assert v[-1] < v[0], (block, v[0], v[-1])
    imputed = a.layers["scae_imputed"]
    for block, floor in AUC_FLOOR.items():
        m = (a.var["block"] == block).to_numpy()
        p = imputed[:, m]
        assert p.min() >= 0 and p.max() <= 1
        auc = roc_auc_score(a.X[:, m].ravel(), p.ravel())
        assert auc > floor, (block, auc)
    expr = (a.var["block"] == "expression").to_numpy()
    corr = np.corrcoef(imputed[:, expr].ravel(), a.X[:, expr].ravel())[0, 1]
    assert corr > EXPRESSION_CORR_FLOOR, corr  # expression stays in its input (log) units
    a.write_h5ad(tmp_path / "blocks.h5ad")
    b = ad.read_h5ad(tmp_path / "blocks.h5ad")
    assert b.uns["scae"]["params"]["likelihood"] == LIKELIHOODS and b.uns["scae"]["blocks"] == LIKELIHOODS


def test_block_arguments_are_checked(multiomics, small, guard):
    a = multiomics
    check = guard(a)
    with pytest.raises(ValueError, match="missing \\['cnv'\\]"):
        scae.tl.fit(a, block_key="block", likelihood={"expression": "mse", "mutation": "bernoulli"})
    with pytest.raises(ValueError, match="not found in adata.var"):
        scae.tl.fit(a, block_key="omics", likelihood="mse")
    with pytest.raises(ValueError, match="block 'expression'.*0 and 1"):
        scae.tl.fit(a, block_key="block", likelihood="bernoulli")
    with pytest.raises(ValueError, match="needs `block_key`"):
        scae.tl.fit(a, likelihood=LIKELIHOODS)
    check()
    gap = a.copy()
    gap.var["block"] = gap.var["block"].astype(object)
    gap.var.iloc[:3, gap.var.columns.get_loc("block")] = None
    with pytest.raises(ValueError, match=r"adata.var\['block'\] has 3 missing values; every feature needs a block"):
        scae.tl.fit(gap, block_key="block", likelihood=LIKELIHOODS)
