import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import scae
from scae import cli


def test_arcsinh_values_sparse_and_double_application(levine):
    a = levine.copy()
    a.X = a.layers["raw"].copy()
    scae.pp.arcsinh(a, cofactor=5)
    np.testing.assert_allclose(a.X, levine.X, rtol=1e-5, atol=1e-5)  # the shared file holds arcsinh(raw/5)
    with pytest.raises(ValueError, match="already arcsinh-transformed"):
        scae.pp.arcsinh(a)
    b = ad.AnnData(sp.csr_matrix(np.array([[0.0, 5.0], [10.0, 0.0]], dtype=np.float32)))
    out = scae.pp.arcsinh(b, cofactor=5, key_added="asinh", copy=True)
    np.testing.assert_allclose(out.layers["asinh"].toarray(), np.arcsinh(np.array([[0, 1], [2, 0]])), rtol=1e-6)
    assert "asinh" not in b.layers
    with pytest.raises(ValueError, match="cofactor"):
        scae.pp.arcsinh(b, cofactor=0)
    with pytest.raises(ValueError, match=r"`cofactor` must be a finite number > 0, got inf"):
        scae.pp.arcsinh(b, cofactor=float("inf"))  # (would set every value to 0)
    with pytest.raises(TypeError, match=r"`cofactor` must be a finite number > 0, got '5'"):
        scae.pp.arcsinh(b, cofactor="5")
    # float64 values beyond float32: the transform stays finite (divided in float64), a fit on them is refused
    wide = np.array([[0.0, 5.0, 1e39], [1.0, 2.0, 3.0]])
    for X in (wide, sp.csr_matrix(wide)):
        c = ad.AnnData(X)
        with pytest.raises(ValueError, match="beyond float32"):
            scae.tl.fit(c, max_epochs=1)
        scae.pp.arcsinh(c, cofactor=5)
        Y = c.X.toarray() if sp.issparse(c.X) else c.X
        assert Y.dtype == np.float32 and np.isfinite(Y).all()
        np.testing.assert_allclose(Y, np.arcsinh(wide / 5), rtol=1e-6)


def test_bundled_datasets():
    cy = scae.datasets.cytonorm()
    assert cy.shape == (6000, 37) and cy.obs["batch"].nunique() == 3
    assert scae.datasets.cytonorm(markers_only=False).shape == (6000, 55)
    lines = scae.datasets.hallmark_gmt().read_text().strip().splitlines()
    assert len(lines) == 50 and lines[0].startswith("HALLMARK_")


def test_shared_data_dir_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="shared data directory not found"):
        scae.datasets.shared_data_dir(tmp_path / "nope")


def test_cli_demo_writes_outputs(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "scae.cli", "demo", "--out-dir", str(tmp_path), "--max-epochs", "2", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "cells/s" in proc.stdout and "clusters:" in proc.stdout
    out = ad.read_h5ad(tmp_path / "scae_demo.h5ad")
    assert {"X_scae", "X_scae_codes"} <= set(out.obsm) and "scae_corrected" in out.layers
    assert (tmp_path / "scae_demo.png").stat().st_size > 10_000


def test_cli_fit_errors(tmp_path, capsys):
    assert cli.main(["fit", str(tmp_path / "missing.h5ad"), str(tmp_path / "out.h5ad")]) == 1
    assert "input file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["fit"])
    assert e.value.code == 2
    assert not (tmp_path / "out.h5ad").exists()


def test_cli_fit_round_trip(tmp_path, small):
    src, dst = tmp_path / "in.h5ad", tmp_path / "out.h5ad"
    small.write_h5ad(src)
    assert cli.main(["fit", str(src), str(dst), "--max-epochs", "2", "--quiet", "--seed", "1"]) == 0
    out = ad.read_h5ad(dst)
    assert out.uns["scae"]["seed"] == 1 and out.obsm["X_scae"].shape == (small.n_obs, 2)
    assert not list(tmp_path.glob(".out.h5ad.*"))  # no temporary file left behind


def test_cli_fit_cluster_flags(tmp_path, small):
    """--n-clusters and --merge-threshold reach scae.tl.fit (and a bad value is refused by its check)."""
    src = tmp_path / "in.h5ad"
    small.write_h5ad(src)
    argv = ["fit", str(src), str(tmp_path / "k3.h5ad"), "--max-epochs", "3", "--quiet", "--n-clusters", "3"]
    assert cli.main(argv) == 0
    out = ad.read_h5ad(tmp_path / "k3.h5ad")
    assert out.obs["scae_cluster"].nunique() == 3 and out.uns["scae"]["params"]["n_clusters"] == 3
    argv = ["fit", str(src), str(tmp_path / "t.h5ad"), "--max-epochs", "3", "--quiet", "--merge-threshold", "6.5"]
    assert cli.main(argv) == 0
    assert ad.read_h5ad(tmp_path / "t.h5ad").uns["scae"]["params"]["merge_threshold"] == 6.5
    assert cli.main(["fit", str(src), str(tmp_path / "bad.h5ad"), "--quiet", "--n-clusters", "0"]) != 0
    assert not (tmp_path / "bad.h5ad").exists()
