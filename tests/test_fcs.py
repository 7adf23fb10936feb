import shutil
import warnings

import anndata as ad
import fcswrite
import numpy as np
import pandas as pd
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


def test_cli_fits_and_maps_fcs_files(tmp_path, capsys):
    """`scae fit a.fcs b.fcs OUT --arcsinh 5`: the in-process read_fcs → arcsinh → fit, bit for bit."""
    from scae import cli

    cyto = scae.datasets.cytonorm()
    files = []
    for batch in ("1", "2", "3"):
        part = cyto[cyto.obs["batch"] == batch][:400]
        raw = np.asarray(part.layers["compensated"], dtype=np.float32)
        X = np.hstack([raw, np.arange(part.n_obs, dtype=np.float32)[:, None]])  # + a Time channel
        files.append(tmp_path / f"batch{batch}.fcs")
        _write(files[-1], X, [*part.var["channel"], "Time"], [*part.var_names, ""])
    out, model = tmp_path / "out.h5ad", tmp_path / "model"
    opts = ["--arcsinh", "5", "--max-epochs", "2", "--seed", "0", "--quiet"]
    argv = ["fit", *map(str, files[:2]), str(out), "--batch-key", "sample", "--save-model", str(model), *opts]
    assert cli.main([*argv, "--fcs-dir", str(tmp_path / "fcs")]) == 0
    res = ad.read_h5ad(out)
    ref = scae.pp.read_fcs(files[:2], markers_only=True)
    scae.pp.arcsinh(ref, cofactor=5)
    scae.tl.fit(ref, batch_key="sample", max_epochs=2, random_state=0, progress=False)
    np.testing.assert_array_equal(res.obsm["X_scae"], ref.obsm["X_scae"])
    assert list(res.var_names) == list(cyto.var_names)  # markers only: Time dropped
    np.testing.assert_allclose(res.X[:400], cyto[cyto.obs["batch"] == "1"][:400].X, atol=1e-4)  # arcsinh(x/5)
    assert list(res.obs["sample"].cat.categories) == ["batch1", "batch2"] and res.uns["scae_arcsinh"]["X"] == 5.0
    assert list(res.uns["scae"]["cli"]["input"]) == [str(f.resolve()) for f in files[:2]]
    # --fcs-dir: per input file, its intensities (arcsinh undone) + embedding + cluster channels, for gating tools
    assert sorted(p.name for p in (tmp_path / "fcs").iterdir()) == ["batch1_scae.fcs", "batch2_scae.fcs"]
    back = scae.pp.read_fcs(tmp_path / "fcs" / "batch2_scae.fcs")
    in_file = (res.obs["sample"] == "batch2").to_numpy()
    assert list(back.var_names) == [*cyto.var_names, "scae_1", "scae_2", "scae_cluster"]
    assert list(back.var["channel"][:3]) == list(cyto.var["channel"][:3])
    raw2 = np.asarray(cyto[cyto.obs["batch"] == "2"][:400].layers["compensated"])
    np.testing.assert_allclose(back.X[:, :-3], raw2, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(back.X[:, -3:-1], res.obsm["X_scae"][in_file], rtol=1e-6)
    assert (back.X[:, -1].astype(int).astype(str) == res.obs["scae_cluster"][in_file].astype(str).to_numpy()).all()
    # new cells of a third file mapped onto the saved model
    mapped = tmp_path / "mapped.h5ad"
    tr = ["transform", str(model), str(files[2]), str(mapped), "--arcsinh", "5", "--quiet", "--fcs-dir", str(tmp_path)]
    assert cli.main(tr) == 0
    assert ad.read_h5ad(mapped).obsm["X_scae"].shape == (400, 2)
    assert scae.pp.read_fcs(tmp_path / "batch3_scae.fcs").n_obs == 400
    # an FCS output that would replace an input is refused before the fit
    shutil.copy(files[2], tmp_path / "batch3_scae.fcs")  # an input named like the output of another
    clash = [
        "fit",
        str(files[2]),
        str(tmp_path / "batch3_scae.fcs"),
        str(tmp_path / "y.h5ad"),
        "--fcs-dir",
        str(tmp_path),
    ]
    assert cli.main([*clash, *opts]) == 1
    assert "--fcs-dir would overwrite the input" in capsys.readouterr().err and not (tmp_path / "y.h5ad").exists()
    # refused: .fcs mixed with another input, several non-FCS inputs, a transform applied twice
    cases = {
        (str(files[0]), str(out)): "IN is one .h5ad file or .zarr store, or .fcs files only",
        (str(out), str(out)): "2 inputs given: several inputs must be .fcs files",
    }
    for inputs, expected in cases.items():
        assert cli.main(["fit", *inputs, str(tmp_path / "x.h5ad"), *opts]) == 1
        assert expected in capsys.readouterr().err
    assert cli.main(["fit", str(out), str(tmp_path / "x.h5ad"), *opts]) == 1
    assert "'X' was already arcsinh-transformed (cofactor 5.0)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        cli.main(["fit", str(files[0]), str(tmp_path / "x.h5ad"), "--arcsinh", "0"])
    assert stop.value.code == 2 and "argument --arcsinh: expected a number > 0, got '0'" in capsys.readouterr().err
    assert not (tmp_path / "x.h5ad").exists()


def test_write_fcs_values_and_errors(tmp_path, levine):
    """Stored values unless arcsinh was recorded; cluster names as numbers; clear errors; the AnnData unchanged."""
    a = levine[:300].copy()  # X = arcsinh(raw / 5), but not made by scae.pp.arcsinh: nothing recorded
    scae.io.write_fcs(a, tmp_path / "plain.fcs")
    back = scae.pp.read_fcs(tmp_path / "plain.fcs")
    assert list(back.var_names) == list(a.var_names)  # not fitted: no scae channels
    np.testing.assert_allclose(back.X, a.X, rtol=1e-6)
    with pytest.raises(ValueError, match=r"raw=True, but uns\['scae_arcsinh'\] records no arcsinh of adata.X"):
        scae.io.write_fcs(a, tmp_path / "raw.fcs", raw=True)
    b = ad.AnnData(np.asarray(a.layers["raw"], dtype=np.float32), var=a.var.copy())
    scae.pp.arcsinh(b, cofactor=5)
    b.obs["scae_cluster"] = pd.Categorical(np.where(np.arange(300) < 100, "7", "12"))
    before = b.X.copy()
    scae.io.write_fcs(b, tmp_path / "sub" / "raw.fcs")  # folders are made
    back = scae.pp.read_fcs(tmp_path / "sub" / "raw.fcs")
    np.testing.assert_allclose(back.X[:, :-1], a.layers["raw"], rtol=1e-4, atol=1e-3)  # intensities again
    assert sorted(set(back.X[:, -1])) == [7.0, 12.0] and back.uns["fcs"]["meta"]["scae_arcsinh_cofactor"] == "5"
    np.testing.assert_array_equal(b.X, before)
    scae.io.write_fcs(b, tmp_path / "stored.fcs", raw=False)
    np.testing.assert_allclose(scae.pp.read_fcs(tmp_path / "stored.fcs").X[:, :-1], b.X, rtol=1e-6)
    b.obs["scae_cluster"] = pd.Categorical(np.where(np.arange(300) < 100, "T", "B"))  # names, not numbers
    scae.io.write_fcs(b, tmp_path / "names.fcs")
    assert sorted(set(scae.pp.read_fcs(tmp_path / "names.fcs").X[:, -1])) == [0.0, 1.0]  # category positions
    with pytest.raises(TypeError, match="`raw` must be None, True or False"):
        scae.io.write_fcs(b, tmp_path / "x.fcs", raw="yes")
    b.write_h5ad(tmp_path / "b.h5ad")
    backed = ad.read_h5ad(tmp_path / "b.h5ad", backed="r")
    with pytest.raises(ValueError, match="write_fcs needs the matrix in memory"):
        scae.io.write_fcs(backed, tmp_path / "x.fcs")
    backed.file.close()
    assert not (tmp_path / "x.fcs").exists()


def test_read_fcs_compensates_with_the_files_spillover(tmp_path):
    """Flow files store fluorescence before compensation and the spillover matrix beside it: compensate=True
    recovers the compensated intensities (real CyTOF intensities used as the true signal here)."""
    from scae import cli

    true = np.asarray(scae.datasets.cytonorm().layers["compensated"][:300, :3], dtype=np.float64)
    spill = np.array([[1.0, 0.12, 0.02], [0.05, 1.0, 0.2], [0.0, 0.08, 1.0]])  # row: the dye, column: detector
    observed = true @ spill
    scatter = np.linspace(1e4, 2e5, 300)[:, None]
    X = np.hstack([scatter, observed, np.arange(300.0)[:, None]])
    channels = ["FSC-A", "FL1-A", "FL2-A", "FL3-A", "Time"]
    text = "3,FL1-A,FL2-A,FL3-A," + ",".join(f"{v:g}" for v in spill.ravel())
    for name, extra in (("spill.fcs", {"$SPILLOVER": text}), ("none.fcs", {})):
        kw = {"$P2S": "CD3", "$P3S": "CD4", "$P4S": "CD8", **extra}
        fcswrite.write_fcs(str(tmp_path / name), channels, X, text_kw_pr=kw, compat_negative=False)
    comp = scae.pp.read_fcs(tmp_path / "spill.fcs", compensate=True)
    np.testing.assert_allclose(comp[:, ["CD3", "CD4", "CD8"]].X, true, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(comp[:, "FSC-A"].X[:, 0], scatter[:, 0], rtol=1e-6)  # scatter is not compensated
    assert comp.uns["fcs"]["compensated"] is True
    plain = scae.pp.read_fcs(tmp_path / "spill.fcs")
    np.testing.assert_allclose(plain[:, ["CD3", "CD4", "CD8"]].X, observed, rtol=1e-5)
    with pytest.raises(ValueError, match=r"'.*none.fcs' holds no spillover matrix \(\$SPILLOVER or SPILL\)"):
        scae.pp.read_fcs([tmp_path / "spill.fcs", tmp_path / "none.fcs"], compensate=True)
    with pytest.raises(TypeError, match="`compensate` must be True or False"):
        scae.pp.read_fcs(tmp_path / "spill.fcs", compensate="yes")
    # the command line: --compensate
    out = tmp_path / "out.h5ad"
    argv = ["fit", str(tmp_path / "spill.fcs"), str(out), "--compensate", "--arcsinh", "150", "--max-epochs", "1"]
    assert cli.main([*argv, "--quiet"]) == 0
    res = ad.read_h5ad(out)
    np.testing.assert_allclose(np.sinh(res.X) * 150, true, rtol=1e-3, atol=1e-2)
