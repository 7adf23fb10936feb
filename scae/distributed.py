r"""``scae fit`` under torchrun: the same fit, options and defaults, on many processes (DDP).

Under torchrun, ``scae fit IN OUT`` (and ``python -m scae.distributed IN OUT``, kept for its flags) opens IN
backed (``backed="r"``); every rank trains a replica of the network on its own contiguous shard of rows, DDP
averages the gradients every step (gloo on CPU, NCCL on GPU), the convergence rule sees the loss averaged
over ranks, and rank 0 receives every rank's output chunks, clusters them with the same accumulator as a
single-process fit and writes OUT (``obs``, ``var``, embedding, codes, clusters, imputed layer, gene-set
activities, ``uns["scae"]`` with ``mode="distributed"``; the input matrix only with ``--copy-x``). Every option
of ``scae.tl.fit`` works: set it in ``--config`` (TOML/YAML keys = ``tl.fit`` arguments) or by flag.

One node, all GPUs::

    torchrun --standalone --nproc_per_node gpu -m scae fit in.h5ad out.h5ad --batch-key sample

Several nodes (run on every node, same rendezvous endpoint)::

    torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \
        --rdzv_id scae1 -m scae fit /shared/in.h5ad /shared/out.h5ad --config params.toml

CPU only (gloo): ``torchrun --standalone --nproc_per_node 2 -m scae.distributed in.h5ad out.h5ad``.
Without torchrun the same command is a backed single-process fit. ``batch_size`` is the global minibatch:
each rank draws ``batch_size // world_size`` cells per step, so the number of steps and the gradient
noise match a single-process run with the same arguments.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from . import _dist
from ._atomic import atomic_path, make_dirs
from ._dist import shard_bounds

__all__ = ["build_parser", "fit_file", "main", "run", "shard_bounds"]


def fit_file(input_path, output_path, values: dict, *, backend: str = "auto", copy_x: bool = False) -> dict:
    """``scae.tl.fit`` of the backed file ``input_path`` with ``values`` (checked ``tl.fit`` arguments), the
    results written to ``output_path`` by rank 0. Returns rank 0's summary (``{}`` on other ranks).
    """
    import anndata as ad

    from . import data, tl

    group = _dist.join(backend)
    try:
        adata = ad.read_h5ad(input_path, backed="r")
        layer = values.get("layer")
        if not data.is_backed(data.get_matrix(adata, layer)):
            msg = f"{'X' if layer is None else repr(layer)} is not stored as a dense or CSR matrix in {input_path}"
            raise ValueError(msg)
        world = 1 if group is None else group.world
        if adata.n_obs < 2 * world:
            msg = f"{adata.n_obs} cells cannot be split over {world} ranks"
            raise ValueError(msg)
        make_dirs(Path(output_path).parent)
        tl.fit(adata, **{**values, "out_path": str(output_path)})
        if group is not None and not group.is_main:
            return {}
        if copy_x:
            _copy_matrix(input_path, output_path)
        info = adata.uns[values.get("key_added", "scae")]
        return {"world_size": world, "loss": float(info["history"]["total"][-1]), "n_clusters": int(info["n_clusters"]),
                **{k: v for k, v in info["runtime"].items() if isinstance(v, int | float | str)}}  # fmt: skip
    finally:
        _dist.leave()


def _copy_matrix(input_path, output_path) -> None:
    """Copy the input's ``X`` into the written output, atomically (a copy gets ``X``, then replaces the output)."""
    import h5py

    with atomic_path(output_path) as tmp:
        shutil.copyfile(output_path, tmp)
        with h5py.File(input_path, "r") as src, h5py.File(tmp, "a") as dst:
            if "X" in dst:
                del dst["X"]
            src.copy(src["X"], dst, "X")


#: Flags of ``python -m scae.distributed`` and the ``tl.fit`` arguments they set.
FLAGS = {
    "layer": "layer", "batch_key": "batch_key", "max_epochs": "max_epochs", "batch_size": "batch_size",
    "hidden": "hidden", "learning_rate": "learning_rate", "lambda_b": "lambda_b", "lambda_c": "lambda_c",
    "lambda_d": "lambda_d", "merge_threshold": "merge_threshold", "n_clusters": "n_clusters",
    "block_rows": "block_rows",
    "seed": "random_state", "likelihood": "likelihood", "block_key": "block_key", "gene_sets": "gene_sets",
    "save_model": "save_model", "device": "device",
}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m scae.distributed`` (under torchrun); ``--config`` sets any ``tl.fit`` argument."""
    p = argparse.ArgumentParser(
        prog="scae.distributed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("input", help="input .h5ad (read backed; X or --layer dense or CSR)")
    p.add_argument("output", help="output .h5ad written by rank 0 (atomically)")
    p.add_argument("--config", default=None, help="params.toml or params.yaml with scae.tl.fit arguments")
    for flag in ("layer", "batch-key", "likelihood", "block-key", "gene-sets", "save-model", "device"):
        p.add_argument(f"--{flag}", default=None)
    for flag in ("max-epochs", "batch-size", "n-clusters", "block-rows", "seed"):
        p.add_argument(f"--{flag}", type=int, default=None)
    for flag in ("learning-rate", "lambda-b", "lambda-c", "lambda-d", "merge-threshold"):
        p.add_argument(f"--{flag}", type=float, default=None)
    p.add_argument("--hidden", type=int, nargs="+", default=None)
    p.add_argument("--backend", choices=["auto", "gloo", "nccl"], default="auto", help="auto: nccl on GPU, gloo on CPU")
    p.add_argument("--copy-x", action="store_true", help="also copy the input matrix into the output")
    return p


def options(args: argparse.Namespace) -> dict:
    """The checked ``tl.fit`` arguments of parsed flags and ``--config`` (flags win), before any data is read."""
    from . import _settings, tl
    from ._config import resolve

    flags = {FLAGS[k]: v for k, v in vars(args).items() if k in FLAGS}
    values, _ = resolve(args.config, tl.fit, flags, _settings.FIT)
    values.setdefault("progress", False)
    return values


def run(args: argparse.Namespace) -> dict:
    """Check the settings, then fit (see :func:`fit_file`); returns rank 0's summary (``{}`` elsewhere)."""
    values = options(args)
    return fit_file(args.input, args.output, values, backend=args.backend, copy_x=args.copy_x)


def main(argv: list[str] | None = None) -> int:
    """Entry point; prints rank 0's summary as one JSON line."""
    args = build_parser().parse_args(argv)
    summary = run(args)
    if summary:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
