"""``scae.tl.query``: nearest reference cells of each query cell by Hamming distance between binary codes.

Semantic hashing: the clustering layer's binarized activations are a short binary code per cell, so
retrieval is a comparison of bit strings. Cells sharing a code form a bucket; the Hamming distance is
computed once per pair of distinct codes (XOR + popcount on packed uint64 words, in chunks), and each query
cell takes the ``k`` reference cells of the closest buckets. Cells in the same bucket are equally close in
Hamming distance; ties are ordered by Euclidean distance in a second representation (``tie_break``, the
2-D embedding by default) or by reference index.
"""

from __future__ import annotations

import logging
import time
import warnings

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy.spatial import cKDTree

from . import _settings
from ._mapping import binarize_with
from .cluster import pack_bits
from .data import column
from .genesets import _user_stacklevel

logger = logging.getLogger("scae")

#: Pairs of distinct codes compared per chunk.
_PAIRS_PER_CHUNK = 2**24
#: Tie groups up to this many (query × reference) pairs are ranked by brute force, larger ones with a KD-tree.
_BRUTE_PAIRS = 2**21


def hamming_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between packed codes ``a`` ``(n, w)`` and ``b`` ``(m, w)`` (uint64) → ``(n, m)`` int32."""
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.int32)
    step = max(1, _PAIRS_PER_CHUNK // max(1, b.shape[0]))
    for s in range(0, a.shape[0], step):
        blk = np.zeros((min(step, a.shape[0] - s), b.shape[0]), dtype=np.int32)
        for w in range(a.shape[1]):
            blk += np.bitwise_count(a[s : s + step, w, None] ^ b[None, :, w])
        out[s : s + step] = blk
    return out


def _groups(inverse: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Members of each group as (order, start offsets) so group g is ``order[starts[g]:starts[g + 1]]``."""
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=n))])
    return order, starts


def hamming_knn(
    ref_keys: np.ndarray,
    query_keys: np.ndarray,
    k: int,
    *,
    ref_rep: np.ndarray | None = None,
    query_rep: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``k`` nearest reference rows of every query row by Hamming distance of packed codes.

    Returns ``(indices, distances)``, each ``(n_query, k)``, sorted by Hamming distance, ties by Euclidean
    distance between ``query_rep`` and ``ref_rep`` rows (when given) or by reference index.
    """
    n_ref = ref_keys.shape[0]
    k = min(k, n_ref)
    ru, r_inv = np.unique(ref_keys, axis=0, return_inverse=True)
    qu, q_inv = np.unique(query_keys, axis=0, return_inverse=True)
    r_inv, q_inv = r_inv.ravel(), q_inv.ravel()
    r_order, r_starts = _groups(r_inv, len(ru))
    q_order, q_starts = _groups(q_inv, len(qu))
    sizes = np.diff(r_starts)
    dist = hamming_distances(qu, ru)
    indices = np.empty((query_keys.shape[0], k), dtype=np.int64)
    dists = np.empty((query_keys.shape[0], k), dtype=np.int32)
    trees: dict[bytes, cKDTree] = {}
    for j in range(len(qu)):
        d = dist[j]
        by_d = np.argsort(d, kind="stable")
        cum = np.cumsum(sizes[by_d])
        dk = d[by_d[np.searchsorted(cum, k)]]
        closer, tier = by_d[d[by_d] < dk], by_d[d[by_d] == dk]
        c_cells = (
            np.concatenate([r_order[r_starts[b] : r_starts[b + 1]] for b in closer])
            if closer.size
            else np.empty(0, np.int64)
        )
        c_d = np.repeat(d[closer], sizes[closer])
        t_cells = np.sort(np.concatenate([r_order[r_starts[b] : r_starts[b + 1]] for b in tier]))
        rows = q_order[q_starts[j] : q_starts[j + 1]]
        r = k - c_cells.size
        if ref_rep is None:
            order = np.lexsort((c_cells, c_d))
            indices[rows] = np.concatenate([c_cells[order], t_cells[:r]])[None, :]
        else:
            q = query_rep[rows]
            if c_cells.size:
                e = np.linalg.norm(q[:, None, :] - ref_rep[c_cells][None, :, :], axis=2)
                key = c_d[None, :] * (e.max() + 1.0) + e
                indices[rows, : c_cells.size] = c_cells[np.argsort(key, axis=1, kind="stable")]
            if t_cells.size * rows.size <= _BRUTE_PAIRS or t_cells.size <= r:
                e = np.linalg.norm(q[:, None, :] - ref_rep[t_cells][None, :, :], axis=2)
                part = (
                    np.argpartition(e, r - 1, axis=1)[:, :r]
                    if r < t_cells.size
                    else np.tile(np.arange(t_cells.size), (rows.size, 1))
                )
                part = np.take_along_axis(part, np.argsort(np.take_along_axis(e, part, 1), axis=1, kind="stable"), 1)
                indices[rows, c_cells.size :] = t_cells[part]
            else:
                tkey = tier.tobytes()
                tree = trees.get(tkey)
                if tree is None:
                    tree = trees[tkey] = cKDTree(ref_rep[t_cells])
                _, nn = tree.query(q, r)
                indices[rows, c_cells.size :] = t_cells[np.asarray(nn).reshape(rows.size, r)]
        dists[rows, : c_cells.size] = np.sort(c_d)[None, :]
        dists[rows, c_cells.size :] = dk
    return indices, dists


def _usable_k(k: int, n_ref: int) -> int:
    """``k``, or ``n_ref`` with a warning when there are fewer reference cells."""
    if k > n_ref:
        msg = f"k={k} is more than the {n_ref} reference cells: each query cell gets all of them"
        warnings.warn(msg, UserWarning, stacklevel=_user_stacklevel())
    return min(k, n_ref)


def query(
    adata_ref: AnnData,
    adata_query: AnnData,
    *,
    k: int = 10,
    codes_key: str = "X_scae_codes",
    threshold: float = 0.1,
    tie_break: str | None = "X_scae",
    transfer: str | list[str] | None = None,
    key_added: str = "scae_query",
    copy: bool = False,
) -> AnnData | None:
    """Most similar reference cells of each query cell by Hamming distance between binary codes.

    Both AnnData need codes from the same model (``scae.tl.fit`` on the reference, ``scae.tl.transform`` of
    the query). Codes are binarized as for clustering: a unit fires above ``threshold`` times its maximum over
    the reference cells. Cost is one popcount per pair of distinct codes plus ranking within the closest
    buckets, instead of a distance per pair of cells.

    Parameters
    ----------
    adata_ref
        Reference cells with ``obsm[codes_key]`` (and ``obsm[tie_break]``).
    adata_query
        Query cells with the same keys.
    k
        Reference cells per query cell (a larger ``k`` than there are warns; ``uns`` records the ``k`` used).
    codes_key
        ``obsm`` key of the clustering-layer activations.
    threshold
        Relative firing threshold of the binarization (as :meth:`scae.SAUCIE.get_clusters`).
    tie_break
        ``obsm`` key whose Euclidean distance orders reference cells at equal Hamming distance; ``None`` orders
        them by reference index.
    transfer
        ``adata_ref.obs`` column(s) to transfer by majority vote of the ``k`` neighbours into
        ``adata_query.obs[f"{column}_{key_added}"]``.
    key_added
        Writes ``adata_query.obsm[f"{key_added}_indices"]`` (row positions in ``adata_ref``, nearest first),
        ``obsm[f"{key_added}_hamming"]`` (their Hamming distances) and ``uns[key_added]`` (params, timing).
    copy
        Return a new AnnData instead of writing into ``adata_query``.

    Returns
    -------
    ``None``, or the query AnnData with the keys above when ``copy=True``.

    Examples
    --------
    >>> import scae
    >>> adata = scae.datasets.cytonorm()
    >>> ref, new = adata[:5000].copy(), adata[5000:].copy()
    >>> scae.tl.fit(ref, max_epochs=5, progress=False, save_model="run1")  # doctest: +SKIP
    >>> scae.tl.transform(scae.SAUCIE.load("run1"), new)  # doctest: +SKIP
    >>> scae.tl.query(ref, new, k=10, transfer="cell_type")  # doctest: +SKIP
    """
    _settings.check_query(adata_ref, adata_query, locals())
    ref_codes, q_codes = _stored_codes(adata_ref, adata_query, codes_key, tie_break)
    columns = _transfer_columns(adata_ref, transfer)
    k = _usable_k(k, adata_ref.n_obs)
    t0 = time.perf_counter()
    unit_max = ref_codes.max(0)
    ref_keys = pack_bits(binarize_with(ref_codes, unit_max, threshold))
    q_keys = pack_bits(binarize_with(q_codes, unit_max, threshold))
    idx, dist = hamming_knn(ref_keys, q_keys, k, **_tie_break_reps(adata_ref, adata_query, tie_break))
    elapsed = time.perf_counter() - t0

    adata = adata_query.copy() if copy else adata_query
    adata.obsm[f"{key_added}_indices"] = idx
    adata.obsm[f"{key_added}_hamming"] = dist
    for col in columns:
        adata.obs[f"{col}_{key_added}"] = _majority_labels(column(adata_ref.obs, col), idx)
    adata.uns[key_added] = {
        "params": {"k": int(k), "codes_key": codes_key, "threshold": float(threshold), "tie_break": tie_break or ""},
        "n_ref": int(adata_ref.n_obs),
        "n_ref_codes": int(len(np.unique(ref_keys, axis=0))),
        "query_s": elapsed,
    }
    logger.info("query: %d query cells × %d reference cells in %.2fs", adata.n_obs, adata_ref.n_obs, elapsed)
    return adata if copy else None


def _stored_codes(
    adata_ref: AnnData, adata_query: AnnData, codes_key: str, tie_break: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """The codes of the reference and query cells, after checking both hold ``codes_key`` and ``tie_break``."""
    for name, a in (("adata_ref", adata_ref), ("adata_query", adata_query)):
        for key in (codes_key, tie_break):
            if key is not None and key not in a.obsm:
                msg = (
                    f"{name}.obsm[{key!r}] not found; "
                    "run `scae.tl.fit` (reference) or `scae.tl.transform` (query) first"
                )
                raise ValueError(msg)
    ref_codes = np.asarray(adata_ref.obsm[codes_key])
    q_codes = np.asarray(adata_query.obsm[codes_key])
    _settings.check_codes(ref_codes, f"adata_ref.obsm[{codes_key!r}]")
    _settings.check_codes(q_codes, f"adata_query.obsm[{codes_key!r}]")
    if ref_codes.shape[1] != q_codes.shape[1]:
        msg = f"codes of different widths ({ref_codes.shape[1]} vs {q_codes.shape[1]}): use codes of the same model"
        raise ValueError(msg)
    return ref_codes, q_codes


def _transfer_columns(adata_ref: AnnData, transfer: str | list[str] | None) -> list[str]:
    """The ``adata_ref.obs`` columns named by ``transfer``, as a list, after checking they exist."""
    columns = [transfer] if isinstance(transfer, str) else list(transfer or [])
    for col in columns:
        if col not in adata_ref.obs.columns:
            msg = f"transfer column {col!r} not found in adata_ref.obs"
            raise ValueError(msg)
    return columns


def _tie_break_reps(adata_ref: AnnData, adata_query: AnnData, tie_break: str | None) -> dict[str, np.ndarray]:
    """The ``ref_rep`` and ``query_rep`` arguments of :func:`hamming_knn` (none without ``tie_break``)."""
    if tie_break is None:
        return {}
    return {
        "ref_rep": np.asarray(adata_ref.obsm[tie_break], np.float64),
        "query_rep": np.asarray(adata_query.obsm[tie_break], np.float64),
    }


def _majority_labels(ref_labels: pd.Series, idx: np.ndarray) -> pd.Categorical:
    """The most frequent of ``ref_labels`` among each query cell's neighbours (rows of ``idx``)."""
    # object → str keeps missing labels as "nan" (pandas 3 would keep them missing under astype(str))
    codes, cats = pd.factorize(ref_labels.to_numpy(dtype=object).astype(str))
    counts = np.zeros((idx.shape[0], len(cats)), dtype=np.int32)
    np.add.at(counts, (np.repeat(np.arange(idx.shape[0]), idx.shape[1]), codes[idx].ravel()), 1)
    names = np.array([str(c) for c in cats], dtype=object)  # plain str categories, not numpy's np.str_
    return pd.Categorical(names[counts.argmax(1)], categories=sorted(names))
