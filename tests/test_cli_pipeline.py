"""The ``scae`` command as a pipeline step: config files, exit codes, atomic outputs, fit → transform round trip."""

import contextlib
import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

import scae
from scae import _atomic, cli
from scae._save import save_model

# the CPU: the CLI and the in-process API must agree bit for bit, a promise made for one device type and CPU only
PARAMS_TOML = 'hidden = [64, 32, 16]\nmax_epochs = 4\nbatch_key = "batch"\nrandom_state = 5\ndevice = "cpu"\n'
FIT = {"hidden": (64, 32, 16), "max_epochs": 4, "batch_key": "batch", "device": "cpu"}


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """Real CyTOF: 1,200 cells of batches 1-2 to fit, 400 held-back cells of batch 3 to transform."""
    a = scae.datasets.cytonorm()
    rng = np.random.default_rng(0)
    fit_cells = a[np.sort(rng.choice(np.flatnonzero(a.obs["batch"] != "3"), 1200, replace=False))].copy()
    held = a[np.sort(rng.choice(np.flatnonzero(a.obs["batch"] == "3"), 400, replace=False))].copy()
    d = tmp_path_factory.mktemp("cli")
    fit_cells.write_h5ad(d / "train.h5ad")
    held.write_h5ad(d / "held.h5ad")
    (d / "params.toml").write_text(PARAMS_TOML)
    return d, fit_cells, held


def _run(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "scae.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def test_round_trip_equals_in_process_api(split, tmp_path, capsys):
    d, fit_cells, held = split
    out, out2, model_dir = tmp_path / "out.h5ad", tmp_path / "held_out.h5ad", tmp_path / "model"
    argv = [
        "fit",
        d / "train.h5ad",
        out,
        "--config",
        d / "params.toml",
        "--seed",
        "1",
        "--save-model",
        model_dir,
        "--quiet",
    ]
    assert cli.main(list(map(str, argv))) == 0
    assert cli.main(["transform", str(model_dir), str(d / "held.h5ad"), str(out2), "--device", "cpu"]) == 0
    fitted, mapped = ad.read_h5ad(out), ad.read_h5ad(out2)
    det = ["transform", str(model_dir), str(d / "held.h5ad"), str(tmp_path / "det.h5ad"), "--deterministic"]
    assert cli.main([*det, "--device", "cpu"]) == 0
    np.testing.assert_array_equal(ad.read_h5ad(tmp_path / "det.h5ad").obsm["X_scae"], mapped.obsm["X_scae"])
    # in-process: the same fit (flag --seed 1 overrides the config's random_state = 5)
    ref = fit_cells.copy()
    scae.tl.fit(ref, random_state=1, progress=False, **FIT)
    np.testing.assert_array_equal(fitted.obsm["X_scae"], ref.obsm["X_scae"])
    assert (fitted.obs["scae_cluster"] == ref.obs["scae_cluster"]).all()
    info = fitted.uns["scae"]
    assert info["seed"] == 1 and info["params"]["hidden"].tolist() == [64, 32, 16]
    assert {"torch", "scae", "anndata"} <= set(info["versions"]) and info["runtime"]["train_s"] > 0
    assert info["cli"]["config_file"].endswith("params.toml") and info["cli"]["wall_s"] > 0
    # in-process transform with the in-memory model and with the saved one
    model = scae.SAUCIE(fit_cells.copy(), random_state=1, **{k: v for k, v in FIT.items() if k != "max_epochs"})
    model.train(4, progress=False)
    for m in (model, scae.SAUCIE.load(model_dir, device="cpu")):
        new = held.copy()
        scae.tl.transform(m, new)
        np.testing.assert_array_equal(mapped.obsm["X_scae"], new.obsm["X_scae"])
        np.testing.assert_array_equal(mapped.obsm["X_scae_codes"], new.obsm["X_scae_codes"])
        assert (mapped.obs["scae_cluster"] == new.obs["scae_cluster"]).all()
        np.testing.assert_allclose(mapped.layers["scae_imputed"], new.layers["scae_imputed"], atol=1e-6)
    assert mapped.uns["scae"]["cli"]["subcommand"] == "transform" and mapped.uns["scae"]["mapped"]
    # the arguments of transform swapped: both errors name the mix-up, nothing is written
    swapped = tmp_path / "swapped.h5ad"
    assert cli.main(["transform", str(d / "held.h5ad"), str(model_dir), str(swapped)]) == 1
    assert "a scae model; `scae transform MODEL IN.h5ad OUT.h5ad` takes the model first" in capsys.readouterr().err
    assert cli.main(["fit", str(model_dir), str(swapped)]) == 1
    err = capsys.readouterr().err
    assert "model is a folder, not an .h5ad file or a .zarr store: a scae model" in err and not swapped.exists()


def test_unknown_config_key_and_missing_input_exit_nonzero(split, tmp_path, capsys):
    d = split[0]
    (tmp_path / "bad.toml").write_text("epochs = 3\n")
    proc = _run("fit", d / "train.h5ad", tmp_path / "out.h5ad", "--config", tmp_path / "bad.toml")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line
    assert "unknown key 'epochs'" in proc.stderr and "max_epochs" in proc.stderr
    assert cli.main(["fit", str(tmp_path / "missing.h5ad"), str(tmp_path / "out.h5ad")]) == 1
    assert capsys.readouterr().err.strip() == f"scae fit: error: input file not found: {tmp_path / 'missing.h5ad'}"
    assert not (tmp_path / "out.h5ad").exists()


@pytest.mark.filterwarnings("ignore:Writing zarr v2 data:UserWarning")  # anndata 0.12's default format
def test_zarr_input_and_output(split, tmp_path, capsys, monkeypatch):
    """A .zarr store in and out: the same fit as from .h5ad; replaced atomically; bad OUT refused before the fit."""
    d, fit_cells, held = split
    src, out, model = tmp_path / "train.zarr", tmp_path / "out.zarr", tmp_path / "model"
    fit_cells.write_zarr(src)
    opts = ["--config", str(d / "params.toml"), "--quiet"]
    assert cli.main(["fit", str(d / "train.h5ad"), str(tmp_path / "ref.h5ad"), *opts]) == 0
    assert cli.main(["fit", str(src), str(out), *opts, "--save-model", str(model)]) == 0
    ref, res = ad.read_h5ad(tmp_path / "ref.h5ad"), ad.read_zarr(out)
    np.testing.assert_array_equal(res.obsm["X_scae"], ref.obsm["X_scae"])
    np.testing.assert_array_equal(res.layers["scae_imputed"], ref.layers["scae_imputed"])
    assert (res.obs["scae_cluster"] == ref.obs["scae_cluster"]).all() and res.uns["scae"]["seed"] == 5
    held.write_zarr(tmp_path / "held.zarr")
    assert cli.main(["transform", str(model), str(tmp_path / "held.zarr"), str(tmp_path / "held_out.zarr")]) == 0
    assert ad.read_zarr(tmp_path / "held_out.zarr").obsm["X_scae"].shape == (held.n_obs, 2)

    # a write that fails leaves the earlier store as it was, and no temporary folder
    def broken_write(self, store, *args, **kwargs):
        Path(store, "partial").write_text("x")
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(ad.AnnData, "write_zarr", broken_write)
        assert cli.main(["fit", str(src), str(out), *opts, "--seed", "3"]) == 1
    assert "disk full" in capsys.readouterr().err
    assert ad.read_zarr(out).uns["scae"]["seed"] == 5 and not (out / "partial").exists()
    # a rerun replaces the store
    assert cli.main(["fit", str(src), str(out), *opts, "--seed", "3"]) == 0
    assert ad.read_zarr(out).uns["scae"]["seed"] == 3
    names = {"held.zarr", "held_out.zarr", "model", "out.zarr", "ref.h5ad", "train.zarr"}
    assert {p.name for p in tmp_path.iterdir()} == names  # no temporary or set-aside folder left

    # refused before any work: an unknown suffix, a folder that is not a zarr store, a folder named .h5ad
    (tmp_path / "notes.zarr").mkdir()
    (tmp_path / "notes.zarr" / "keep.txt").write_text("mine")
    (tmp_path / "dir.h5ad").mkdir()

    @functools.wraps(scae.tl.fit)  # (its signature: the config keys are checked against it)
    def no_fit(*args, **kwargs):
        pytest.fail("fitted despite a bad OUT")

    monkeypatch.setattr(scae.tl, "fit", no_fit)
    cases = {
        "out.csv": "scae writes AnnData as .h5ad or .zarr, not '.csv'",
        "notes.zarr": "exists and is a folder that is not a zarr store; name a new path ending in .zarr",
        "dir.h5ad": "exists and is a folder that is not a zarr store; name a new path",
        "ref.h5ad/../out.zarr/x.h5ad": "cannot write",
    }
    for name, expected in cases.items():
        assert cli.main(["fit", str(src), str(tmp_path / name), *opts]) == 1, name
        assert expected in capsys.readouterr().err, name
    assert (tmp_path / "notes.zarr" / "keep.txt").read_text() == "mine" and not (tmp_path / "out.csv").exists()


def test_threads_flag_sets_and_restores_torch_threads(split, tmp_path):
    d, fit_cells, _ = split
    before = torch.get_num_threads()
    out = tmp_path / "one_thread.h5ad"
    argv = ["fit", str(d / "train.h5ad"), str(out), "--config", str(d / "params.toml"), "--threads", "1", "--quiet"]
    assert cli.main(argv) == 0
    assert torch.get_num_threads() == before
    res = ad.read_h5ad(out)
    assert res.uns["scae"]["runtime"]["cpu_threads"] == 1
    ref = fit_cells.copy()
    torch.set_num_threads(1)
    try:
        scae.tl.fit(ref, random_state=5, progress=False, **FIT)
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(res.obsm["X_scae"], ref.obsm["X_scae"])
    proc = _run("fit", d / "train.h5ad", tmp_path / "x.h5ad", "--threads", "0")
    assert proc.returncode == 2 and "argument --threads: expected an int >= 1, got '0'" in proc.stderr


def test_torchrun_refuses_what_a_backed_read_cannot_do(split, tmp_path, capsys, monkeypatch):
    """Under torchrun IN is read backed by rows: other inputs and input options are refused before joining."""
    d = split[0]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    train, out = str(d / "train.h5ad"), str(tmp_path / "out.h5ad")
    cases = {
        (str(d / "train.zarr"), out): "under torchrun, IN is one .h5ad file and OUT an .h5ad file",
        (train, str(tmp_path / "out.zarr")): "under torchrun, IN is one .h5ad file and OUT an .h5ad file",
        (train, out, "--arcsinh", "5"): "--arcsinh, --compensate and --fcs-dir are not available",
        (train, out, "--fcs-dir", str(tmp_path)): "--arcsinh, --compensate and --fcs-dir are not available",
    }
    for argv, expected in cases.items():
        assert cli.main(["fit", *argv]) == 1, argv
        assert expected in capsys.readouterr().err, argv
    assert not any(tmp_path.iterdir())


def test_config_errors(split, tmp_path, capsys):
    d = split[0]
    out = str(tmp_path / "out.h5ad")
    cases = {
        "type.toml": ('max_epochs = "4"\n', "'max_epochs' must be int | None, got str"),
        "list.yaml": ("hidden: [64, x]\n", "'hidden' must be Sequence[int]"),
        "copy.yaml": ("copy: true\n", "unknown key 'copy'"),
        "range.toml": ("hidden = [64, 0, 16]\n", "`hidden` must be a non-empty sequence of positive ints, got [64, 0"),
        "small.yaml": ("batch_size: 1\n", "`batch_size` must be None or an int >= 2, got 1"),
        "broken.yaml": ("hidden: [64\n", "cannot parse config file"),
        "top.yaml": ("- 1\n- 2\n", "must hold key = value pairs"),
        "params.json": ("{}", "must end in .toml, .yaml or .yml"),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        assert cli.main(["fit", str(d / "train.h5ad"), out, "--config", str(tmp_path / name)]) == 2, name
        assert expected in capsys.readouterr().err, name
    assert cli.main(["fit", str(d / "train.h5ad"), out, "--config", str(tmp_path / "nope.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    if "gene_sets" not in scae._config.arguments(scae.tl.fit):
        assert cli.main(["fit", str(d / "train.h5ad"), out, "--gene-sets", "x.gmt"]) == 2
        assert "does not have" in capsys.readouterr().err
    assert not (tmp_path / "out.h5ad").exists()


def test_yaml_config_and_flag_override(split, tmp_path):
    d = split[0]
    (tmp_path / "p.yaml").write_text(
        "hidden: [16, 8, 4]\nmax_epochs: 1\nlambda_c: 3e-1\nrandom_state: 7\nprogress: false\n"
    )
    assert (
        cli.main(
            [
                "fit",
                str(d / "train.h5ad"),
                str(tmp_path / "o.h5ad"),
                "--config",
                str(tmp_path / "p.yaml"),
                "--max-epochs",
                "2",
                "--deterministic",
                "--hidden",
                "32",
                "16",
                "8",
                "--batch-size",
                "300",
            ]
        )
        == 0
    )
    out = ad.read_h5ad(tmp_path / "o.h5ad")
    info = out.uns["scae"]
    assert info["params"]["lambda_c"] == 0.3 and info["seed"] == 7 and info["runtime"]["epochs"] == 2
    assert info["params"]["deterministic"] and info["cli"]["config"]["deterministic"]
    # --hidden and --batch-size override the config's widths: 32 code units, 1,200 cells in 4 steps per epoch
    assert list(info["params"]["hidden"]) == [32, 16, 8] and out.obsm["X_scae_codes"].shape == (1200, 32)
    assert info["params"]["batch_size"] == 300 and info["runtime"]["steps"] == 8


def test_key_added_flag(split, tmp_path):
    d = split[0]
    out = tmp_path / "o.h5ad"
    argv = ["fit", str(d / "train.h5ad"), str(out), "--config", str(d / "params.toml"), "--key-added", "run2"]
    assert cli.main(argv) == 0
    a = ad.read_h5ad(out)
    assert "run2" in a.uns and "scae" not in a.uns and a.uns["run2"]["cli"]["config"]["key_added"] == "run2"
    assert a.obsm["X_run2"].shape == (1200, 2) and "run2_cluster" in a.obs and "run2_imputed" in a.layers


@pytest.mark.parametrize("flag", [["--hidden", "64", "0"], ["--batch-size", "-5"], ["--precision", "fp16"]])
def test_bad_network_flags_are_usage_errors(split, tmp_path, capsys, flag):
    d = split[0]
    with pytest.raises(SystemExit) as exc:
        cli.main(["fit", str(d / "train.h5ad"), str(tmp_path / "o.h5ad"), *flag])
    assert exc.value.code == 2 and flag[0] in capsys.readouterr().err
    assert not (tmp_path / "o.h5ad").exists()


def test_failure_while_writing_leaves_no_output(split, tmp_path, monkeypatch, capsys):
    d = split[0]
    out = tmp_path / "out.h5ad"

    def broken_writer(self, filename, *args, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"\x89HDF half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", broken_writer)
    argv = ["fit", str(d / "train.h5ad"), str(out), "--hidden-is-not-a-flag"]
    with pytest.raises(SystemExit):
        cli.main(argv)
    (d / "tiny.yaml").write_text("hidden: [16, 8, 4]\nmax_epochs: 1\nprogress: false\n")
    argv = ["fit", str(d / "train.h5ad"), str(out), "--config", str(d / "tiny.yaml")]
    assert cli.main(argv) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == []  # neither OUT nor a temporary file
    out.write_bytes(b"previous result")
    assert cli.main(argv) == 1
    assert out.read_bytes() == b"previous result" and sorted(os.listdir(tmp_path)) == ["out.h5ad"]


@pytest.mark.slow
def test_sigterm_during_fit_leaves_no_output(split, tmp_path):
    d = split[0]
    out = tmp_path / "out.h5ad"
    proc = subprocess.Popen(
        [sys.executable, "-m", "scae.cli", "fit", str(d / "train.h5ad"), str(out), "--max-epochs", "5000", "--quiet"],
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(15)
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    assert proc.returncode != 0
    assert os.listdir(tmp_path) == []


# a fit that takes seconds: the fault tests below start many of them
TINY_TOML = 'hidden = [16, 8, 4]\nmax_epochs = 1\nbatch_key = "batch"\ndevice = "cpu"\nprogress = false\n'


def _fit_argv(d, out, config, *extra):
    return [sys.executable, "-m", "scae.cli", "fit", str(d / "train.h5ad"), str(out), "--config", str(config), *extra]


def test_failed_fit_removes_the_folders_it_created(split, tmp_path):
    """A fit that fails after OUT's folder was made (batch key not in obs) leaves no folder behind."""
    d = split[0]
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    (tmp_path / "old").mkdir()
    out = tmp_path / "new" / "nested" / "out.h5ad"
    argv = _fit_argv(d, out, tmp_path / "tiny.toml", "--batch-key", "no_such_column", "--save-model")
    proc = subprocess.run([*argv, tmp_path / "old" / "deeper" / "model"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "no_such_column" in proc.stderr and proc.stderr.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["old", "tiny.toml"] and os.listdir(tmp_path / "old") == []


def test_failed_write_removes_the_new_model_folder(split, tmp_path, monkeypatch, capsys):
    """The model folder was saved, then writing OUT failed: new folders go, folders that were there stay."""
    d = split[0]
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "mine.txt").write_text("not scae's")

    def broken_writer(self, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\x89HDF half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", broken_writer)
    saved = []
    monkeypatch.setattr(scae.SAUCIE, "save", lambda self, path, **kw: saved.append(save_model(self, path, **kw)))
    out, model = tmp_path / "new" / "a" / "out.h5ad", keep / "b" / "model"
    argv = ["fit", str(d / "train.h5ad"), str(out), "--config", str(tmp_path / "tiny.toml"), "--save-model", str(model)]
    assert cli.main(argv) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert saved == [model]  # the model folder had been written before the failure
    assert sorted(os.listdir(tmp_path)) == ["keep", "tiny.toml"] and os.listdir(keep) == ["mine.txt"]


def test_swallowed_signal_still_stops_the_rename(tmp_path):
    """A SIGTERM whose exception a callback swallowed, or that came while writing, refuses the rename."""
    out = tmp_path / "out.h5ad"
    out.write_bytes(b"previous")
    before = signal.getsignal(signal.SIGTERM)
    for deferred in (False, True):
        with _atomic.stop_on_signals():
            with pytest.raises(_atomic.SignalExit) as e, _atomic.atomic_path(out) as tmp:
                tmp.write_bytes(b"new")
                try:
                    with _atomic.deferred_signals() if deferred else contextlib.nullcontext():
                        os.kill(os.getpid(), signal.SIGTERM)
                        time.sleep(0.01)  # the handler runs in the main thread between bytecodes
                except SystemExit:
                    pass  # what an h5py callback or a destructor does with the exception
            assert e.value.code == 143
        assert out.read_bytes() == b"previous" and os.listdir(tmp_path) == ["out.h5ad"]
        assert signal.getsignal(signal.SIGTERM) is before
    with _atomic.atomic_path(out) as tmp:  # no signal received: renamed as before
        tmp.write_bytes(b"new")
    assert out.read_bytes() == b"new"


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] in "Tt"


def _poll(found, proc, timeout=240.0) -> bool:
    """Wait until ``found()``; False when the process ended first."""
    end = time.monotonic() + timeout
    while not found():
        if proc.poll() is not None or time.monotonic() > end:
            return False
        time.sleep(0.0005)
    return True


def _sigterm_while_writing(proc, out, delay) -> bool:
    """SIGTERM once the temporary file beside ``out`` exists (+ ``delay``); False when the rename came first.

    The process is stopped (SIGSTOP) before the check, so the signal provably arrives before the rename.
    """
    if not _poll(lambda: any(out.parent.glob(f".{out.name}.*.tmp")), proc):
        pytest.fail(f"the fit ended (exit code {proc.poll()}) before writing OUT: {proc.communicate()[1]}")
    time.sleep(delay)
    proc.send_signal(signal.SIGSTOP)
    assert _poll(lambda: _stopped(proc.pid), proc, timeout=30)
    writing = any(out.parent.glob(f".{out.name}.*.tmp"))
    if writing:
        proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    return writing


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads process states from /proc")
def test_sigterm_stress_leaves_out_untouched(split, tmp_path):
    """SIGTERM at start-up, in training and at four moments of the write: exit != 0 and OUT as it was, each time."""
    d = split[0]
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    previous = b"previous OUT, not an h5ad file\n"
    tries = [("start", 0.0), ("training", 0.0)] + [("writing", t) for t in (0.0, 0.003, 0.01, 0.03)]
    reruns = 2  # for a signal meant for the write that would have come after the rename (not seen so far)
    i = 0
    while tries:
        when, delay = tries.pop(0)
        i += 1
        new_folder = i % 2 == 0  # OUT in a folder the run creates, or an earlier OUT in a folder that was there
        root = tmp_path / f"run{i}"
        out = root / "nested" / "out.h5ad" if new_folder else root / "out.h5ad"
        if not new_folder:
            root.mkdir()
            out.write_bytes(previous)
        proc = subprocess.Popen(_fit_argv(d, out, tmp_path / "tiny.toml"), stderr=subprocess.PIPE, text=True)
        if when == "start":
            proc.send_signal(signal.SIGTERM)
        elif when == "training":  # OUT's folder is made right before training starts
            assert new_folder and _poll(out.parent.is_dir, proc)
            proc.send_signal(signal.SIGTERM)
        elif not _sigterm_while_writing(proc, out, delay):
            proc.communicate(timeout=120)
            assert proc.returncode == 0  # the run had finished
            assert ad.read_h5ad(out).n_obs == split[1].n_obs
            assert reruns > 0, "signals meant for the write keep coming after the rename"
            reruns -= 1
            tries.append((when, 0.0))
            continue
        err = proc.communicate(timeout=120)[1]
        assert proc.returncode in ((-signal.SIGTERM, 143) if when == "start" else (143,)), (when, delay, err)
        if when != "start":
            assert err.strip().splitlines()[-1] == "scae fit: stopped by SIGTERM", err
        if new_folder:
            assert not root.exists(), (when, delay, sorted(root.rglob("*")))
        else:
            assert os.listdir(root) == ["out.h5ad"] and out.read_bytes() == previous, (when, delay)
