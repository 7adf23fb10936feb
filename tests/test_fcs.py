import warnings

import anndata as ad
import fcswrite
import numpy as np
import pytest

import scae


def _write(path, X, channels, markers):
    kw = {f"$P{i + 1}S": m for i, m in enumerate(markers) if m}
    fcswrite.write_fcs(str(path), channels, X, text_kw_pr=kw, compat_negative=False, compat_percent=False)


def test_read_fcs_round_trip_real_cytof(tmp_path, levine):
    """Raw ion counts of real CyTOF cells survive write → read, with marker names and the marker flag."""
    raw = np.asarray(levine.layers["raw"][:300], dtype=np.float32)
    markers = [str(m) for m in levine.var_names]
    channels = [f"Ch{i:02d}Di" for i in range(len(markers))] + ["Time"]
    X = np.hstack([raw, np.arange(300, dtype=np.float32)[:, None]])
    _write(tmp_path / "a.fcs", X, channels, [*markers, ""])
    with warnings.catch_warnings():  # readfcs's own re-indexing warned "Transforming to str index" at users
        warnings.simplefilter("error", ad.ImplicitModificationWarning)
        adata = scae.pp.read_fcs(tmp_path / "a.fcs")
    assert adata.shape == (300, len(markers) + 1)
    assert list(adata.var_names) == [*markers, "Time"]
    assert list(adata.var["channel"]) == channels
    assert adata.var["is_marker"].sum() == len(markers) and not adata.var.loc["Time", "is_marker"]
    np.testing.assert_allclose(adata.X, X, rtol=1e-6)
    assert adata.X.dtype == np.float32
    assert (adata.obs["sample"] == "a").all()
    # the same arcsinh(x/5) as the shared file
    only = scae.pp.read_fcs(tmp_path / "a.fcs", markers_only=True)
    scae.pp.arcsinh(only, cofactor=5)
    np.testing.assert_allclose(only.X, levine.X[:300], atol=1e-5)
    # every channel named (no Time): readfcs returns the markers as a categorical column
    _write(tmp_path / "b.fcs", raw, channels[:-1], markers)
    b = scae.pp.read_fcs(tmp_path / "b.fcs", markers_only=True)
    assert list(b.var_names) == markers
    np.testing.assert_allclose(b.X, raw, rtol=1e-6)


def test_read_fcs_several_files_become_samples(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("s1", "s2"):
        _write(tmp_path / f"{name}.fcs", np.abs(rng.normal(50, 10, (40, 2))), ["FSC-A", "Nd142Di"], ["", "CD19"])
    adata = scae.pp.read_fcs([tmp_path / "s1.fcs", tmp_path / "s2.fcs"], markers_only=True)
    assert adata.shape == (80, 1) and list(adata.var_names) == ["CD19"]
    assert list(adata.obs["sample"].cat.categories) == ["s1", "s2"]
    assert adata.obs_names.is_unique


def test_read_fcs_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        scae.pp.read_fcs(tmp_path / "missing.fcs")
    bad = tmp_path / "bad.fcs"
    bad.write_text("not an fcs file")
    with pytest.raises(ValueError, match="could not parse"):
        scae.pp.read_fcs(bad)
    _write(tmp_path / "nomarker.fcs", np.full((5, 2), 3.0), ["FSC-A", "SSC-A"], ["", ""])
    plain = scae.pp.read_fcs(tmp_path / "nomarker.fcs")  # no $PnS at all: channels named by $PnN
    assert list(plain.var_names) == ["FSC-A", "SSC-A"] and not plain.var["is_marker"].any()
    np.testing.assert_array_equal(plain.X, 3.0)
    with pytest.raises(ValueError, match="no marker channels"):
        scae.pp.read_fcs(tmp_path / "nomarker.fcs", markers_only=True)
    with pytest.raises(ValueError, match="empty"):
        scae.pp.read_fcs([])
