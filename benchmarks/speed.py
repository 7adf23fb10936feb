"""Training speed, embed+cluster time and peak memory of scae (in memory and backed) and scVI, real CyTOF.

Data: the bundled CytoNorm CyTOF (6,000 cells × 37 markers, arcsinh, 3 batches). Larger sizes are built
by resampling its cells with N(0, 0.05) noise (``scae._outofcore.write_resampled_h5ad``), labelled as
such. Every configuration runs in a fresh subprocess, so peak RSS is its own, after an untimed one-epoch
fit of the same method on 500 cells (one-time costs of a process: lazy imports of the first optimizer or
trainer, thread pools). Rows:

* ``scae memory``: the matrix on the device, ``scae.SAUCIE(...).train`` for ``--epochs`` epochs, then
  embedding + clusters (``get_embedding``, ``get_clusters``).
* ``scae memory`` with other ``widths``: the same with the encoder widths and minibatch size of ``--lean``
  (default ``128,64,32:4096``: a narrower network and a large minibatch, the CPU throughput setting;
  the O(minibatch²) loss terms use ``pairwise_cells=256`` cells of each minibatch as always).
* ``scae backed``: ``scae.tl.fit`` on ``anndata.read_h5ad(path, backed="r")`` (streamed blocks; outputs
  streamed, codes/imputed not kept); ``lean-backed`` mode: the same with the ``--lean`` widths and batch.
* ``scVI``: ``scvi.model.SCVI`` (``gene_likelihood="normal"``, continuous data) trained for
  ``--epochs`` epochs on the same cells, CPU, at ``--batch-size`` or else scae's CPU default minibatch (512;
  scVI's own default is 128, at which it is slower); ``vs scVI`` is scae's training cells/s divided by scVI's
  at that size.

    python benchmarks/speed.py [--sizes 100000 1000000] [--scvi-size 100000 1000000] [--device auto] [--epochs 1]
                              [--lean 256,128,64:4096 128,64,32:4096] [--modes memory lean backed lean-backed]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def _resampled(n_cells: int):
    import anndata as ad
    import numpy as np
    import pandas as pd

    import scae

    base = scae.datasets.cytonorm()
    if n_cells == base.n_obs:
        return base
    rng = np.random.default_rng(0)
    idx = rng.integers(0, base.n_obs, n_cells)
    X = base.X[idx]
    for a in range(0, n_cells, 2**18):  # noise drawn in row blocks (the same values) to keep peak memory low
        X[a : a + 2**18] += rng.normal(0, 0.05, (min(2**18, n_cells - a), base.n_vars)).astype(np.float32)
    obs = pd.DataFrame({"batch": base.obs["batch"].to_numpy()[idx]}, index=pd.RangeIndex(n_cells).astype(str))
    return ad.AnnData(X, obs=obs, var=base.var)


def _peaks(device) -> dict:
    import resource

    import torch

    gpu = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if os.path.exists("/proc/self/status"):  # VmHWM: this process image only (ru_maxrss keeps the parent's)
        rss = next(int(ln.split()[1]) / 1024 for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
    return {"peak_rss_mb": rss, "peak_gpu_mb": gpu}


#: scVI's minibatch unless ``--batch-size`` is given: scae's CPU default (``scae._fast.DEFAULT_BATCH_SIZE``)
SCVI_BATCH = 512

#: scVI trainer options of both the warm-up and the measured run: all cells, no logging or checkpoints (CPU unless
#: :func:`_scvi_trainer` says otherwise)
SCVI_QUIET = {
    "accelerator": "cpu",
    "train_size": 1.0,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "logger": False,
    "enable_checkpointing": False,
}


def _scvi_trainer(device) -> dict:
    """:data:`SCVI_QUIET` on ``device`` (a CUDA device trains on the GPU)."""
    return {**SCVI_QUIET, "accelerator": "gpu" if str(device).startswith("cuda") else "cpu"}


def _warm_up(kind: str, device) -> None:
    """Train once on 500 real cells, untimed, so one-time costs of the process (imports done lazily on the
    first optimizer or trainer, thread pools) are not counted in the throughput of the measured run."""
    import scae

    small = scae.datasets.cytonorm()[:500].copy()
    if kind == "scvi":
        import scvi

        scvi.model.SCVI.setup_anndata(small, batch_key="batch")
        scvi.model.SCVI(small, gene_likelihood="normal").train(max_epochs=1, **_scvi_trainer(device))
    else:
        scae.SAUCIE(small, batch_key="batch", device=device).train(max_epochs=1, progress=False)


def _scae_memory(n_cells, device, epochs, batch_size, precision, compile_, hidden=None):
    import scae

    _warm_up("scae", device)
    adata = _resampled(n_cells)
    kw = {} if hidden is None else {"hidden": hidden}
    model = scae.SAUCIE(
        adata, batch_key="batch", batch_size=batch_size, device=device, precision=precision, compile=compile_, **kw
    )
    model.train(max_epochs=epochs, progress=False)
    t = time.perf_counter()
    model.get_embedding()
    model.get_clusters()
    t = time.perf_counter() - t
    out = {"train_cells_per_s": model.runtime["train_cells_per_s"], "embed_cluster_s": t, "batch": model.batch_size}
    return out | _peaks(model.device)


def _scae_backed(path, device, epochs, batch_size, precision, compile_, hidden=None):
    import anndata as ad
    import torch

    import scae

    _warm_up("scae", device)
    adata = ad.read_h5ad(path, backed="r")
    kw = {} if hidden is None else {"hidden": hidden}
    scae.tl.fit(
        adata,
        batch_key="batch",
        max_epochs=epochs,
        batch_size=batch_size,
        device=device,
        precision=precision,
        compile=compile_,
        progress=False,
        **kw,
    )
    rt = adata.uns["scae"]["runtime"]
    dev = torch.device(adata.uns["scae"]["device"])
    out = {
        "train_cells_per_s": rt["train_cells_per_s"],
        "embed_cluster_s": rt["infer_cluster_s"],
        "batch": adata.uns["scae"]["params"].get("batch_size") or scae._fast.default_batch_size(dev),
    }
    return out | _peaks(dev)


def _scvi(n_cells, epochs, batch_size, device="cpu", adata=None):
    """scVI's training cells/s on ``n_cells`` resampled cells (``adata``: those cells, already made)."""
    import logging

    import scvi
    import torch

    logging.getLogger("scvi").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    device = torch.device(device)
    _warm_up("scvi", device)
    adata = _resampled(n_cells) if adata is None else adata
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = scvi.model.SCVI(adata, gene_likelihood="normal")
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    model.train(
        max_epochs=epochs,
        batch_size=batch_size,
        **_scvi_trainer(device),
    )
    t = time.perf_counter() - t
    t2 = time.perf_counter()
    model.get_latent_representation()
    t2 = time.perf_counter() - t2
    out = {"train_cells_per_s": n_cells * epochs / t, "embed_cluster_s": t2, "batch": batch_size}
    return out | _peaks(device)


def _worker(args) -> dict:
    kind, n = args.worker, args.cells
    hidden = tuple(int(h) for h in args.hidden.split(",")) if args.hidden else None
    if kind == "memory":
        return _scae_memory(n, args.device, args.epochs, args.batch_size, args.precision, args.compile, hidden)
    if kind == "backed":
        return _scae_backed(args.path, args.device, args.epochs, args.batch_size, args.precision, args.compile, hidden)
    return _scvi(n, args.epochs, args.batch_size or SCVI_BATCH)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument(
        "--scvi-size",
        type=int,
        nargs="*",
        default=[100_000],
        help="sizes at which scVI runs for the scae-vs-scVI ratio (none: skip scVI)",
    )
    p.add_argument(
        "--modes",
        nargs="+",
        default=["memory", "lean", "backed"],
        choices=["memory", "lean", "backed", "lean-backed"],
        help="memory: default scae in memory; lean: the --lean rows (in memory); backed: default scae "
        "backed; lean-backed: the --lean rows backed",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=None, help="default: scae's own (512 on CPU); scVI: 512")
    p.add_argument("--precision", default="32", choices=["32", "bf16"])
    p.add_argument("--compile", action="store_true")
    p.add_argument(
        "--lean",
        nargs="*",
        default=["128,64,32:4096"],
        metavar="WIDTHS:BATCH",
        help="extra in-memory scae rows with other encoder widths and minibatch size, e.g. 128,64,32:4096",
    )
    p.add_argument("--hidden", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--cells", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--path", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        print(json.dumps(_worker(args)))
        return

    def spawn(kind, n, path=None, lean=None):
        cmd = [sys.executable, __file__, "--worker", kind, "--cells", str(n), "--device", args.device]
        cmd += ["--epochs", str(args.epochs), "--precision", args.precision]
        if lean is not None:
            hidden, batch = lean.split(":")
            cmd += ["--hidden", hidden, "--batch-size", batch]
        elif args.batch_size or kind == "scvi":
            cmd += ["--batch-size", str(args.batch_size or SCVI_BATCH)]
        cmd += ["--compile"] if args.compile else []
        cmd += ["--path", path] if path else []
        t = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            sys.stderr.write(res.stderr[-3000:])
            raise SystemExit(f"worker {kind} {n} failed")
        out = json.loads(res.stdout.strip().splitlines()[-1])
        out.update(
            method="scVI" if kind == "scvi" else "scae",
            mode="memory" if kind == "scvi" else kind,
            cells=n,
            total_s=time.perf_counter() - t,
            widths=lean.split(":")[0] if lean else "default",
        )
        return out

    rows = []
    load = os.getloadavg()[0]
    scvi_sizes = {n for n in args.scvi_size if n > 0}
    sizes = sorted(set(args.sizes) | scvi_sizes)
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            if n in scvi_sizes:
                rows.append(spawn("scvi", n))
            if "memory" in args.modes:
                rows.append(spawn("memory", n))
            if "lean" in args.modes:
                rows += [spawn("memory", n, lean=spec) for spec in args.lean]
            if "backed" in args.modes or "lean-backed" in args.modes:
                from scae import datasets
                from scae._outofcore import write_resampled_h5ad

                path = os.path.join(tmp, f"cells_{n}.h5ad")
                base = datasets.cytonorm()
                base.obs = base.obs[["batch"]]
                write_resampled_h5ad(base, path, n, chunk_rows=65536)
                if "backed" in args.modes:
                    rows.append(spawn("backed", n, path))
                if "lean-backed" in args.modes:
                    rows += [spawn("backed", n, path, lean=spec) for spec in args.lean]
                os.remove(path)
    scvi_speed = {r["cells"]: r["train_cells_per_s"] for r in rows if r["method"] == "scVI"}
    print(
        f"Speed, CytoNorm CyTOF (37 markers, 3 batches, MMD on), {args.epochs} epoch(s); sizes other than 6,000: "
        f"real cells resampled with N(0, 0.05) noise; load average at start {load:.1f} on {os.cpu_count()} CPUs"
    )
    hdr = (
        f"{'method':>6} {'widths':>12} {'mode':>7} {'cells':>10} {'device':>7} {'batch':>6} "
        f"{'train cells/s':>14} {'vs scVI':>8} "
        f"{'embed+cluster s':>16} {'run s':>8} {'peak RSS MB':>12} {'peak GPU MB':>12}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        ratio = (
            r["train_cells_per_s"] / scvi_speed[r["cells"]]
            if r["method"] == "scae" and r["cells"] in scvi_speed
            else float("nan")
        )
        dev = "cpu" if r["method"] == "scVI" else ("cuda" if r["peak_gpu_mb"] == r["peak_gpu_mb"] else "cpu")
        print(
            f"{r['method']:>6} {r['widths']:>12} {r['mode']:>7} {r['cells']:>10,} {dev:>7} {r['batch']:>6} "
            f"{r['train_cells_per_s']:>14,.0f} "
            f"{ratio:>8.2f} {r['embed_cluster_s']:>16.2f} {r['total_s']:>8.1f} {r['peak_rss_mb']:>12.0f} "
            f"{r['peak_gpu_mb']:>12.0f}"
        )


if __name__ == "__main__":
    main()
