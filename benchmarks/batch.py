"""Batch correction benchmark: uncorrected PCA, Harmony, scVI and scae, scored with scib-metrics.

Data (read from the shared data directory, never copied):
- cellbench_3cl_2platforms: real scRNA-seq counts, CEL-seq2 vs Drop-seq (batch), 3 cell lines
  (label: demuxlet). Doublets dropped; 2,000 highly variable genes (seurat_v3 on counts, per batch);
  log-normalized for PCA/Harmony/scae, raw counts for scVI.
- cytonorm_gates_cytof: real CyTOF, 3 batches, 37 markers (arcsinh); no cell labels, so only the batch
  metrics are meaningful (every cell gets one dummy label).

Rows: PCA of the log-normalized data (uncorrected), Harmony on that PCA, scVI's latent space, and two outputs
of one scae fit: its 2-D embedding and PCA (30 components, as for the uncorrected row) of
``layers["scae_corrected"]``, the decoder's batch-corrected expression in the reference batch's units.

Metrics: scib-metrics Benchmarker (iLISI, kBET per label, BRAS = the batch ASW of scib-metrics ≥ 0.5,
graph connectivity, PCR comparison; cLISI, label silhouette, isolated labels, ARI/NMI after Leiden),
un-scaled scores; totals are the means of each group as in scib-metrics.

    pip install -e '.[bench]' && python benchmarks/batch.py [--scvi-epochs 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd
import scanpy as sc

import scae

warnings.filterwarnings("ignore")

#: Rows of the tables. scae gives two corrected representations from one fit: its 2-D embedding
#: (``obsm["X_scae"]``, MMD-aligned) and ``layers["scae_corrected"]`` (every batch decoded in the reference
#: batch's units), embedded by PCA exactly as the uncorrected data are.
METHODS = ["Unintegrated (PCA)", "Harmony", "scVI", "scae (2-D embedding)", "scae (corrected layer, PCA)"]


def prepare_cellbench(data_dir=None):
    adata = scae.datasets.cellbench(data_dir)
    adata = adata[adata.obs["demuxlet_cls"] != "DBL"].copy()
    adata.obs["cell_line"] = adata.obs["cell_line_demuxlet"].astype(str).astype("category")
    adata.obs["batch"] = adata.obs["batch"].astype(str).astype("category")
    adata.layers["counts"] = adata.X.copy()
    sc.pp.filter_genes(adata, min_cells=3)
    sc.pp.highly_variable_genes(adata, n_top_genes=2000, flavor="seurat_v3", layer="counts", batch_key="batch")
    adata = adata[:, adata.var["highly_variable"]].copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


def prepare_cytonorm():
    adata = scae.datasets.cytonorm()
    adata.obs["batch"] = adata.obs["batch"].astype(str).astype("category")
    adata.obs["cell_line"] = pd.Categorical(["cells"] * adata.n_obs)  # no labels: batch metrics only
    return adata


def run_methods(adata, *, counts_layer, seed, scvi_epochs, scae_kwargs):
    times = {}
    t = time.perf_counter()
    sc.pp.pca(adata, n_comps=min(30, adata.n_vars - 1), random_state=seed)
    times["Unintegrated (PCA)"] = time.perf_counter() - t
    adata.obsm["Unintegrated (PCA)"] = adata.obsm["X_pca"]

    t = time.perf_counter()
    import harmonypy

    ho = harmonypy.run_harmony(adata.obsm["X_pca"], adata.obs[["batch"]], ["batch"], random_state=seed, verbose=False)
    z = np.asarray(ho.Z_corr)
    adata.obsm["Harmony"] = z if z.shape[0] == adata.n_obs else z.T  # harmonypy 2 returns cells x dims
    times["Harmony"] = time.perf_counter() - t + times["Unintegrated (PCA)"]

    try:
        import scvi

        scvi.settings.seed = seed
        scvi.settings.verbosity = 0
        bdata = adata.copy()
        t = time.perf_counter()
        if counts_layer is not None:
            scvi.model.SCVI.setup_anndata(bdata, layer=counts_layer, batch_key="batch")
            model = scvi.model.SCVI(bdata, n_latent=10)
        else:
            scvi.model.SCVI.setup_anndata(bdata, batch_key="batch")
            model = scvi.model.SCVI(bdata, n_latent=10, gene_likelihood="normal")
        model.train(max_epochs=scvi_epochs, accelerator="cpu", enable_progress_bar=False)
        adata.obsm["scVI"] = model.get_latent_representation()
        times["scVI"] = time.perf_counter() - t
    except Exception as e:  # noqa: BLE001 - report, keep the table
        print(f"scVI failed: {type(e).__name__}: {e}")

    t = time.perf_counter()
    scae.tl.fit(adata, batch_key="batch", random_state=seed, progress=False, **scae_kwargs)
    times["scae (2-D embedding)"] = time.perf_counter() - t
    adata.obsm["scae (2-D embedding)"] = adata.obsm["X_scae"]
    # the batch-corrected expression (reference-batch units), embedded like the uncorrected data: PCA
    t = time.perf_counter()
    corrected = sc.AnnData(adata.layers["scae_corrected"])
    sc.pp.pca(corrected, n_comps=min(30, adata.n_vars - 1), random_state=seed)
    adata.obsm["scae (corrected layer, PCA)"] = corrected.obsm["X_pca"]
    times["scae (corrected layer, PCA)"] = time.perf_counter() - t + times["scae (2-D embedding)"]
    del adata.layers["scae_corrected"], adata.layers["scae_imputed"]
    return times


def score(adata, keys, *, labels: bool):
    from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation

    bio = BioConservation(nmi_ari_cluster_labels_leiden=True, nmi_ari_cluster_labels_kmeans=False) if labels else None
    bm = Benchmarker(
        adata,
        batch_key="batch",
        label_key="cell_line",
        embedding_obsm_keys=keys,
        pre_integrated_embedding_obsm_key="X_pca",
        bio_conservation_metrics=bio,
        batch_correction_metrics=BatchCorrection(),
        n_jobs=1,
        progress_bar=False,
    )
    bm.benchmark()
    res = bm.get_results(min_max_scale=False)
    res = res.drop(index="Metric Type", errors="ignore").astype(float)
    return res


def print_table(title, res, times):
    res = res.copy()
    res["Time (s)"] = [times.get(k, np.nan) for k in res.index]
    cols = [c for c in res.columns if c != "Total"]
    print(f"\n{title}")
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.float_format", "{:.3f}".format):
        print(res[cols])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scvi-epochs", type=int, default=200)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()

    rna = prepare_cellbench(args.data_dir)
    times = run_methods(rna, counts_layer="counts", seed=args.seed, scvi_epochs=args.scvi_epochs, scae_kwargs={})
    keys = [k for k in METHODS if k in rna.obsm]
    res = score(rna, keys, labels=True)
    print_table(
        f"cellbench_3cl_2platforms: {rna.n_obs} cells x {rna.n_vars} HVGs, batches CEL-seq2/Drop-seq, 3 cell lines",
        res,
        times,
    )

    cy = prepare_cytonorm()
    times = run_methods(
        cy, counts_layer=None, seed=args.seed, scvi_epochs=max(20, args.scvi_epochs // 4), scae_kwargs={}
    )
    keys = [k for k in METHODS if k in cy.obsm]
    res = score(cy, keys, labels=False)
    res = res[
        [
            c
            for c in res.columns
            if c in ("iLISI", "KBET", "BRAS", "Graph connectivity", "PCR comparison", "Batch correction")
        ]
    ]
    print_table(
        f"cytonorm_gates_cytof: {cy.n_obs} cells x {cy.n_vars} markers, 3 batches (batch metrics only)", res, times
    )


if __name__ == "__main__":
    main()
