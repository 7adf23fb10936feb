"""Retrieval by binary codes (scae.tl.query) against exact kNN, on ≥ 100k cells.

Data: FlowSOM BAL flow cytometry (19,225 real cells × 8 markers, 7 manual gates). scae is fitted on the real
cells; the reference (default 100,000 cells) and the query set (default 10,000 cells) are grown from them by
resampling cells with small Gaussian noise (sd 0.05 in arcsinh units) and mapped with scae.tl.transform, so
every cell has an embedding and codes from the same model. The resampling is labelled in the output.

recall@10 of a method = for each query cell, the fraction of its exact 10 nearest reference cells (under the
ground-truth distance) that the method returns among its 10; averaged over the query cells. Two ground truths:
Euclidean distance in the 2-D embedding (``X_scae``) and in the real-valued clustering-layer activations
(``X_scae_codes``, the space the binary codes hash). Transfer = accuracy of the majority gate of the 10
retrieved cells (query cells with a manual gate). Time excludes the fit and mapping; peak memory is the
tracemalloc peak of the retrieval call.

    python benchmarks/query.py [--n-ref 100000] [--n-query 10000] [--epochs N | --model DIR] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np


def _grow(adata, n, rng):
    import anndata as ad

    idx = rng.integers(0, adata.n_obs, n)
    X = adata.X[idx] + rng.normal(0, 0.05, (n, adata.n_vars)).astype(np.float32)
    obs = adata.obs.iloc[idx].reset_index(drop=True)
    obs.index = obs.index.astype(str)
    return ad.AnnData(X.astype(np.float32), obs=obs, var=adata.var)


def _measure(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return out, elapsed, peak


def _recall(found, exact):
    k = exact.shape[1]
    hits = (found[:, :, None] == exact[:, None, :]).any(2).sum(1)
    return float(hits.mean() / k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-ref", type=int, default=100_000)
    parser.add_argument("--n-query", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=None, help="fit epochs (default: scae's default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--model", default=None, help="use this saved model folder instead of fitting")
    args = parser.parse_args()

    import tempfile

    import torch
    from scipy.spatial import cKDTree
    from sklearn.neighbors import NearestNeighbors

    import scae

    torch.set_num_threads(args.threads)
    k = args.k
    real = scae.datasets.flowsom_bal(args.data_dir)
    t0 = time.perf_counter()
    if args.model is not None:
        model = scae.SAUCIE.load(args.model, device="cpu")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            scae.tl.fit(real, max_epochs=args.epochs, progress=False, save_model=f"{tmp}/model", device="cpu")
            model = scae.SAUCIE.load(f"{tmp}/model", device="cpu")
    fit_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    ref, qry = _grow(real, args.n_ref, rng), _grow(real, args.n_query, rng)
    scae.tl.transform(model, ref)
    scae.tl.transform(model, qry)
    emb_r, emb_q = ref.obsm["X_scae"].astype(np.float64), qry.obsm["X_scae"].astype(np.float64)
    codes_r, codes_q = ref.obsm["X_scae_codes"], qry.obsm["X_scae_codes"]
    active = codes_r.max(0) > 0
    codes_r, codes_q = np.ascontiguousarray(codes_r[:, active]), np.ascontiguousarray(codes_q[:, active])
    gates_r = ref.obs["cell_type"].astype(str).to_numpy()
    gates_q = qry.obs["cell_type"].astype(str).to_numpy()
    gated = gates_q != "Unlabeled"

    def knn_tree(a, b):
        return lambda: cKDTree(a).query(b, k)[1]

    def knn_brute(a, b):
        return lambda: NearestNeighbors(n_neighbors=k, algorithm="brute").fit(a).kneighbors(b, return_distance=False)

    def hamming(tie_break):
        def run():
            scae.tl.query(ref, qry, k=k, tie_break=tie_break)
            return qry.obsm["scae_query_indices"]

        return run

    methods = [
        ("exact kNN, codes (brute, sklearn)", knn_brute(codes_r, codes_q)),
        ("exact kNN, markers (cKDTree)", knn_tree(ref.X.astype(np.float64), qry.X.astype(np.float64))),
        ("exact kNN, embedding (cKDTree)", knn_tree(emb_r, emb_q)),
        ("scae.tl.query, Hamming, ties by index", hamming(None)),
        ("scae.tl.query, Hamming, ties by embedding", hamming("X_scae")),
    ]
    results = {}
    for name, fn in methods:
        results[name] = _measure(fn)
    truth_emb = results["exact kNN, embedding (cKDTree)"][0]
    truth_codes = results["exact kNN, codes (brute, sklearn)"][0]
    t_codes = results["exact kNN, codes (brute, sklearn)"][1]
    t_emb = results["exact kNN, embedding (cKDTree)"][1]
    n_codes = qry.uns["scae_query"]["n_ref_codes"]

    print(
        f"# flowsom_bal: {real.n_obs:,} real cells × {real.n_vars} markers; reference {args.n_ref:,} and query "
        f"{args.n_query:,} cells resampled from them with N(0, 0.05) noise (arcsinh units); k={k}; "
        f"fit {fit_s:.0f} s; codes: {int(active.sum())} active units, "
        f"{n_codes} distinct binary codes in the reference; "
        f"{args.threads} CPU threads"
    )
    header = (
        f"| {'method':<42} | recall@{k} vs embedding kNN | recall@{k} vs codes kNN | gate transfer acc | "
        f"time (s) | speed vs codes kNN | speed vs embedding kNN | peak mem (MiB) |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name, (idx, sec, peak) in results.items():
        votes = np.array([max(set(row), key=list(row).count) for row in gates_r[idx[gated]]])
        acc = float(np.mean(votes == gates_q[gated]))
        print(
            f"| {name:<42} | {_recall(idx, truth_emb):>26.3f} | {_recall(idx, truth_codes):>22.3f} | {acc:>17.3f} | "
            f"{sec:>8.2f} | {t_codes / sec:>17.1f}x | {t_emb / sec:>21.2f}x | {peak:>14.0f} |"
        )


if __name__ == "__main__":
    main()
