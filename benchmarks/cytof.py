"""Clustering of labelled cytometry: scae vs FlowSOM vs Leiden, and embed+cluster time up to 1M cells.

Data (real, from the shared data directory):
- flowsom_bal: mouse BAL flow cytometry, 19,225 cells × 8 markers (compensated, logicle), 7 manual gates;
  "Unlabeled" cells are clustered but excluded from scoring.
- levine3k: Levine 2015 CyTOF bone marrow, 3,000 cells × 23 markers (arcsinh/5), 3 reference groups.
- bal_rare_B, bal_rare_NK (only when named in ``--datasets``): flowsom_bal with the B cells (a distinct
  CD19+ population) or the NK cells subsampled to 0.5% of the cells (84 / 95 cells), a rare population.
  The extra column "rare F1" is the F1 of the cluster that best matches that gate (0 when no cluster holds
  it); the F1 column still matches every gate one to one.

Every method sees the same input: the marker channels in ``adata.X``. Rows:
- scae: default automatic cluster count (``scae.tl.fit`` defaults).
- scae k=gates: the same trained models, merge tree cut into as many clusters as there are gates.
- FlowSOM: the ``flowsom`` package, 10×10 SOM, metaclusters = number of gates.
- Leiden: scanpy kNN graph (15 neighbours) on the markers, Leiden resolution 1.
Each row is the mean over seeds 0, 1, 2 (± sd for F1; min–max cluster count). F1 is the mean F1 over gates
after Hungarian one-to-one matching of clusters to gates (FlowCAP / Weber & Robinson 2016). Time and
peak memory are per fit (peak RSS of a fresh subprocess running that method, imports included); FlowSOM and
the scanpy steps are first run once on 500 cells, untimed, so numba compilation is not counted.

Scaling: flowsom_bal cells resampled with Gaussian noise (sd 0.05) to n cells. scae trains once, with
the default number of steps, on ``--n-train`` (100,000) of the resampled cells (training time does not
grow with n: it is a fixed number of minibatch steps), then embeds and clusters all n cells; its total
includes that training time. scanpy: PCA (7 components) + neighbors + UMAP + Leiden; sizes above ``--scanpy-max`` are
extrapolated linearly from the largest measured size (marked "extrap."), which favours scanpy since kNN
search grows faster than linearly.

    python benchmarks/cytof.py [--seeds 0 1 2] [--sizes 10000 100000 1000000] [--scanpy-max 100000]
                               [--steps N] [--hidden 64 32 16] [--batch-size 4096]
                               [--datasets flowsom_bal levine3k bal_rare_B bal_rare_NK]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

#: scae encoder widths; ``--hidden`` sets it in every worker (default: scae's default, :func:`_default_hidden`).
HIDDEN: tuple[int, ...] | None = None
#: scae minibatch size; ``--batch-size`` sets it in every worker (default: scae's, 512 on the CPU).
BATCH_SIZE: int | None = None
DATASETS = {
    "flowsom_bal": ("cell_type", "Unlabeled"),
    "levine3k": ("phenograph_cluster", None),
    "bal_rare_B": ("cell_type", "Unlabeled"),
    "bal_rare_NK": ("cell_type", "Unlabeled"),
}
#: Rare-population variants of flowsom_bal: this gate's cells subsampled (seed 0) to RARE_SHARE of all cells.
RARE = {"bal_rare_B": "B cells", "bal_rare_NK": "NK cells"}
RARE_SHARE = 0.005


def _load(name: str):
    import numpy as np

    import scae

    if name == "levine3k":
        return scae.datasets.levine3k()
    adata = scae.datasets.flowsom_bal()
    if name not in RARE:
        return adata
    gate = adata.obs["cell_type"].astype(str).to_numpy() == RARE[name]
    n_keep = round(RARE_SHARE * np.count_nonzero(~gate) / (1 - RARE_SHARE))
    kept = np.random.default_rng(0).choice(np.flatnonzero(gate), n_keep, replace=False)
    return adata[np.sort(np.concatenate([np.flatnonzero(~gate), kept]))].copy()


def _rare_f1(truth, labels, gate: str) -> float:
    """F1 of the cluster that best matches ``gate`` (not one-to-one: is the rare population found at all?)."""
    import numpy as np

    in_gate, best = truth == gate, 0.0
    for c in np.unique(labels):
        hit = np.count_nonzero(in_gate & (labels == c))
        best = max(best, 2 * hit / (np.count_nonzero(in_gate) + np.count_nonzero(labels == c)))
    return best


def _default_hidden() -> tuple[int, ...]:
    """The encoder widths of a default ``scae.SAUCIE`` / ``scae.tl.fit``."""
    import inspect

    import scae

    return tuple(inspect.signature(scae.SAUCIE).parameters["hidden"].default)


def _epochs(n_cells: int, steps: int | None) -> int | None:
    """Epochs giving about ``steps`` minibatch steps (of ``BATCH_SIZE`` or scae's CPU default); ``None`` keeps scae's
    default (its step budget)."""
    from scae._fast import DEFAULT_BATCH_SIZE
    from scae._pipeline import default_max_epochs

    return None if steps is None else default_max_epochs(n_cells, BATCH_SIZE or DEFAULT_BATCH_SIZE["cpu"], steps)


def flowsom_input(adata):
    """Copy for FlowSOM 0.2, which writes into arrays of ``adata.var``: pandas 3 (copy-on-write) hands those out
    read-only, categorical columns come back as fresh writable arrays."""
    import pandas as pd

    out = adata.copy()
    out.var["channel"] = pd.Categorical(out.var_names)
    out.var["marker"] = pd.Categorical(out.var_names)
    return out


def _warm_up(method: str, adata, seed: int) -> None:
    """Run a method once on 500 cells, untimed, so numba compilation is not counted in its run time."""
    small = adata[:500].copy()
    if method == "flowsom":
        import flowsom as fs

        fs.FlowSOM(flowsom_input(small), n_clusters=3, xdim=4, ydim=4, seed=seed)
    elif method == "leiden":
        import scanpy as sc

        sc.pp.neighbors(small, n_neighbors=15, use_rep="X")
        sc.tl.leiden(small, flavor="igraph", n_iterations=2)
    elif method == "scanpy":
        import scanpy as sc

        sc.pp.pca(small, n_comps=min(50, small.n_vars - 1))
        sc.pp.neighbors(small, n_neighbors=15)
        sc.tl.umap(small)
        sc.tl.leiden(small, flavor="igraph", n_iterations=2)


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _score(adata, labels, dataset: str) -> dict:
    import numpy as np

    from scae.metrics import cluster_scores

    key, exclude = DATASETS[dataset]
    truth = adata.obs[key].astype(str).to_numpy()
    keep = truth != exclude if exclude is not None else np.ones(truth.size, bool)
    scores = cluster_scores(truth[keep], np.asarray(labels).astype(str)[keep])
    scores["n_clusters"] = int(len(np.unique(labels)))  # clusters over all cells, not only scored ones
    scores["rare_f1"] = _rare_f1(truth, np.asarray(labels).astype(str), RARE[dataset]) if dataset in RARE else np.nan
    return scores


def _n_gates(adata, dataset: str) -> int:
    """Number of populations, "Unlabeled" included: those cells are clustered too (7 for flowsom_bal)."""
    key, _ = DATASETS[dataset]
    return int(adata.obs[key].astype(str).nunique())


def _quality_worker(method: str, dataset: str, seeds: list[int], steps: int | None = None) -> list[dict]:
    import logging
    import os
    import time
    import warnings

    import numpy as np

    warnings.filterwarnings("ignore")
    adata = _load(dataset)
    k = _n_gates(adata, dataset)
    if method == "flowsom":
        from loguru import logger as loguru_logger

        loguru_logger.remove()
    logging.getLogger("scanpy").setLevel(logging.ERROR)
    _warm_up(method, adata, seeds[0])
    rows = []
    for seed in seeds:
        if method == "scae":
            import scae

            t0 = time.perf_counter()
            model = scae.SAUCIE(adata, random_state=seed, hidden=HIDDEN, batch_size=BATCH_SIZE)
            model.train(_epochs(adata.n_obs, steps), progress=False)
            t_train = time.perf_counter() - t0
            t1 = time.perf_counter()
            auto = model.get_clusters()
            t_auto = time.perf_counter() - t1
            t2 = time.perf_counter()
            fixed = model.get_clusters(n_clusters=k)
            t_fixed = time.perf_counter() - t2
            if os.environ.get("SCAE_BENCH_SAVE"):  # keep the trained outputs to study clustering offline
                out = model.outputs()
                np.savez(f"{os.environ['SCAE_BENCH_SAVE']}/{dataset}_{seed}.npz", **out)
            rows.append(
                {"method": "scae (auto)", "seed": seed, "time_s": t_train + t_auto, **_score(adata, auto, dataset)}
            )
            rows.append(
                {"method": f"scae (k={k})", "seed": seed, "time_s": t_train + t_fixed, **_score(adata, fixed, dataset)}
            )
        elif method == "flowsom":
            import flowsom as fs

            t0 = time.perf_counter()
            try:
                fsom = fs.FlowSOM(flowsom_input(adata), n_clusters=k, xdim=10, ydim=10, seed=seed)
            except ValueError as e:  # FlowSOM 0.2.2 on pandas 3 writes into a read-only array when a node is empty
                if "read-only" not in str(e):
                    raise
                print(f"FlowSOM seed {seed} failed on this pandas (a FlowSOM bug): {e}", flush=True)
                continue
            labels = fsom.get_cell_data().obs["metaclustering"].to_numpy()
            rows.append(
                {
                    "method": f"FlowSOM (k={k})",
                    "seed": seed,
                    "time_s": time.perf_counter() - t0,
                    **_score(adata, labels, dataset),
                }
            )
        elif method == "leiden":
            import scanpy as sc

            a = adata.copy()
            t0 = time.perf_counter()
            sc.pp.neighbors(a, n_neighbors=15, use_rep="X", random_state=seed)
            sc.tl.leiden(a, resolution=1.0, flavor="igraph", n_iterations=2, random_state=seed)
            rows.append(
                {
                    "method": "Leiden (res 1)",
                    "seed": seed,
                    "time_s": time.perf_counter() - t0,
                    **_score(adata, a.obs["leiden"], dataset),
                }
            )
        else:
            msg = f"unknown method {method!r}"
            raise ValueError(msg)
    for r in rows:
        r["peak_mb"] = _peak_mb()
        r["dataset"] = dataset
    return rows


def _resampled(n: int):
    import anndata as ad
    import numpy as np

    base = _load("flowsom_bal")
    rng = np.random.default_rng(0)
    idx = rng.integers(0, base.n_obs, n)
    X = base.X[idx] + rng.normal(0, 0.05, (n, base.n_vars)).astype(np.float32)
    return ad.AnnData(X.astype(np.float32), var=base.var.copy())


def _scae_scaling(sizes: list[int], n_train: int, steps: int | None = None) -> list[dict]:
    """One training run on ``n_train`` resampled cells, then embed + cluster the first n cells for each size."""
    import time
    import warnings

    import scae
    from scae.cluster import codes_to_clusters, common_scale
    from scae.data import RowSource
    from scae.train import infer

    warnings.filterwarnings("ignore")
    full = _resampled(max(sizes))
    t0 = time.perf_counter()
    model = scae.SAUCIE(full[: min(n_train, full.n_obs)].copy(), random_state=0, hidden=HIDDEN, batch_size=BATCH_SIZE)
    model.train(_epochs(model.n_cells, steps), progress=False)
    train_s = time.perf_counter() - t0
    mean, std = model.net.feature_mean.cpu().numpy(), model.net.feature_std.cpu().numpy()
    rows = []
    for n in sorted(sizes):
        t1 = time.perf_counter()
        out = infer(model.net, RowSource(full.X[:n], model.device))  # what SAUCIE.get_embedding/get_clusters run
        features = (out["reconstruction"] - mean) / std
        labels = codes_to_clusters(out["codes"], features, merge_features=full.X[:n], merge_scale=common_scale(std))
        embed_cluster_s = time.perf_counter() - t1
        rows.append(
            {
                "method": "scae",
                "cells": n,
                "train_s": train_s,
                "embed_cluster_s": embed_cluster_s,
                "total_s": train_s + embed_cluster_s,
                "n_clusters": int(labels.max()) + 1,
                "steps": model.runtime["steps"],
                "n_train": model.n_cells,
                "peak_mb": _peak_mb(),
            }
        )
        del out, features, labels
    return rows


def _scanpy_scaling(n: int) -> dict:
    import logging
    import time
    import warnings

    import scanpy as sc

    warnings.filterwarnings("ignore")
    logging.getLogger("scanpy").setLevel(logging.ERROR)
    adata = _resampled(n)
    _warm_up("scanpy", adata, 0)
    t0 = time.perf_counter()
    sc.pp.pca(adata, n_comps=min(50, adata.n_vars - 1), random_state=0)
    sc.pp.neighbors(adata, n_neighbors=15, random_state=0)
    sc.tl.umap(adata, random_state=0)
    sc.tl.leiden(adata, resolution=1.0, flavor="igraph", n_iterations=2, random_state=0)
    return {
        "method": "scanpy",
        "cells": n,
        "total_s": time.perf_counter() - t0,
        "n_clusters": int(adata.obs["leiden"].nunique()),
        "peak_mb": _peak_mb(),
    }


def _run(args: list[str]):
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stderr)
        msg = f"worker {args} failed (exit {res.returncode})"
        raise RuntimeError(msg)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _quality_table(rows: list[dict]) -> str:
    import pandas as pd

    df = pd.DataFrame(rows)
    lines = [
        f"{'dataset':<12} {'method':<16} {'F1':>13} {'ARI':>6} {'NMI':>6} {'clusters':>9} {'time_s':>7} {'peak_MB':>8}"
        f" {'rare F1':>14}"
    ]
    for (dataset, method), g in df.groupby(["dataset", "method"], sort=False):
        nc = f"{g.n_clusters.min()}-{g.n_clusters.max()}" if g.n_clusters.nunique() > 1 else str(g.n_clusters.iloc[0])
        lines.append(
            f"{dataset:<12} {method:<16} {g.f1.mean():>6.3f}±{g.f1.std(ddof=0):<6.3f} {g.ari.mean():>6.3f} "
            f"{g.nmi.mean():>6.3f} {nc:>9} {g.time_s.mean():>7.1f} {g.peak_mb.max():>8.0f}"
            + (f" {g.rare_f1.mean():>6.3f}±{g.rare_f1.std(ddof=0):<6.3f}" if g.rare_f1.notna().all() else "")
        )
    values = ["f1", "n_clusters"] + (["rare_f1"] if df.rare_f1.notna().any() else [])
    per_seed = df.pivot_table(index=["dataset", "method"], columns="seed", values=values, sort=False)
    return "\n".join(lines) + "\n\nper seed (F1 / clusters / rare F1):\n" + per_seed.round(3).to_string()


def _scaling_table(rows: list[dict], sizes: list[int], scanpy_max: int) -> str:
    by = {(r["method"], r["cells"]): r for r in rows}
    lines = [
        f"{'cells':>9} {'scae train_s':>12} {'scae emb+clu_s':>14} {'scae total_s':>12} {'scae MB':>8} "
        f"{'scanpy total_s':>16} {'scanpy MB':>9} {'speed-up':>9}"
    ]
    measured = [n for n in sizes if n <= scanpy_max]
    if not measured:
        msg = "scanpy was run at no size: raise --scanpy-max"
        raise ValueError(msg)
    for n in sorted(sizes):
        s = by[("scae", n)]
        if n in measured:
            p = by[("scanpy", n)]
            sc_time, sc_mem = f"{p['total_s']:.1f}", f"{p['peak_mb']:.0f}"
            sc_val = p["total_s"]
        else:
            ref = max(measured)
            sc_val = by[("scanpy", ref)]["total_s"] * n / ref
            sc_time, sc_mem = f"{sc_val:.0f} extrap.", "-"
        lines.append(
            f"{n:>9} {s['train_s']:>12.1f} {s['embed_cluster_s']:>14.1f} {s['total_s']:>12.1f} {s['peak_mb']:>8.0f} "
            f"{sc_time:>16} {sc_mem:>9} {sc_val / s['total_s']:>8.1f}x"
        )
    return "\n".join(lines)


def main() -> None:
    global HIDDEN, BATCH_SIZE
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--scanpy-max", type=int, default=100_000, help="largest size scanpy is run at; larger extrapolated")
    p.add_argument(
        "--datasets",
        nargs="*",
        default=["flowsom_bal", "levine3k"],
        choices=list(DATASETS),
        help="none: scaling only; bal_rare_B / bal_rare_NK: flowsom_bal with that gate cut to 0.5%% of the cells",
    )
    p.add_argument("--quality-worker", nargs=2, metavar=("METHOD", "DATASET"), help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=None, help="scae training steps (default: scae's own stopping rule)")
    p.add_argument("--n-train", type=int, default=100_000, help="cells scae trains on in the scaling table")
    p.add_argument("--scae-scaling-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--scanpy-scaling-worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--hidden", type=int, nargs="+", default=None, help="scae encoder widths (default: scae's)")
    p.add_argument("--batch-size", type=int, default=None, help="scae minibatch size (default: scae's)")
    args = p.parse_args()
    HIDDEN = tuple(args.hidden) if args.hidden else _default_hidden()
    BATCH_SIZE = args.batch_size
    if args.quality_worker:
        print(json.dumps(_quality_worker(*args.quality_worker, args.seeds, args.steps)))
        return
    if args.scae_scaling_worker:
        print(json.dumps(_scae_scaling(args.sizes, args.n_train, args.steps)))
        return
    if args.scanpy_scaling_worker:
        print(json.dumps(_scanpy_scaling(args.scanpy_scaling_worker)))
        return

    seeds = [str(s) for s in args.seeds]
    epochs = [] if args.steps is None else ["--steps", str(args.steps)]
    epochs += ["--hidden", *map(str, HIDDEN)]
    epochs += [] if BATCH_SIZE is None else ["--batch-size", str(BATCH_SIZE)]
    rows = []
    for dataset in args.datasets:
        for method in ("scae", "flowsom", "leiden"):
            rows += _run(["--quality-worker", method, dataset, "--seeds", *seeds, *epochs])
    steps = "scae default steps" if args.steps is None else f"scae trained {args.steps} steps"
    steps += f", hidden={HIDDEN}" + ("" if BATCH_SIZE is None else f", batch_size={BATCH_SIZE}")
    if rows:
        print(f"Clustering vs manual gates (seeds {', '.join(seeds)}; mean over seeds, F1 ± sd; {steps})")
        print(_quality_table(rows), flush=True)
    if args.sizes:
        sizes = sorted(args.sizes)
        srows = _run(["--scae-scaling-worker", "--sizes", *map(str, sizes), "--n-train", str(args.n_train), *epochs])
        for n in sizes:
            if n <= args.scanpy_max:
                srows.append(_run(["--scanpy-scaling-worker", str(n)]))
        n_train = srows[0]["n_train"]
        print(
            f"\nScaling (flowsom_bal resampled): scae trains once on {n_train:,} cells "
            f"({srows[0]['steps']} steps), then"
            " embeds + clusters all n cells; its total includes the training.\n"
            "scanpy = PCA + neighbors + UMAP + Leiden on all n cells."
        )
        print(_scaling_table(srows, args.sizes, args.scanpy_max))


if __name__ == "__main__":
    main()
