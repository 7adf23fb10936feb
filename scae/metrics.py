"""Evaluation helpers: Hungarian-matched F1 (FlowCAP / Weber & Robinson), ARI, NMI, kNN label accuracy."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

__all__ = ["cluster_scores", "embedding_mmd", "hungarian_f1", "knn_accuracy"]


def hungarian_f1(labels_true, labels_pred) -> float:
    """Mean F1 over true populations after one-to-one Hungarian matching of clusters to populations.

    Each true population is matched to at most one cluster so that the summed F1 is maximal; unmatched
    populations score 0 (Weber & Robinson 2016, Cytometry A 89:1084).

    Parameters
    ----------
    labels_true, labels_pred
        Arrays of shape ``(n_cells,)``.

    Examples
    --------
    >>> from scae.metrics import hungarian_f1
    >>> hungarian_f1(["T", "T", "B", "B"], [0, 0, 1, 1])  # names need not match, only the grouping
    1.0
    >>> round(hungarian_f1(["T", "T", "B", "B"], [0, 0, 0, 1]), 3)  # B: F1 2/3; T: F1 0.8
    0.733
    """
    t = pd.Categorical(np.asarray(labels_true))
    p = pd.Categorical(np.asarray(labels_pred))
    cont = pd.crosstab(t.codes, p.codes).to_numpy().astype(np.float64)  # (n_true, n_pred)
    size_t = cont.sum(1, keepdims=True)
    size_p = cont.sum(0, keepdims=True)
    f1 = 2 * cont / (size_t + size_p)
    rows, cols = linear_sum_assignment(-f1)
    return float(f1[rows, cols].sum() / f1.shape[0])


def cluster_scores(labels_true, labels_pred) -> dict[str, float]:
    """F1 (Hungarian), ARI and NMI of a clustering against reference labels, and its number of clusters.

    Examples
    --------
    >>> from scae.metrics import cluster_scores
    >>> cluster_scores(["T", "T", "B", "B", "NK", "NK"], [2, 2, 0, 0, 1, 1])
    {'f1': 1.0, 'ari': 1.0, 'nmi': 1.0, 'n_clusters': 3}
    """
    return {
        "f1": hungarian_f1(labels_true, labels_pred),
        "ari": float(adjusted_rand_score(labels_true, labels_pred)),
        "nmi": float(normalized_mutual_info_score(labels_true, labels_pred)),
        "n_clusters": int(pd.Series(np.asarray(labels_pred)).nunique()),
    }


def knn_accuracy(embedding: np.ndarray, labels, *, k: int = 15, cv: int = 5, random_state: int = 0) -> float:
    """Cross-validated k-nearest-neighbour accuracy of ``labels`` in ``embedding`` (how well it keeps them apart).

    Examples
    --------
    >>> import numpy as np
    >>> from scae.metrics import knn_accuracy
    >>> rng = np.random.default_rng(0)
    >>> emb = np.concatenate([rng.normal(0, 1, (50, 2)), rng.normal(8, 1, (50, 2))])
    >>> knn_accuracy(emb, ["a"] * 50 + ["b"] * 50)
    1.0
    """
    clf = KNeighborsClassifier(n_neighbors=k)
    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=random_state)
    return float(cross_val_score(clf, embedding, np.asarray(labels), cv=folds).mean())


def embedding_mmd(
    embedding: np.ndarray, batches, *, reference=None, max_cells: int = 3000, random_state: int = 0
) -> float:
    """Sum over non-reference batches of the squared MMD to the reference batch in an embedding.

    The embedding is standardized per dimension first (so embeddings of different scale compare), and at
    most ``max_cells`` cells (stratified by batch) are used. Same multi-scale kernel as the training loss.

    Parameters
    ----------
    embedding
        ``(n_cells, n_dims)`` coordinates.
    batches
        Batch label per cell.
    reference
        Reference batch; default the largest.

    Examples
    --------
    >>> import numpy as np
    >>> from scae.metrics import embedding_mmd
    >>> rng = np.random.default_rng(0)
    >>> mixed = rng.normal(0, 1, (200, 2))
    >>> apart = mixed + np.repeat([[0.0, 0.0], [3.0, 0.0]], 100, axis=0)  # batch "b" shifted
    >>> batches = ["a"] * 100 + ["b"] * 100
    >>> embedding_mmd(mixed, batches) < 0.2 < 1.0 < embedding_mmd(apart, batches)
    True
    """
    import torch

    from .losses import mmd

    cat = pd.Categorical(np.asarray(batches))
    codes = np.asarray(cat.codes)
    counts = np.bincount(codes)
    ref = int(np.argmax(counts)) if reference is None else list(cat.categories).index(reference)
    rng = np.random.default_rng(random_state)
    per = max(2, max_cells // len(counts))
    idx = np.concatenate(
        [rng.choice(np.flatnonzero(codes == b), min(per, counts[b]), replace=False) for b in range(len(counts))]
    )
    emb = np.asarray(embedding, dtype=np.float64)[idx]
    emb = (emb - emb.mean(0)) / np.where(emb.std(0) > 0, emb.std(0), 1.0)
    value = mmd(
        torch.from_numpy(emb), torch.from_numpy(codes[idx].astype(np.int64)), reference=ref, n_batches=len(counts)
    )
    return float(value)
