"""Primitives of the clustering: binarize and pack codes, hash them, per-label sums (the merge: :mod:`scae._merge`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp


def binarize(codes: np.ndarray, *, threshold: float = 0.1) -> np.ndarray:
    """A unit fires (1) when its activation exceeds ``threshold`` times that unit's maximum over all cells.

    Parameters
    ----------
    codes
        Clustering-layer activations, shape ``(n_cells, n_units)``, non-negative.
    threshold
        Relative firing threshold in [0, 1).

    Examples
    --------
    >>> import numpy as np
    >>> from scae.cluster import binarize
    >>> codes = np.array([[0.9, 0.0, 0.3, 0.0], [0.8, 0.05, 0.0, 0.6], [0.0, 1.0, 0.02, 0.5]])
    >>> binarize(codes).astype(int).tolist()  # 0.05 and 0.02 lie below 10% of their unit's maximum
    [[1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 0, 1]]
    """
    unit_max = codes.max(0, keepdims=True)
    return codes > np.where(unit_max > 0, threshold * unit_max, np.inf)  # a unit that never fires stays off


def pack_bits(binary: np.ndarray) -> np.ndarray:
    """Pack a boolean ``(n, n_bits)`` matrix into ``(n, ceil(n_bits / 64))`` uint64 words.

    Examples
    --------
    >>> import numpy as np
    >>> from scae.cluster import pack_bits
    >>> words = pack_bits(np.array([[1, 0, 1], [0, 0, 0], [1, 0, 1]], dtype=bool))
    >>> words.dtype, words.shape
    (dtype('uint64'), (3, 1))
    >>> bool(words[0, 0] == words[2, 0] != words[1, 0])  # equal rows, equal words
    True
    >>> pack_bits(np.ones((2, 70), dtype=bool)).shape  # 70 bits take two words
    (2, 2)
    """
    packed = np.packbits(np.asarray(binary, dtype=bool), axis=1)
    pad = (-packed.shape[1]) % 8
    if pad:
        packed = np.pad(packed, ((0, 0), (0, pad)))
    return np.ascontiguousarray(packed).view(np.uint64)


def code_words(
    codes: np.ndarray, *, threshold: float = 0.1, unit_max: np.ndarray | None = None, chunk_rows: int = 65536
) -> np.ndarray:
    """Binary codes of :func:`binarize` packed into uint64 words, ``(n_cells, ceil(n_units / 64))``.

    Binarized and packed in row blocks, so no ``n_cells × n_units`` boolean matrix is ever held (8 bytes
    per 64 units and cell instead of 64). ``unit_max`` defaults to the per-unit maximum of ``codes``.

    Examples
    --------
    >>> import numpy as np
    >>> from scae.cluster import binarize, code_words, pack_bits
    >>> codes = np.array([[0.9, 0.0, 0.3, 0.0], [0.8, 0.05, 0.0, 0.6], [0.0, 1.0, 0.02, 0.5]])
    >>> words = code_words(codes, chunk_rows=2)
    >>> words.shape, bool((words == pack_bits(binarize(codes))).all())
    ((3, 1), True)
    """
    if unit_max is None:
        unit_max = codes.max(0)
    cut = np.where(unit_max > 0, threshold * unit_max, np.inf)  # (not threshold × inf: NaN at threshold 0)
    words = np.empty((codes.shape[0], -(-codes.shape[1] // 64)), dtype=np.uint64)
    for start in range(0, codes.shape[0], chunk_rows):
        words[start : start + chunk_rows] = pack_bits(codes[start : start + chunk_rows] > cut)
    return words


def word_ids(words: np.ndarray) -> np.ndarray:
    """Integer id ``0..k-1`` per distinct row of packed codes, in order of first appearance, O(n) (hashing).

    Examples
    --------
    >>> import numpy as np
    >>> from scae.cluster import word_ids
    >>> word_ids(np.array([[5], [3], [5], [0]], dtype=np.uint64)).tolist()
    [0, 1, 0, 2]
    >>> word_ids(np.array([[5, 1], [5, 2], [5, 1]], dtype=np.uint64)).tolist()  # rows of several words
    [0, 1, 0]
    """
    if words.shape[1] == 1:
        ids, _ = pd.factorize(words[:, 0])
    else:
        ids, _ = pd.MultiIndex.from_arrays(list(words.T)).factorize()
    return np.asarray(ids, dtype=np.int64)


def hash_codes(binary: np.ndarray) -> np.ndarray:
    """Integer id per distinct binary code in O(n).

    Rows are packed into 64-bit words and the word tuples hashed by pandas (no sorting).

    Examples
    --------
    >>> import numpy as np
    >>> from scae.cluster import hash_codes
    >>> binary = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1], [0, 0, 0]], dtype=bool)
    >>> hash_codes(binary).tolist()  # rows 0 and 2 share a code
    [0, 1, 0, 2]
    """
    return word_ids(pack_bits(binary))


def _label_blocks(labels: np.ndarray, X, n: int, chunk_rows: int):
    """Row blocks of ``X`` as float64 (dense or sparse) with the ``(n, rows)`` one-hot matrix of their labels."""
    for start in range(0, X.shape[0], chunk_rows):
        lab = labels[start : start + chunk_rows]
        block = X[start : start + chunk_rows]
        block = block.astype(np.float64) if sp.issparse(block) else np.asarray(block, dtype=np.float64)
        yield sp.csr_matrix((np.ones(lab.size), (lab, np.arange(lab.size))), shape=(n, lab.size)), block


def _dense(m) -> np.ndarray:
    return m.toarray() if sp.issparse(m) else m


def _square(block):
    return block.multiply(block) if sp.issparse(block) else np.square(block)


def label_sums(labels: np.ndarray, X, n: int, *, square: bool = False, chunk_rows: int = 65536) -> np.ndarray:
    """Per-label sums of the rows of ``X`` (dense, sparse or backed): ``(n, n_features)`` float64, by row blocks.

    ``square``: sums of the squared values instead.

    Examples
    --------
    >>> import numpy as np
    >>> from scae.cluster import label_sums
    >>> X = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    >>> label_sums(np.array([0, 1, 0]), X, 2).tolist()  # rows 0 and 2 have label 0
    [[6.0, 8.0], [3.0, 4.0]]
    >>> label_sums(np.array([0, 1, 0]), X, 2, square=True).tolist()
    [[26.0, 40.0], [9.0, 16.0]]
    """
    out = np.zeros((n, X.shape[1]))
    for onehot, block in _label_blocks(labels, X, n, chunk_rows):
        out += _dense(onehot @ (_square(block) if square else block))
    return out


def label_moments(labels: np.ndarray, X, n: int, *, chunk_rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Per-label sums and sums of squares of the rows of ``X`` (as :func:`label_sums`), in one read of ``X``.

    Examples
    --------
    >>> import numpy as np
    >>> from scae.cluster import label_moments
    >>> X = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    >>> sums, squares = label_moments(np.array([0, 1, 0]), X, 2)
    >>> sums.tolist(), squares.tolist()
    ([[6.0, 8.0], [3.0, 4.0]], [[26.0, 40.0], [9.0, 16.0]])
    """
    sums, squares = np.zeros((n, X.shape[1])), np.zeros((n, X.shape[1]))
    for onehot, block in _label_blocks(labels, X, n, chunk_rows):
        sums += _dense(onehot @ block)
        squares += _dense(onehot @ _square(block))
    return sums, squares


def _centroids(labels: np.ndarray, features, n: int, *, square: bool = False):
    """Per-label means of ``features`` and cell counts; with ``square`` also the means of the squares."""
    counts = np.bincount(labels, minlength=n).astype(np.float64)
    per_cell = np.maximum(counts, 1)[:, None]
    if square:
        sums, squares = label_moments(labels, features, n)
        return sums / per_cell, counts, squares / per_cell
    return label_sums(labels, features, n) / per_cell, counts


def default_min_cluster_size(n_cells: int) -> int:
    """Codes with fewer cells than this are absorbed: 1% of the cells (at least 5) up to 2,000 cells, 20 cells up
    to 20,000 cells, 0.1% above.

    Codes of a handful of cells are noise of the binarization; left alone, a few of them far from everything
    else form an outlying group that takes one of ``n_clusters`` (levine3k, 3,000 cells: a 32-cell group
    made k=3 F1 0.58 instead of 0.99).

    Examples
    --------
    >>> from scae.cluster import default_min_cluster_size
    >>> [default_min_cluster_size(n) for n in (100, 1_000, 3_000, 20_000, 100_000)]
    [5, 10, 20, 20, 100]
    """
    return int(max(5, min(20, n_cells // 100), n_cells // 1000))


def relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0..k-1, largest cluster first.

    Examples
    --------
    >>> import numpy as np
    >>> from scae.cluster import relabel_by_size
    >>> relabel_by_size(np.array([7, 7, 3, 3, 3, 9])).tolist()  # 3 cells of label 3, 2 of 7, 1 of 9
    [1, 1, 0, 0, 0, 2]
    """
    uniq, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[inv].astype(np.int64)
