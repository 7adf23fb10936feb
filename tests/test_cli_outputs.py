"""What the ``scae`` command writes, and where it refuses to write (real CyTOF cells, levine3k).

The input is never overwritten; saving into a model folder keeps the user's other files there; ``--fcs-dir``
names keep every dot of the file name; ``scae demo`` checks its outputs and options before the fit and leaves
earlier outputs as they were when it fails; ``-v`` takes 0, 1 or 2.
"""

import hashlib
import subprocess
import sys

import anndata as ad
import fcswrite
import numpy as np
import pytest

import scae
from scae import cli

QUICK = ["--max-epochs", "2", "--quiet", "--seed", "0", "--hidden", "32", "16", "8"]


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def cells(tmp_path, small):
    path = tmp_path / "cells.h5ad"
    small.write_h5ad(path)
    return path


def test_out_equal_to_in_is_refused(cells, tmp_path, capsys):
    before = _digest(cells)
    assert cli.main(["fit", str(cells), str(cells), *QUICK]) == 1
    assert "OUT" in capsys.readouterr().err and _digest(cells) == before
    assert cli.main(["fit", str(cells), f"{tmp_path}/../{tmp_path.name}/./cells.h5ad", *QUICK]) == 1  # spelled
    assert "is the input; scae never overwrites it" in capsys.readouterr().err
    model = tmp_path / "model"
    assert cli.main(["fit", str(cells), str(tmp_path / "fit.h5ad"), "--save-model", str(model), *QUICK]) == 0
    assert cli.main(["transform", str(model), str(cells), str(cells), "--quiet"]) == 1
    assert "is the input" in capsys.readouterr().err and _digest(cells) == before
    assert cli.main(["transform", str(model), str(cells), str(model), "--quiet"]) == 1
    assert "is the model folder" in capsys.readouterr().err
    assert cli.main(["fit", str(cells), str(tmp_path / "m.h5ad"), "--save-model", str(tmp_path / "m.h5ad")]) == 1
    assert "is the --save-model folder" in capsys.readouterr().err


def test_saving_into_a_model_folder_keeps_other_files(cells, tmp_path):
    run = tmp_path / "run1"
    assert cli.main(["fit", str(cells), str(run / "fitted.h5ad"), "--save-model", str(run), *QUICK]) == 0
    assert cli.main(["transform", str(run), str(cells), str(run / "mapped.h5ad"), "--quiet"]) == 0
    (run / "notes.txt").write_text("keep")
    (run / "weights.pt").write_bytes(b"an older save's weights")  # a model file: replaced by this save's
    kept = {name: _digest(run / name) for name in ("fitted.h5ad", "mapped.h5ad", "notes.txt")}
    old_weights = _digest(run / "weights.safetensors")
    assert (
        cli.main(["fit", str(cells), str(tmp_path / "again.h5ad"), "--save-model", str(run), *QUICK, "--seed", "1"])
        == 0
    )
    assert sorted(p.name for p in run.iterdir()) == sorted(
        [*kept, "model.json", "state.safetensors", "weights.safetensors"]
    )
    assert {name: _digest(run / name) for name in kept} == kept
    assert _digest(run / "weights.safetensors") != old_weights  # the new model (seed 1) is in place
    assert scae.SAUCIE.load(run).random_state == 1
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary or old folder left


def test_fcs_dir_names_keep_every_dot(cells, tmp_path, small):
    assert cli.main(["fit", str(cells), str(tmp_path / "run.v1.h5ad"), "--fcs-dir", str(tmp_path / "f"), *QUICK]) == 0
    assert cli.main(["fit", str(cells), str(tmp_path / "run.v2.h5ad"), "--fcs-dir", str(tmp_path / "f"), *QUICK]) == 0
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["run.v1_scae.fcs", "run.v2_scae.fcs"]
    raw = np.asarray(small.layers["raw"], dtype=np.float32)
    markers = {f"$P{i + 1}S": str(m) for i, m in enumerate(small.var_names)}
    channels = [f"Ch{i:02d}Di" for i in range(small.n_vars)]
    files = [tmp_path / "pat.001.fcs", tmp_path / "pat.002.fcs"]
    for path, rows in zip(files, (slice(0, 300), slice(300, 600)), strict=True):
        fcswrite.write_fcs(str(path), channels, raw[rows], text_kw_pr=markers, compat_negative=False)
    argv = ["fit", *map(str, files), str(tmp_path / "fcs.h5ad"), "--arcsinh", "5", "--fcs-dir", str(tmp_path / "g")]
    assert cli.main([*argv, *QUICK]) == 0
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["pat.001_scae.fcs", "pat.002_scae.fcs"]
    with pytest.raises(ValueError, match=r"the same FCS file is given more than once: .*pat\.001\.fcs"):
        scae.pp.read_fcs([files[0], f"{tmp_path}/./pat.001.fcs"])


def test_demo_checks_first_and_leaves_earlier_outputs(tmp_path, capsys):
    (tmp_path / "scae_demo.h5ad").write_bytes(b"an earlier run")
    (tmp_path / "scae_demo.png").mkdir()  # the figure cannot be written
    assert cli.main(["demo", "--out-dir", str(tmp_path), "--max-epochs", "1", "--quiet"]) == 1
    assert "scae_demo.png exists and is a folder" in capsys.readouterr().err
    assert (tmp_path / "scae_demo.h5ad").read_bytes() == b"an earlier run"
    assert cli.main(["demo", "--out-dir", str(tmp_path / "new"), "--max-epochs", "0"]) == 2  # as `scae fit`
    assert "`max_epochs` must be None or an int >= 1" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_verbosity_levels_and_unreadable_gene_sets(cells, tmp_path, capsys):
    for argv in (["-v", "-3", "fit", str(cells), "o.h5ad"], ["fit", str(cells), "o.h5ad", "-v", "5"]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
    assert cli.main(["fit", str(cells), str(tmp_path / "o.h5ad"), "--gene-sets", str(cells), *QUICK]) == 1
    assert f"{cells} is not a GMT text file" in capsys.readouterr().err


def test_a_signal_after_a_finished_run_exits_0(cells, tmp_path):
    """SIGTERM during the interpreter's shutdown (here: from an atexit hook) does not turn success into 143."""
    out = tmp_path / "out.h5ad"
    argv = ["scae", "fit", str(cells), str(out), *QUICK]
    code = (
        "import atexit, os, signal, sys; atexit.register(lambda: os.kill(os.getpid(), signal.SIGTERM)); "
        f"sys.argv = {argv!r}; from scae.cli import run; run()"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert ad.read_h5ad(out).obsm["X_scae"].shape == (600, 2)


def test_folders_where_files_go_are_named(cells, tmp_path, capsys):
    (tmp_path / "d.fcs").mkdir()
    assert cli.main(["fit", str(tmp_path / "d.fcs"), str(tmp_path / "o.h5ad")]) == 1
    assert "d.fcs: a folder, not an FCS file" in capsys.readouterr().err
    with pytest.raises(IsADirectoryError, match=r"d\.fcs' is a folder, not an FCS file"):
        scae.pp.read_fcs(tmp_path / "d.fcs")
    assert cli.main(["fit", str(cells), str(cells / "o.h5ad")]) == 1  # OUT inside a file
    assert "cells.h5ad is a file, not a folder" in capsys.readouterr().err
    assert cli.main(["fit", str(cells), str(tmp_path / "o.h5ad"), "--fcs-dir", str(cells)]) == 1
    assert "cells.h5ad is a file, not a folder" in capsys.readouterr().err
