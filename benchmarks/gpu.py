"""What a user gets from scae on one GPU: default fit time and cluster quality, training throughput, memory.

One line per measurement, printed as soon as it is measured (sized for a few minutes on one H100/H200):

* ``flow``: default ``scae.tl.fit`` on flowsom_bal_flow (19,225 cells × 8 markers, 7 manual gates) on the
  default device, seeds 0-2, after one untimed warm-up fit: wall time of the whole call (training,
  embedding, clusters into the AnnData), automatic and ``n_clusters=7`` F1/ARI (Unlabeled cells not scored);
  then two ``deterministic=True`` fits of the first seed: wall time, and whether the rerun gave the same bits.
* ``speed``: ``SAUCIE(...).train(max_epochs=1)`` on CytoNorm CyTOF resampled to ``--cells`` cells with
  N(0, 0.05) noise (37 markers, 3 batches, MMD on), after an untimed epoch of the same configuration;
  training cells/s of one epoch (``train_cells_per_s``: warm-up steps and graph captures included) and of
  steady training (``steady_cells_per_s``: the two extra epochs of a 3-epoch run over a 1-epoch run), then
  ``get_embedding()`` + ``get_clusters()`` time and peak GPU memory, for the default
  network at minibatch 4096 and 65536 and the 128-64-32 network at 65536, float32 and bf16, steps replayed
  from CUDA graphs (the default), and the default network in float32 with eager steps
  (``SCAE_CUDA_GRAPHS=0``) for comparison.
* ``scvi``: scVI (``gene_likelihood="normal"``) one epoch on the same cells on the same device at minibatch
  4096 and 65536, and at its default minibatch 128 on the first 50,000 of them (one epoch of 10^6 cells at
  128 takes minutes) (skipped with a line where scvi-tools is not installed:
  ``../shared/tools/gpu-wheels.sh --scvi`` adds its wheels).
* ``big``: default ``scae.tl.fit`` (training by the default budget and rule, embedding, clusters, imputed
  values into the AnnData) on ``--big`` resampled CytoNorm cells (10^7 by default), end to end.

    python benchmarks/gpu.py [--cells 1000000] [--big 10000000] [--skip-flow] [--skip-speed] [--skip-scvi]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import scae
from scae.metrics import cluster_scores

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import _resampled  # noqa: E402
from speed import _scvi as scvi_speed  # noqa: E402


def _flow(seeds) -> None:
    flow = scae.datasets.flowsom_bal(scae.datasets.shared_data_dir())
    truth = flow.obs["cell_type"].astype(str).to_numpy()
    keep = truth != "Unlabeled"
    scae.tl.fit(flow.copy(), random_state=99, progress=False)  # warm-up: CUDA context, kernels, lazy imports
    for seed in seeds:
        a = flow.copy()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        scae.tl.fit(a, random_state=seed, progress=False)
        wall = time.perf_counter() - t0
        auto = cluster_scores(truth[keep], a.obs["scae_cluster"].to_numpy()[keep])
        k7 = scae.tl.cluster(a, n_clusters=7, copy=True)
        s7 = cluster_scores(truth[keep], k7.obs["scae_cluster"].to_numpy()[keep])
        rt = a.uns["scae"]["runtime"]
        print(
            f"flow seed={seed} device={a.uns['scae']['device']} batch={rt['batch_size']} steps={rt['steps']} "
            f"graphs={rt['cuda_graphs']} fit_s={wall:.2f} train_s={rt['train_s']:.2f} infer_s={rt['infer_s']:.2f} "
            f"cluster_s={rt['cluster_s']:.2f} auto_f1={auto['f1']:.3f} auto_ari={auto['ari']:.3f} "
            f"auto_k={auto['n_clusters']} k7_f1={s7['f1']:.3f} k7_ari={s7['ari']:.3f}",
            flush=True,
        )
    runs = []
    for _ in range(2):  # deterministic=True: its cost, and whether a rerun gives the same bits
        a = flow.copy()
        t0 = time.perf_counter()
        scae.tl.fit(a, random_state=seeds[0], progress=False, deterministic=True)
        runs.append((a, time.perf_counter() - t0))
    (a, wall), (b, _) = runs
    pairs = ((a.obsm["X_scae"], b.obsm["X_scae"]), (a.obs["scae_cluster"], b.obs["scae_cluster"]))
    same = all(np.array_equal(x, y) for x, y in pairs)
    auto = cluster_scores(truth[keep], a.obs["scae_cluster"].to_numpy()[keep])
    rt = a.uns["scae"]["runtime"]
    print(
        f"flow deterministic seed={seeds[0]} steps={rt['steps']}/{b.uns['scae']['runtime']['steps']} "
        f"graphs={rt['cuda_graphs']} fit_s={wall:.2f} auto_f1={auto['f1']:.3f} rerun_identical={same}",
        flush=True,
    )


#: (network, minibatch, precision, CUDA graphs) rows of ``speed``: the default network at the CUDA default and a
#: large minibatch, the narrow throughput network, and eager steps of the default network for comparison
SPEED_ROWS = tuple(
    (hidden, batch, precision, True)
    for hidden, batch in ((None, 4096), (None, 65536), ((128, 64, 32), 65536))
    for precision in ("32", "bf16")
) + ((None, 4096, "32", False), (None, 65536, "32", False))


def _speed(n_cells: int) -> None:
    import os

    adata = _resampled(n_cells)
    for hidden, batch_size, precision, graphs in SPEED_ROWS:
        os.environ["SCAE_CUDA_GRAPHS"] = "1" if graphs else "0"
        net = {} if hidden is None else {"hidden": hidden}
        model = scae.SAUCIE(adata, batch_key="batch", batch_size=batch_size, precision=precision, random_state=0, **net)
        model.train(max_epochs=1, progress=False)  # warm-up epoch, untimed
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        model.train(max_epochs=1, progress=False)
        rate, t1, steps1 = model.runtime["train_cells_per_s"], model.runtime["train_s"], model.runtime["steps"]
        model.train(max_epochs=3, progress=False)  # the extra 2 epochs give the rate once the graphs are captured
        steady = (model.runtime["steps"] - steps1) * model.runtime["batch_size"] / (model.runtime["train_s"] - t1)
        t0 = time.perf_counter()
        model.get_embedding()
        labels = model.get_clusters()
        t_out = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")
        print(
            f"speed cells={n_cells} net={'default' if hidden is None else '-'.join(map(str, hidden))} "
            f"batch={batch_size} precision={precision} graphs={model.runtime['cuda_graphs']} device={model.device} "
            f"train_cells_per_s={rate:,.0f} steady_cells_per_s={steady:,.0f} step_ms={1e3 * batch_size / steady:.3f} "
            f"embed_cluster_s={t_out:.2f} "
            f"clusters={int(labels.max()) + 1} peak_gpu_mb={peak:,.0f}",
            flush=True,
        )
        del model
    os.environ.pop("SCAE_CUDA_GRAPHS", None)


#: (minibatch, at most this many cells) of the ``scvi`` rows
SCVI_ROWS = ((4096, None), (65536, None), (128, 50_000))


def _scvi(n_cells: int) -> None:
    try:
        import scvi  # noqa: F401
    except ImportError:
        print("scvi skipped: scvi-tools is not installed (../shared/tools/gpu-wheels.sh --scvi)", flush=True)
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    adata = _resampled(n_cells)
    for batch_size, most in SCVI_ROWS:
        cells = n_cells if most is None else min(n_cells, most)
        r = scvi_speed(cells, 1, batch_size, device, adata=adata if cells == n_cells else adata[:cells].copy())
        print(
            f"scvi cells={cells} batch={batch_size} device={device} train_cells_per_s="
            f"{r['train_cells_per_s']:,.0f} peak_gpu_mb={r['peak_gpu_mb']:,.0f}",
            flush=True,
        )


def _big(n_cells: int) -> None:
    adata = _resampled(n_cells)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    scae.tl.fit(adata, batch_key="batch", random_state=0, progress=False)
    wall = time.perf_counter() - t0
    rt = adata.uns["scae"]["runtime"]
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")
    other = wall - sum(rt.get(k, 0.0) for k in ("load_s", "train_s", "infer_s", "cluster_s"))
    print(
        f"big cells={n_cells} device={adata.uns['scae']['device']} batch={rt['batch_size']} steps={rt['steps']} "
        f"stop={rt['stop_reason']} graphs={rt['cuda_graphs']} fit_s={wall:.1f} train_s={rt['train_s']:.1f} "
        f"infer_s={rt['infer_s']:.1f} cluster_s={rt['cluster_s']:.1f} other_s={other:.1f} "
        f"clusters={adata.obs['scae_cluster'].nunique()} peak_gpu_mb={peak:,.0f}",
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", type=int, default=1_000_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--skip-flow", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-scvi", action="store_true")
    p.add_argument("--big", type=int, default=10_000_000, help="cells of the end-to-end default fit (0: skip)")
    args = p.parse_args()
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device (CPU)"
    print(f"device: {dev}; torch {torch.__version__}", flush=True)
    if not args.skip_flow:
        _flow(args.seeds)
    if not args.skip_speed:
        _speed(args.cells)
    if not args.skip_scvi:
        _scvi(args.cells)
    if args.big:
        _big(args.big)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
