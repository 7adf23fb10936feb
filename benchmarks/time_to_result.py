"""Time to result on the CPU: scae's default fit next to the tool a user would otherwise run, with quality.

For each shared data set, one default ``scae.tl.fit`` per seed (training, embedding, clusters and imputed
values written into the AnnData: the wall time of the call) and the peers on the same data in the same
process, one after the other (run it on an idle machine):

- flowsom_bal (19,225 cells x 8 markers, 7 manual gates) and levine3k (3,000 x 23, 3 PhenoGraph groups):
  scae automatic clusters and the same model re-cut to the number of gates (``tl.cluster``, timed apart);
  FlowSOM 10x10 with that many metaclusters; Leiden on a 15-NN graph of the markers. F1 = Hungarian-matched
  mean F1 over gates ("Unlabeled" cells clustered, not scored), ARI.
- cytonorm (6,000 CyTOF cells x 37 markers, 3 batches, no labels): scae with ``batch_key``; Harmony on 30
  PCs. scib-metrics batch-correction total (unscaled).
- cellbench (CEL-seq2 vs Drop-seq, 3 cell lines, 2,000 HVGs, log-normalized; raw counts for scVI): scae with
  ``batch_key`` (its 2-D embedding and PCA of ``layers["scae_corrected"]``), Harmony, scVI with its default
  number of epochs. scib-metrics batch and bio-conservation totals (unscaled).
- tcga_coread (121 tumours x 500 genes, CMS1/CMS3): scae automatic clusters and k=2; Leiden on 30 PCs. ARI
  against CMS (nothing unsupervised recovers CMS well here; the row is about time).

Each method runs once untimed on a small subset first (numba, torch and JAX start-up are not counted).

    pip install -e '.[bench]' && python benchmarks/time_to_result.py [--seeds 0 1 2] [--datasets flowsom_bal ...]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings

import numpy as np
import pandas as pd
import scanpy as sc

import scae
from scae.metrics import cluster_scores

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from batch import prepare_cellbench, prepare_cytonorm, score  # noqa: E402
from cytof import flowsom_input  # noqa: E402

warnings.filterwarnings("ignore")
logging.getLogger("scanpy").setLevel(logging.ERROR)

GATED = {
    "flowsom_bal": ("cell_type", "Unlabeled"),
    "levine3k": ("phenograph_cluster", None),
    "tcga_coread": ("cms_label", None),
}
DATASETS = ("flowsom_bal", "levine3k", "cytonorm", "cellbench", "tcga_coread")


def _clusters(adata, labels, name: str) -> dict:
    key, exclude = GATED[name]
    truth = adata.obs[key].astype(str).to_numpy()
    keep = truth != exclude if exclude is not None else np.ones(truth.size, bool)
    s = cluster_scores(truth[keep], np.asarray(labels).astype(str)[keep])
    return {"F1": s["f1"], "ARI": s["ari"], "k": int(len(np.unique(labels)))}


def _scae(adata, seed: int, **kwargs) -> tuple[float, dict]:
    t0 = time.perf_counter()
    scae.tl.fit(adata, random_state=seed, progress=False, device="cpu", **kwargs)
    elapsed = time.perf_counter() - t0
    rt = adata.uns["scae"]["runtime"]
    return elapsed, {"steps": rt["steps"], "stop": rt["stop_reason"]}


def _flowsom(adata, k: int, seed: int):
    import flowsom as fs
    from loguru import logger

    logger.remove()
    t0 = time.perf_counter()
    fsom = fs.FlowSOM(flowsom_input(adata), n_clusters=k, xdim=10, ydim=10, seed=seed)
    return time.perf_counter() - t0, fsom.get_cell_data().obs["metaclustering"].to_numpy()


def _leiden(adata, seed: int, use_rep: str = "X"):
    a = adata.copy()
    t0 = time.perf_counter()
    if use_rep == "X_pca":
        sc.pp.pca(a, n_comps=min(30, a.n_vars - 1, a.n_obs - 1), random_state=seed)
    sc.pp.neighbors(a, n_neighbors=15, use_rep=use_rep, random_state=seed)
    sc.tl.leiden(a, resolution=1.0, flavor="igraph", n_iterations=2, random_state=seed)
    return time.perf_counter() - t0, a.obs["leiden"].to_numpy()


def _harmony(adata, seed: int):
    import harmonypy

    t0 = time.perf_counter()
    sc.pp.pca(adata, n_comps=min(30, adata.n_vars - 1), random_state=seed)
    ho = harmonypy.run_harmony(adata.obsm["X_pca"], adata.obs[["batch"]], ["batch"], random_state=seed, verbose=False)
    z = np.asarray(ho.Z_corr)
    adata.obsm["Harmony"] = z if z.shape[0] == adata.n_obs else z.T
    return time.perf_counter() - t0


def _scvi(adata, seed: int, *, max_epochs: int | None = None):
    import scvi

    scvi.settings.seed = seed
    scvi.settings.verbosity = 0
    b = adata.copy()
    t0 = time.perf_counter()
    scvi.model.SCVI.setup_anndata(b, layer="counts", batch_key="batch")
    model = scvi.model.SCVI(b, n_latent=10)
    model.train(max_epochs=max_epochs, accelerator="cpu", enable_progress_bar=False)  # None: scVI's default
    adata.obsm["scVI"] = model.get_latent_representation()
    return time.perf_counter() - t0, int(model.history["elbo_train"].shape[0])


def _emit(rows: list[dict], **row) -> None:
    rows.append(row)
    shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}
    print(" ".join(f"{k}={v}" for k, v in shown.items()), flush=True)


def gated(name: str, seeds, rows) -> None:
    adata = {"flowsom_bal": scae.datasets.flowsom_bal, "levine3k": scae.datasets.levine3k}[name]()
    k = int(adata.obs[GATED[name][0]].astype(str).nunique())
    small = adata[:600].copy()  # warm-ups
    scae.tl.fit(small, max_epochs=1, progress=False, device="cpu")
    _flowsom(small, 3, 0)
    _leiden(small, 0)
    for seed in seeds:
        a = adata.copy()
        t, info = _scae(a, seed)
        _emit(
            rows,
            data=name,
            method="scae (auto)",
            seed=seed,
            time_s=t,
            **_clusters(a, a.obs["scae_cluster"], name),
            **info,
        )
        t0 = time.perf_counter()
        scae.tl.cluster(a, n_clusters=k)
        t_k = time.perf_counter() - t0
        _emit(
            rows,
            data=name,
            method=f"scae (k={k})",
            seed=seed,
            time_s=t + t_k,
            **_clusters(a, a.obs["scae_cluster"], name),
        )
        try:
            t, labels = _flowsom(adata, k, seed)
            _emit(rows, data=name, method=f"FlowSOM (k={k})", seed=seed, time_s=t, **_clusters(adata, labels, name))
        except ValueError as e:  # FlowSOM 0.2.2 on pandas 3 writes into a read-only array when a node is empty
            print(f"FlowSOM failed on {name} seed {seed}: {e}", flush=True)
        t, labels = _leiden(adata, seed)
        _emit(rows, data=name, method="Leiden (res 1)", seed=seed, time_s=t, **_clusters(adata, labels, name))


def _scib(adata, keys, labels: bool) -> pd.DataFrame:
    return score(adata, keys, labels=labels)


def batched(name: str, seeds, rows, *, scvi_epochs: int | None) -> None:
    base = prepare_cellbench() if name == "cellbench" else prepare_cytonorm()
    labels = name == "cellbench"
    small = base[:300].copy()
    scae.tl.fit(small, batch_key="batch", max_epochs=1, batch_size=32, progress=False, device="cpu")
    _harmony(small.copy(), 0)
    if labels:
        _scvi(small, 0, max_epochs=1)
    for seed in seeds:
        a = base.copy()
        times, extra = {}, {}
        times["Harmony"] = _harmony(a, seed)
        if labels:
            times["scVI"], extra["scVI"] = _scvi(a, seed, max_epochs=scvi_epochs)
        t, info = _scae(a, seed, batch_key="batch")
        a.obsm["scae (2-D embedding)"] = a.obsm["X_scae"]
        t0 = time.perf_counter()
        corrected = sc.AnnData(a.layers["scae_corrected"])
        sc.pp.pca(corrected, n_comps=min(30, a.n_vars - 1), random_state=seed)
        a.obsm["scae (corrected layer, PCA)"] = corrected.obsm["X_pca"]
        times["scae (2-D embedding)"] = t
        times["scae (corrected layer, PCA)"] = t + time.perf_counter() - t0
        res = _scib(a, list(times), labels)
        for method, t_m in times.items():
            row = {"batch": float(res.loc[method, "Batch correction"])}
            if labels:
                row["bio"] = float(res.loc[method, "Bio conservation"])
            if method.startswith("scae"):
                row.update(info)
            if method == "scVI":
                row["epochs"] = extra["scVI"]
            _emit(rows, data=name, method=method, seed=seed, time_s=t_m, **row)


def tcga(seeds, rows) -> None:
    adata = scae.datasets.tcga_coread()
    scae.tl.fit(adata[:60].copy(), max_epochs=1, progress=False, device="cpu")
    _leiden(adata[:60].copy(), 0, use_rep="X_pca")
    for seed in seeds:
        a = adata.copy()
        t, info = _scae(a, seed)
        _emit(
            rows,
            data="tcga_coread",
            method="scae (auto)",
            seed=seed,
            time_s=t,
            **_clusters(a, a.obs["scae_cluster"], "tcga_coread"),
            **info,
        )
        t0 = time.perf_counter()
        scae.tl.cluster(a, n_clusters=2)
        t_k = time.perf_counter() - t0
        _emit(
            rows,
            data="tcga_coread",
            method="scae (k=2)",
            seed=seed,
            time_s=t + t_k,
            **_clusters(a, a.obs["scae_cluster"], "tcga_coread"),
        )
        t, labels = _leiden(adata, seed, use_rep="X_pca")
        _emit(
            rows,
            data="tcga_coread",
            method="Leiden (PCA, res 1)",
            seed=seed,
            time_s=t,
            **_clusters(adata, labels, "tcga_coread"),
        )


def table(rows: list[dict]) -> str:
    df = pd.DataFrame(rows)
    metrics = [c for c in ("F1", "ARI", "k", "batch", "bio", "steps") if c in df]
    agg = {"time_s": ["mean", "min", "max"], **{c: "mean" for c in metrics}}
    out = df.groupby(["data", "method"], sort=False).agg(agg)
    out.columns = ["time s", "min s", "max s", *metrics]
    with pd.option_context("display.width", 200, "display.float_format", "{:.3f}".format):
        return out.to_string()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--scvi-epochs", type=int, default=None, help="default: scVI's own (400 for < 20,000 cells)")
    args = p.parse_args()
    import torch

    print(f"torch threads {torch.get_num_threads()}, scae {scae.__version__}, seeds {args.seeds}", flush=True)
    rows: list[dict] = []
    for name in args.datasets:
        if name in ("flowsom_bal", "levine3k"):
            gated(name, args.seeds, rows)
        elif name in ("cytonorm", "cellbench"):
            batched(name, args.seeds, rows, scvi_epochs=args.scvi_epochs)
        else:
            tcga(args.seeds, rows)
    print("\nTime to result (2 CPU cores; mean over seeds, min-max time)")
    print(table(rows))


if __name__ == "__main__":
    main()
