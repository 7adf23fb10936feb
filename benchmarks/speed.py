"""Training speed and peak memory of scae on real CyTOF.

Data: the bundled CytoNorm CyTOF (6,000 cells × 37 markers). Larger sizes are built by resampling its
cells with small Gaussian noise (sd 0.05 in arcsinh units), and are labelled as such in the table.
Each configuration runs in a fresh subprocess so peak RSS is its own.

    python benchmarks/speed.py [--sizes 6000 60000] [--device auto] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def _one(n_cells: int, device: str, epochs: int, batch_size: int) -> dict:
    import resource
    import time

    import numpy as np
    import torch

    import scae

    adata = scae.datasets.cytonorm()
    if n_cells != adata.n_obs:
        rng = np.random.default_rng(0)
        idx = rng.integers(0, adata.n_obs, n_cells)
        X = adata.X[idx] + rng.normal(0, 0.05, (n_cells, adata.n_vars)).astype(np.float32)
        adata = _resampled(adata, X, idx)
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model = scae.SAUCIE(adata, batch_key="batch", batch_size=batch_size, device=device)
    model.train(max_epochs=epochs, progress=False)
    t_embed = time.perf_counter()
    model.get_embedding()
    model.get_clusters()
    t_embed = time.perf_counter() - t_embed
    total = time.perf_counter() - t0
    out = {
        "cells": n_cells,
        "device": str(model.device),
        "train_cells_per_s": model.runtime["train_cells_per_s"],
        "embed_cluster_s": t_embed,
        "total_s": total,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if model.device.type == "cuda" else float("nan"),
    }
    return out


def _resampled(adata, X, idx):
    import anndata as ad

    obs = adata.obs.iloc[idx].reset_index(drop=True)
    obs.index = obs.index.astype(str)
    return ad.AnnData(X, obs=obs, var=adata.var)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[6000, 60000])
    p.add_argument("--device", default="auto")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        print(json.dumps(_one(args.worker, args.device, args.epochs, args.batch_size)))
        return
    rows = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--worker", str(n), "--device", args.device, "--epochs", str(args.epochs)]
        cmd += ["--batch-size", str(args.batch_size)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    print("scae training speed, CytoNorm CyTOF (37 markers, 3 batches, MMD on)")
    print("sizes above 6,000 cells: real cells resampled with N(0, 0.05) noise")
    hdr = f"{'cells':>9} {'device':>7} {'batch':>6} {'train cells/s':>14} {'embed+cluster s':>16} {'peak RSS MB':>12} {'peak GPU MB':>12}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(
            f"{r['cells']:>9,} {r['device']:>7} {args.batch_size:>6} {r['train_cells_per_s']:>14,.0f} "
            f"{r['embed_cluster_s']:>16.2f} {r['peak_rss_mb']:>12.0f} {r['peak_gpu_mb']:>12.0f}"
        )


if __name__ == "__main__":
    main()
