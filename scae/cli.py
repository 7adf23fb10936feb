"""The ``scae`` command: ``scae demo`` and ``scae fit IN.h5ad OUT.h5ad``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

logger = logging.getLogger("scae")


def _write_atomic(adata, out: Path) -> None:
    """Write to a temporary file beside ``out`` and rename it, so a failed run leaves no half-written file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _demo(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import datasets, pl, tl

    out_dir = Path(args.out_dir)
    adata = datasets.cytonorm()
    print(
        f"scae demo: CytoNorm example CyTOF, {adata.n_obs} cells x {adata.n_vars} markers, "
        f"{adata.obs['batch'].nunique()} batches (arcsinh, cofactor 5)"
    )
    tl.fit(
        adata,
        batch_key="batch",
        random_state=args.seed,
        device=args.device,
        max_epochs=args.max_epochs,
        progress=not args.quiet,
    )
    info = adata.uns["scae"]
    rt = info["runtime"]
    h5ad = out_dir / "scae_demo.h5ad"
    png = out_dir / "scae_demo.png"
    _write_atomic(adata, h5ad)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    pl.embedding(adata, color="scae_cluster", ax=axes[0], show=False, title="scae clusters")
    pl.embedding(adata, color="batch", ax=axes[1], show=False, title="batch (after MMD correction)")
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)
    print(f"device: {info['device']}")
    print(f"training: {rt['epochs']} epochs, {rt['train_s']:.1f} s, {rt['train_cells_per_s']:,.0f} cells/s")
    print(f"clusters: {info['n_clusters']}")
    print(f"loss: {info['history']['total'][0]:.4f} (first epoch) -> {info['history']['total'][-1]:.4f} (last epoch)")
    print(f"wrote {h5ad} and {png}")
    return 0


def _fit(args: argparse.Namespace) -> int:
    import anndata as ad

    from . import tl

    src = Path(args.input)
    if not src.is_file():
        msg = f"input file not found: {src}"
        raise FileNotFoundError(msg)
    t0 = time.perf_counter()
    adata = ad.read_h5ad(src)
    tl.fit(
        adata,
        layer=args.layer,
        batch_key=args.batch_key,
        likelihood=args.likelihood,
        block_key=args.block_key,
        random_state=args.seed,
        device=args.device,
        max_epochs=args.max_epochs,
        progress=not args.quiet,
    )
    _write_atomic(adata, Path(args.output))
    logger.info("wrote %s in %.1fs", args.output, time.perf_counter() - t0)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the ``scae`` command."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="scae", description="SAUCIE-style autoencoder for single-cell data.")
    parser.add_argument("--version", action="version", version=f"scae {__version__}")
    parser.add_argument("-v", "--verbosity", type=int, default=1, help="0 errors, 1 info, 2 debug (stderr)")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--seed", type=int, default=0, help="random_state (default 0)")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
        p.add_argument("--max-epochs", type=int, default=None, help="default: about 3000 optimizer steps")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    demo = sub.add_parser("demo", help="fit the bundled CytoNorm CyTOF data; write scae_demo.h5ad and scae_demo.png")
    demo.add_argument("--out-dir", default=".", help="folder for the outputs (default: current folder)")
    common(demo)
    demo.set_defaults(func=_demo)

    fit = sub.add_parser("fit", help="fit IN.h5ad and write all outputs to OUT.h5ad")
    fit.add_argument("input", help="input .h5ad")
    fit.add_argument("output", help="output .h5ad (written atomically)")
    fit.add_argument("--layer", default=None)
    fit.add_argument("--batch-key", default=None)
    fit.add_argument("--likelihood", default="mse", help="mse, nb, zinb or bernoulli (one for every block)")
    fit.add_argument("--block-key", default=None, help="adata.var column naming feature blocks")
    common(fit)
    fit.set_defaults(func=_fit)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0 on success, 1 on failure, 2 on usage errors."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.ERROR, 1: logging.INFO}.get(args.verbosity, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError, OSError, RuntimeError) as e:
        print(f"scae {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
