r"""Data-parallel training with ``torch.distributed`` (DDP), launched by ``torchrun``.

Each rank opens the input .h5ad backed (``backed="r"``), streams only its own contiguous shard of rows,
and trains a replica of the network; DDP averages the gradients every step (gloo on CPU, NCCL on GPU).
Feature means/SDs are reduced over all shards first, so every replica standardizes identically. After
training every rank infers its shard; rank 0 gathers the outputs in the original cell order, clusters
and writes OUT.h5ad (``obs``, ``var``, embedding, codes, clusters, imputed layer, ``uns["scae"]``; the
input matrix is not copied unless ``--copy-x``).

One node, all GPUs::

    torchrun --standalone --nproc_per_node gpu -m scae.distributed in.h5ad out.h5ad --batch-key sample

Several nodes (run on every node, same rendezvous endpoint; ``--node_rank`` optional with c10d)::

    torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \
        --rdzv_id scae1 -m scae.distributed /shared/in.h5ad /shared/out.h5ad --batch-key sample

CPU only (gloo): ``torchrun --standalone --nproc_per_node 2 -m scae.distributed in.h5ad out.h5ad``.
Without torchrun the same command trains in one process. ``--batch-size`` is the global minibatch:
each rank draws ``batch_size // world_size`` cells per step, so the number of steps and the gradient
noise match a single-process run with the same arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from . import _backed, _settings, cluster
from ._atomic import write_h5ad_atomic
from ._contract import stats_entries, uns_record
from ._stopping import StopRule, step_budget
from .nn.network import SAUCIENet
from .train import INFER_CHUNK_ROWS, LossWeights, train_net


class _DDP(DistributedDataParallel):
    """DDP that also exposes the helpers of :class:`SAUCIENet` used by the loss (``encoder_input``, ``heads``,
    ``standardized_prediction``, ...); the forward pass itself goes through DDP so gradients are synchronized.
    """

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":
                raise
            return getattr(self.module, name)


def _setup(backend: str) -> tuple[int, int, torch.device]:
    """Join the process group started by torchrun (or run alone); return rank, world size and device."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() and backend != "gloo" else "cpu")
    use_cuda = torch.cuda.is_available() and backend != "gloo"
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def _allreduce(t: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(t)
    return t


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous rows ``[start, stop)`` of ``rank`` (sizes differ by at most one)."""
    return rank * n // world, (rank + 1) * n // world


def global_moments(X, start: int, stop: int, world: int, device: torch.device, where: str):
    """Feature mean/SD over all shards (float64 sums all-reduced); ValueError on non-finite data anywhere."""
    p = X.shape[1]
    acc = torch.zeros(2 * p + 1, dtype=torch.float64)
    rows = _backed.default_chunk_rows(p)
    for a in range(start, stop, rows):
        block = _backed.read_rows(X, a, min(a + rows, stop)).astype(np.float64)
        finite = np.isfinite(block)
        acc[-1] += float(block.size - np.count_nonzero(finite))
        block = np.where(finite, block, 0.0)
        acc[:p] += torch.from_numpy(block.sum(0))
        acc[p : 2 * p] += torch.from_numpy((block**2).sum(0))
    acc = _allreduce(acc.to(device), world).cpu()
    if acc[-1] > 0:
        msg = f"{where} contains {int(acc[-1])} non-finite values; remove or impute them first"
        raise ValueError(msg)
    n = X.shape[0]
    mean = (acc[:p] / n).numpy()
    std = np.sqrt(np.clip((acc[p : 2 * p] / n).numpy() - mean**2, 0, None))
    std[std < 1e-6] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


@torch.no_grad()
def _infer_shard(net: SAUCIENet, source) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {"embedding": [], "codes": [], "reconstruction": []}
    for x in source.chunks(min(source.block_rows, INFER_CHUNK_ROWS)):
        out = net(x)
        parts["embedding"].append(out.embedding.float().cpu().numpy())
        parts["codes"].append(out.codes.float().cpu().numpy())
        parts["reconstruction"].append(out.reconstruction.float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def _check_args(args: argparse.Namespace) -> None:
    """The settings of :mod:`scae._settings` that this entry point shares with ``scae.tl.fit``, before any work."""
    table = {"hidden": _settings.hidden_widths, "max_epochs": _settings.MAX_EPOCHS, "batch_size": _settings.integer(2)}
    table.update({k: _settings.FIT[k] for k in ("learning_rate", "lambda_b", "lambda_c", "lambda_d", "block_rows")})
    table.update(merge_threshold=_settings.FIT["merge_threshold"], seed=_settings.FIT["random_state"])
    _settings.check_table(table, vars(args))  # the messages name `batch_size` for --batch-size, etc.


def run(args: argparse.Namespace) -> dict:
    """Train on this rank's shard; rank 0 writes the output. Returns rank 0's summary (``{}`` elsewhere)."""
    import anndata as ad

    from . import data

    t0 = time.perf_counter()
    _check_args(args)
    rank, world, device = _setup(args.backend)
    try:
        adata = ad.read_h5ad(args.input, backed="r")
        X = data.get_matrix(adata, args.layer)
        if not _backed.is_backed(X):
            msg = f"{args.layer!r} is not stored as a dense or CSR matrix in {args.input}"
            raise ValueError(msg)
        n = X.shape[0]
        if n < 2 * world:
            msg = f"{n} cells cannot be split over {world} ranks"
            raise ValueError(msg)
        start, stop = shard_bounds(n, rank, world)
        where = "X" if args.layer is None else f"layers[{args.layer!r}]"
        mean, std = global_moments(X, start, stop, world, device, where)
        batches = data.get_batches(adata, args.batch_key)
        torch.manual_seed(args.seed)
        net = SAUCIENet(
            X.shape[1], hidden=args.hidden, feature_mean=torch.from_numpy(mean), feature_std=torch.from_numpy(std)
        ).to(device)
        model = _DDP(net, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else net
        source = _backed.BackedRowSource(X, device, block_rows=args.block_rows, start=start, stop=stop)
        per_rank = max(2, args.batch_size // world)
        source.steps = math.ceil(math.ceil(n / world) / per_rank)
        codes = None
        n_batches, reference = 1, 0
        if batches is not None:
            codes = torch.from_numpy(batches.codes[start:stop]).to(device)
            n_batches, reference = len(batches.categories), batches.reference
        weights = LossWeights(
            lambda_b=args.lambda_b if batches is not None else 0.0, lambda_c=args.lambda_c, lambda_d=args.lambda_d
        )

        def reduce_history(means: dict[str, float]) -> dict[str, float]:
            keys = sorted(means)
            t = _allreduce(torch.tensor([means[k] for k in keys], dtype=torch.float64, device=device), world)
            return {k: float(v) / world for k, v in zip(keys, t.cpu(), strict=True)}

        stop = None if args.max_epochs is not None else StopRule(max_steps=step_budget(n, args.batch_size))
        t1 = time.perf_counter()
        result = train_net(
            model,
            source,
            batch_codes=codes,
            n_batches=n_batches,
            reference=reference,
            weights=weights,
            max_epochs=args.max_epochs,
            batch_size=per_rank,
            learning_rate=args.learning_rate,
            generator=torch.Generator(device=device).manual_seed(args.seed + 1000 * rank),
            progress=False,
            reduce_history=reduce_history,
            stop=stop,
        )
        t_train = time.perf_counter() - t1
        shard = _infer_shard(net, source)
        gathered = [None] * world if rank == 0 else None
        if world > 1:
            dist.gather_object(shard, gathered, dst=0)
        else:
            gathered = [shard]
        if rank != 0:
            return {}
        out = {k: np.concatenate([g[k] for g in gathered]) for k in shard}
        labels = cluster.codes_to_clusters(
            out["codes"],
            out["reconstruction"],
            merge_features=X,
            merge_scale=cluster.common_scale(std),
            merge_threshold=args.merge_threshold,
        )
        summary = _write(adata, X, batches, args, out, labels, mean, std, result, world, device, t_train, t0)
        return summary
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _write(adata, X, batches, args, out, labels, mean, std, result, world, device, t_train, t0) -> dict:
    import anndata as ad
    import pandas as pd

    k = int(labels.max()) + 1
    res = ad.AnnData(
        X=adata.to_memory().X if args.copy_x else None,
        obs=adata.obs.copy(),
        var=adata.var.copy(),
    )
    res.obsm["X_scae"] = out["embedding"]
    res.obsm["X_scae_codes"] = out["codes"]
    res.obs["scae_cluster"] = pd.Categorical.from_codes(labels, categories=[str(i) for i in range(k)])
    res.layers["scae_imputed"] = (out["reconstruction"] * std + mean).astype(np.float32)
    history = result.history
    runtime = {
        "train_s": t_train,
        "epochs": result.epochs,
        "steps": result.steps,
        "stop_reason": result.stop_reason,
        "train_cells_per_s": result.steps * args.batch_size / t_train,
    }
    record = uns_record(
        mode="distributed",
        params={name: (list(v) if isinstance(v, tuple | list) else v) for name, v in vars(args).items()},
        history=history,
        seed=args.seed,
        device=device,
        runtime=runtime,
        n_clusters=k,
        input_sparse=getattr(X, "format", None) == "csr",
        out_path=args.output,
        world_size=world,
        batch_categories=None if batches is None else batches.categories,
        reference_batch=None if batches is None else batches.categories[batches.reference],
    )
    labels = res.obs["scae_cluster"].values
    record.update(stats_entries(X, labels, adata.var_names, groupby="scae_cluster", layer=args.layer))
    record["runtime"]["total_s"] = time.perf_counter() - t0
    res.uns["scae"] = record
    write_h5ad_atomic(res, Path(args.output))
    return {"world_size": world, "loss": history["total"][-1], "n_clusters": k, **record["runtime"]}


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m scae.distributed`` (under torchrun)."""
    p = argparse.ArgumentParser(
        prog="scae.distributed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("input", help="input .h5ad (read backed; X or --layer dense or CSR)")
    p.add_argument("output", help="output .h5ad written by rank 0 (atomically)")
    p.add_argument("--layer", default=None)
    p.add_argument("--batch-key", default=None)
    p.add_argument(
        "--max-epochs", type=int, default=None, help="passes over the data (default: until the loss converges)"
    )
    p.add_argument("--batch-size", type=int, default=256, help="global minibatch size (split over ranks)")
    p.add_argument("--hidden", type=int, nargs="+", default=[512, 256, 128])
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--lambda-b", type=float, default=0.1)
    p.add_argument("--lambda-c", type=float, default=0.1)
    p.add_argument("--lambda-d", type=float, default=0.2)
    p.add_argument("--merge-threshold", type=float, default=cluster.DEFAULT_MERGE_THRESHOLD)
    p.add_argument("--block-rows", type=int, default=None, help="rows per block read from disk")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=["auto", "gloo", "nccl"], default="auto", help="auto: nccl on GPU, gloo on CPU")
    p.add_argument("--copy-x", action="store_true", help="also copy the input matrix into the output")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; prints rank 0's summary as one JSON line."""
    args = build_parser().parse_args(argv)
    summary = run(args)
    if summary:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
