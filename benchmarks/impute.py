"""Imputation of hidden scRNA counts: scae (each likelihood) next to MAGIC, scVI and no imputation.

Data: CellBench 3 cell lines on CEL-seq2 + Drop-seq (``../shared/data/cellbench_3cl_2platforms``, raw counts),
doublets dropped (``demuxlet_cls == "DBL"``), 2,000 highly variable genes (seurat_v3 on the counts).
10% of the nonzero entries are hidden (set to 0, seeded); every method is fitted on the rest.

Units: everything is scored as ``log1p(count / library × 1e4)`` where ``library`` is each cell's total of the
*observed* (masked) counts, the one depth every method sees:

- truth at a hidden entry: ``log1p(true count / library × 1e4)``;
- no imputation: the observed log-normalized matrix (0 at every hidden entry);
- MAGIC: run on the observed log-normalized matrix, output already in those units;
- scVI: ``get_normalized_expression(library_size=1e4)`` → ``log1p``;
- scae ``mse``: fit on the observed log-normalized matrix, reconstruction in input units;
- scae ``nb``/``zinb``: fit on the observed counts, ``imputed_units="log1p"`` (``log1p(rate × 1e4)``, the
  NB mean with the library offset removed; for ZINB the mean without dropouts).

Metrics on the hidden entries: MSE, Pearson and Spearman correlation between prediction and truth. Run time
is wall-clock of the fit + prediction; peak memory is the peak RSS above the RSS before the method started
(sampled every 20 ms). scae runs its default fit (``scae.tl.fit`` with only ``likelihood`` and ``imputed_units``
set) unless ``--epochs`` is given. Run: ``python benchmarks/impute.py [--epochs N] [--scvi-epochs N] [--seed S]``.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
import warnings

import numpy as np
import psutil
import scanpy as sc
import scipy.sparse as sp
from scipy.stats import pearsonr, spearmanr

import scae

TARGET_SUM = 1e4


class PeakRSS:
    """Context manager sampling this process's RSS; ``.peak_mb`` is the peak above the starting RSS."""

    def __enter__(self):
        self._proc = psutil.Process()
        self._start = self._peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.02):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._proc.memory_info().rss)
        self.peak_mb = (self._peak - self._start) / 2**20


def load(n_top_genes: int = 2000):
    adata = scae.datasets.cellbench()
    adata = adata[adata.obs["demuxlet_cls"].astype(str) != "DBL"].copy()
    sc.pp.highly_variable_genes(adata, n_top_genes=n_top_genes, flavor="seurat_v3")
    adata = adata[:, adata.var["highly_variable"].to_numpy()].copy()
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    return adata


def hide(counts: sp.csr_matrix, fraction: float, seed: int):
    """Zero a random ``fraction`` of the nonzero entries; returns observed matrix and hidden (rows, cols, values)."""
    coo = counts.tocoo()
    rng = np.random.default_rng(seed)
    pick = rng.choice(coo.nnz, int(round(fraction * coo.nnz)), replace=False)
    rows, cols, vals = coo.row[pick], coo.col[pick], coo.data[pick]
    keep = np.ones(coo.nnz, dtype=bool)
    keep[pick] = False
    observed = sp.csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=counts.shape, dtype=np.float32)
    return observed, (rows, cols, vals)


def log_normalize(counts: sp.csr_matrix, library: np.ndarray) -> np.ndarray:
    return np.log1p(counts.toarray() / library[:, None] * TARGET_SUM).astype(np.float32)


def run_magic(adata, lognorm, seed):
    import magic

    op = magic.MAGIC(random_state=seed, verbose=0, n_jobs=1)
    return np.asarray(op.fit_transform(lognorm), dtype=np.float32)


def run_scvi(adata, observed, seed, epochs):
    import scvi

    scvi.settings.seed = seed
    scvi.settings.verbosity = logging.ERROR
    a = adata.copy()
    a.X = observed.copy()
    scvi.model.SCVI.setup_anndata(a)
    model = scvi.model.SCVI(a)
    model.train(max_epochs=epochs, accelerator="cpu", enable_progress_bar=False)
    rate = model.get_normalized_expression(library_size=TARGET_SUM, return_numpy=True)
    return np.log1p(np.asarray(rate, dtype=np.float32))


def run_scae(adata, observed, lognorm, likelihood, seed, epochs):
    a = adata.copy()
    if likelihood == "mse":
        a.X = lognorm
    else:
        a.X = observed.copy()
    scae.tl.fit(a, likelihood=likelihood, imputed_units="log1p", max_epochs=epochs, random_state=seed, progress=False)
    return np.asarray(a.layers["scae_imputed"], dtype=np.float32)


def score(pred: np.ndarray, rows, cols, truth: np.ndarray) -> dict[str, float]:
    p = pred[rows, cols]
    out = {"mse_log1p": float(np.mean((p - truth) ** 2))}
    if np.ptp(p) == 0:
        out["pearson"] = out["spearman"] = float("nan")
    else:
        out["pearson"] = float(pearsonr(p, truth)[0])
        out["spearman"] = float(spearmanr(p, truth)[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="scae epochs (default: its own stop rule)")
    parser.add_argument("--scvi-epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--methods", default="none,magic,scvi,scae-mse,scae-nb,scae-zinb")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("scae").setLevel(logging.ERROR)

    adata = load()
    observed, (rows, cols, vals) = hide(adata.X, args.fraction, args.seed)
    library = np.clip(np.asarray(observed.sum(1)).ravel(), 1.0, None)
    truth = np.log1p(vals / library[rows] * TARGET_SUM)
    lognorm = log_normalize(observed, library)

    runners = {
        "none": lambda: lognorm,
        "magic": lambda: run_magic(adata, lognorm, args.seed),
        "scvi": lambda: run_scvi(adata, observed, args.seed, args.scvi_epochs),
        "scae-mse": lambda: run_scae(adata, observed, lognorm, "mse", args.seed, args.epochs),
        "scae-nb": lambda: run_scae(adata, observed, lognorm, "nb", args.seed, args.epochs),
        "scae-zinb": lambda: run_scae(adata, observed, lognorm, "zinb", args.seed, args.epochs),
    }
    results = []
    for name in args.methods.split(","):
        t0 = time.perf_counter()
        with PeakRSS() as mem:
            pred = runners[name]()
        elapsed = time.perf_counter() - t0
        results.append({"method": name, **score(pred, rows, cols, truth), "time_s": elapsed, "peak_mb": mem.peak_mb})

    print(
        f"CellBench {adata.n_obs} cells x {adata.n_vars} HVGs, {len(vals)} hidden nonzero entries "
        f"({args.fraction:.0%}, seed {args.seed}); scae {args.epochs or 'default'} epochs, "
        f"scVI {args.scvi_epochs} epochs"
    )
    hdr = f"{'method':<11} {'MSE log1p':>10} {'Pearson':>8} {'Spearman':>9} {'time s':>8} {'peak MB':>8}"
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        print(
            f"{r['method']:<11} {r['mse_log1p']:>10.4f} {r['pearson']:>8.3f} {r['spearman']:>9.3f} "
            f"{r['time_s']:>8.1f} {r['peak_mb']:>8.0f}"
        )


if __name__ == "__main__":
    main()
