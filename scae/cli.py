"""The ``scae`` command: ``scae fit IN OUT``, ``scae transform MODEL IN OUT``, ``scae demo``.

IN and OUT are ``.h5ad`` files or ``.zarr`` stores (OUT's format follows its suffix; no suffix writes h5ad); IN
may also be one or more ``.fcs`` files (``--arcsinh COFACTOR`` transforms any input first).

Pipeline contract: exit code 0 only on success; 1 with a one-line message on bad input or a failed run; 2
on usage errors (unknown flag or config key, wrong value type); 130 after Ctrl-C (SIGINT) and 143 (128 + 15)
after SIGTERM. Outputs are written to a temporary file (or folder, for zarr) beside OUT and renamed, so an
interrupted run (exception, Ctrl-C, SIGTERM) never leaves a partial OUT, and an earlier OUT stays byte for
byte as it was. A run that fails also removes the folders it created (for OUT or ``--save-model``) and a model
folder it wrote where none was; folders that existed before, and files others put into the new ones, stay.

A signal stops training at once. One that arrives while OUT is written (where an exception raised inside
h5py could be swallowed) is recorded and stops the run before the rename; one that arrives after the rename
comes too late to stop the finished run, which exits 0. The previous signal handlers are restored on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

from ._atomic import (
    SignalExit,
    atomic_path,
    check_signals,
    defer_signals,
    remove_created_on_failure,
    stop_on_signals,
    write_h5ad_atomic,
)
from ._cli_args import VERBOSITY, add_common_args, add_input_args, positive_int
from ._cli_files import (
    arcsinh_input,
    check_writable,
    fcs_outputs,
    first_line,
    input_record,
    output_format,
    read_input,
    write_fcs_outputs,
    write_output,
)

logger = logging.getLogger("scae")


def _demo(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import _settings, datasets, pl, tl
    from ._config import resolve

    flags = {"random_state": 0 if args.seed is None else args.seed, "device": args.device or "auto"}
    flags.update(max_epochs=args.max_epochs, progress=not args.quiet)
    values, _ = resolve(None, tl.fit, flags, _settings.FIT)  # exit code 2 on a bad value, as for `scae fit`
    out_dir = Path(args.out_dir)
    h5ad, png = out_dir / "scae_demo.h5ad", out_dir / "scae_demo.png"
    for out in (h5ad, png):  # both outputs checked before the fit, not after it
        if out.is_dir():
            msg = f"output {out} exists and is a folder; choose another --out-dir"
            raise IsADirectoryError(msg)
        check_writable(out)
    adata = datasets.cytonorm()
    print(
        f"scae demo: CytoNorm example CyTOF, {adata.n_obs} cells x {adata.n_vars} markers, "
        f"{adata.obs['batch'].nunique()} batches (arcsinh, cofactor 5)"
    )
    tl.fit(adata, batch_key="batch", **values)
    check_signals()
    info = adata.uns["scae"]
    rt = info["runtime"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    pl.embedding(adata, color="scae_cluster", ax=axes[0], show=False, title="scae clusters")
    pl.embedding(adata, color="batch", ax=axes[1], show=False, title="batch (after MMD correction)")
    fig.tight_layout()
    defer_signals()  # from here a signal is acted on right before a rename
    with atomic_path(png) as tmp:  # the figure renamed into place only once the h5ad is written too
        fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)
        write_h5ad_atomic(adata, h5ad)
    print(f"device: {info['device']}")
    print(
        f"training: {rt['steps']} steps ({rt['epochs']} epochs, stopped: {rt['stop_reason']}), {rt['train_s']:.1f} s, "
        f"{rt['train_cells_per_s']:,.0f} cells/s"
    )
    print(f"clusters: {info['n_clusters']}")
    print(f"loss: {info['history']['total'][0]:.4f} (first epoch) -> {info['history']['total'][-1]:.4f} (last epoch)")
    print(f"wrote {h5ad} and {png}")
    return 0


def _options(args: argparse.Namespace, func, flags: dict) -> tuple[dict, dict]:
    """Config file values overridden by the flags that were given; returns (values, config values)."""
    from . import _settings
    from ._config import resolve

    table = _settings.FIT if args.command == "fit" else _settings.TRANSFORM
    return resolve(args.config, func, flags, table)  # exit code 2 on a problem, as for a wrong type


def _log(adata, key: str, args, cfg: dict, started: float, t0: float) -> None:
    """Record the command, config, in/out files and wall time in ``uns[key]["cli"]``."""
    info = {
        "command": " ".join(["scae", *args.argv]),
        "subcommand": args.command,
        "input": input_record(args.input),
        "output": str(Path(args.output).resolve()),
        "config_file": "" if not args.config else str(Path(args.config).resolve()),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if v is not None},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_s": time.perf_counter() - t0,
    }
    adata.uns.setdefault(key, {})["cli"] = info


def _fit(args: argparse.Namespace) -> int:
    from . import tl
    from ._config import ConfigError, arguments

    started, t0 = time.time(), time.perf_counter()
    flags = {
        "random_state": args.seed,
        "layer": args.layer,
        "batch_key": args.batch_key,
        "device": args.device,
        "max_epochs": args.max_epochs,
        "hidden": args.hidden,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "save_model": args.save_model,
        "likelihood": args.likelihood,
        "block_key": args.block_key,
        "merge_threshold": args.merge_threshold,
        "n_clusters": args.n_clusters,
        "deterministic": args.deterministic,
        "key_added": args.key_added,
        "progress": False if args.quiet else None,
    }
    if args.gene_sets is not None:
        if "gene_sets" not in arguments(tl.fit):
            msg = "--gene-sets needs scae.tl.fit(gene_sets=...), which this scae version does not have"
            raise ConfigError(msg)
        if not Path(args.gene_sets).is_file():
            msg = f"gene-set file not found: {args.gene_sets}"
            raise FileNotFoundError(msg)
        flags["gene_sets"] = args.gene_sets
    values, cfg = _options(args, tl.fit, flags)
    from ._dist import launched_by_torchrun  # (here: `scae --help` does not wait for torch)

    if launched_by_torchrun():  # the same fit on every rank of the job: see scae.distributed
        from .distributed import fit_file

        src = Path(args.input[0])
        fmt = output_format(Path(args.output), args.input, values.get("save_model"))
        if len(args.input) > 1 or src.suffix.lower() in (".zarr", ".fcs") or fmt == "zarr":
            msg = "under torchrun, IN is one .h5ad file and OUT an .h5ad file (each rank reads IN backed by rows)"
            raise ValueError(msg)
        if args.arcsinh is not None or args.compensate or args.fcs_dir is not None:
            msg = "under torchrun IN is read backed as it is: --arcsinh, --compensate and --fcs-dir are not available"
            raise ValueError(msg)
        fit_file(args.input[0], args.output, values)
        return 0
    out = Path(args.output)
    fmt = output_format(out, args.input, values.get("save_model"))
    adata = read_input(args.input, all_channels=args.all_channels, compensate=args.compensate)
    arcsinh_input(adata, args.arcsinh, values.get("layer"))
    fcs = {} if args.fcs_dir is None else fcs_outputs(adata, args.fcs_dir, args.input, out)
    if values.get("save_model") is not None:
        check_writable(Path(values["save_model"]))
    tl.fit(adata, **values)
    check_signals()  # a signal whose exception was swallowed during training stops the run here
    key = values.get("key_added", "scae")
    _log(adata, key, args, values, started, t0)
    defer_signals()  # from here a signal is acted on right before OUT is renamed, never inside the writer
    write_fcs_outputs(adata, fcs, key=key, layer=values.get("layer"))
    write_output(adata, out, fmt)
    logger.info("wrote %s in %.1fs", out, time.perf_counter() - t0)
    return 0


def _transform(args: argparse.Namespace) -> int:
    from . import tl
    from ._model import SAUCIE

    started, t0 = time.time(), time.perf_counter()
    flags = {
        "batch_key": args.batch_key,
        "fine_tune_epochs": args.fine_tune_epochs,
        "random_state": args.seed,
        "key_added": args.key_added,
        "progress": False if args.quiet else None,
    }
    values, cfg = _options(args, tl.transform, flags)
    out = Path(args.output)
    fmt = output_format(out, args.input, model=args.model)
    adata = read_input(args.input, all_channels=args.all_channels, compensate=args.compensate)
    fcs = {} if args.fcs_dir is None else fcs_outputs(adata, args.fcs_dir, args.input, out)
    model = SAUCIE.load(args.model, device=args.device or "auto", deterministic=args.deterministic)
    arcsinh_input(adata, args.arcsinh, model.layer)
    tl.transform(model, adata, **values)
    check_signals()
    key = values.get("key_added", "scae")
    _log(adata, key, args, values, started, t0)
    adata.uns[key]["model"] = str(Path(args.model).resolve())
    defer_signals()
    write_fcs_outputs(adata, fcs, key=key, layer=model.layer)
    write_output(adata, out, fmt)
    logger.info("wrote %s in %.1fs", out, time.perf_counter() - t0)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the ``scae`` command."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="scae", description="SAUCIE-style autoencoder for single-cell data.")
    parser.add_argument("--version", action="version", version=f"scae {__version__}")
    parser.add_argument(
        "-v", "--verbosity", type=int, default=1, choices=VERBOSITY, help="0 errors, 1 info, 2 debug (stderr)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="fit the bundled CytoNorm CyTOF data; write scae_demo.h5ad and scae_demo.png")
    demo.add_argument("--out-dir", default=".", help="folder for the outputs (default: current folder)")
    demo.add_argument("--max-epochs", type=int, default=None, help="default: until the loss has converged")
    add_common_args(demo)
    demo.set_defaults(func=_demo)

    fit = sub.add_parser(
        "fit",
        help="fit IN (.h5ad, .zarr or .fcs files) and write all outputs to OUT (.h5ad or .zarr)",
        description="Flags override the config file; config keys are exactly the arguments of scae.tl.fit.",
    )
    add_input_args(fit)
    fit.add_argument("output", help="output .h5ad or .zarr (written beside it under a temporary name, then renamed)")
    fit.add_argument("--config", default=None, help="params.toml or params.yaml with scae.tl.fit arguments")
    fit.add_argument("--layer", default=None)
    fit.add_argument("--batch-key", default=None)
    fit.add_argument("--gene-sets", default=None, help="GMT file passed as scae.tl.fit(gene_sets=...)")
    fit.add_argument("--save-model", default=None, metavar="DIR", help="save the trained model to DIR")
    fit.add_argument("--max-epochs", type=int, default=None, help="default: until the loss has converged")
    fit.add_argument(
        "--hidden", type=positive_int, nargs="+", default=None, metavar="W", help="encoder widths (default 256 128 64)"
    )
    fit.add_argument("--batch-size", type=positive_int, default=None, help="minibatch (default 512 CPU, 4096 CUDA)")
    fit.add_argument("--precision", choices=["32", "bf16"], default=None, help="bf16 autocast, for GPUs (default 32)")
    fit.add_argument("--likelihood", default=None, help="mse (default), nb, zinb or bernoulli (one for every block)")
    fit.add_argument("--block-key", default=None, help="adata.var column naming feature blocks")
    fit.add_argument(
        "--merge-threshold",
        type=float,
        default=None,
        help="merge distance of code clusters (default 2.3; larger: fewer)",
    )
    fit.add_argument("--n-clusters", type=int, default=None, help="exact number of clusters (overrides the threshold)")
    fit.add_argument("--key-added", default=None, help="prefix of every key written (default scae)")
    fit.add_argument(
        "--deterministic", action="store_true", default=None, help="bit-identical reruns on CUDA too (slower)"
    )
    add_common_args(fit)
    fit.set_defaults(func=_fit)

    tr = sub.add_parser(
        "transform",
        help="map IN (.h5ad, .zarr or .fcs files) onto a saved model; embedding, codes, clusters, imputed into OUT",
        description="Flags override the config file; config keys are exactly the arguments of scae.tl.transform.",
    )
    tr.add_argument("model", help="model folder written by `scae fit --save-model` or SAUCIE.save")
    add_input_args(tr)
    tr.add_argument("output", help="output .h5ad or .zarr (written beside it under a temporary name, then renamed)")
    tr.add_argument("--config", default=None, help="params.toml or params.yaml with scae.tl.transform arguments")
    tr.add_argument("--batch-key", default=None)
    tr.add_argument("--fine-tune-epochs", type=int, default=None, help="fine-tune the encoder onto the reference")
    tr.add_argument("--deterministic", action="store_true", help="bit-identical fine-tuning on CUDA too (slower)")
    tr.add_argument("--key-added", default=None, help="prefix of every key written (default scae)")
    add_common_args(tr)
    tr.set_defaults(func=_transform)
    return parser


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Set torch's CPU thread count to ``n`` for the run (restored after); nothing when ``n`` is None."""
    if n is None:
        yield
        return
    import torch

    from ._torch_state import setting

    with setting(torch.get_num_threads, torch.set_num_threads, n):
        yield


def _run(args: argparse.Namespace) -> int:
    """Run the subcommand; on failure remove what it created and turn the error into an exit code."""
    from ._config import ConfigError

    try:
        with remove_created_on_failure(), _threads(args.threads):
            return args.func(args)
    except ConfigError as e:
        if args.verbosity >= 2:
            traceback.print_exc()
        print(f"scae {args.command}: error: {first_line(e)}", file=sys.stderr)
        return 2
    except SignalExit as e:
        print(f"scae {args.command}: stopped by {signal.Signals(e.signum).name}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"scae {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.verbosity >= 2:
            traceback.print_exc()
        print(f"scae {args.command}: error: {first_line(e)}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scae`` command.

    Parameters
    ----------
    argv
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success, 1 on failure, 2 on usage errors (bad flags or config), 130 after Ctrl-C, 143 after
        SIGTERM. Signal handlers for SIGTERM and SIGINT are installed for the run (main thread only) and the
        previous ones restored before returning.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    level = {0: logging.ERROR, 1: logging.INFO, 2: logging.DEBUG}[args.verbosity]
    # scae's messages at the chosen level; other libraries' (h5py, torch, numcodecs) only from warnings up
    logging.basicConfig(
        level=max(level, logging.WARNING), format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    scae_logger = logging.getLogger("scae")
    previous = scae_logger.level
    scae_logger.setLevel(level)
    try:
        with stop_on_signals():  # a stopped run removes its temporary files and the folders it created
            return _run(args)
    finally:
        scae_logger.setLevel(previous)  # (main() called in-process leaves the logger as it found it)


def run() -> None:
    """The ``scae`` console script and ``python -m scae``: :func:`main`, then exit with its code.

    Once a run has succeeded the process only shuts down (interpreter and torch teardown, about half a second):
    SIGTERM and SIGINT are ignored from then on, so a late signal cannot turn a finished run into exit 143.
    """
    code = main()
    if code == 0 and threading.current_thread() is threading.main_thread():
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
