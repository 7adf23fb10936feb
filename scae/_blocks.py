"""Feature blocks from AnnData: which likelihood each feature has, validation, and input moments."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from anndata import AnnData

from . import _backed, data
from .nn.heads import COUNT_LIKELIHOODS, LIKELIHOODS, TARGET_SUM, Block


def _check_likelihood(value, where: str) -> str:
    if value not in LIKELIHOODS:
        msg = f"{where}: unknown likelihood {value!r}; choose one of {list(LIKELIHOODS)}"
        raise ValueError(msg)
    return str(value)


def resolve_blocks(
    adata: AnnData,
    *,
    likelihood: str | Mapping[str, str],
    block_key: str | None,
    block_weights: Mapping[str, float] | None,
) -> list[Block]:
    """Blocks of features with their likelihood and weight.

    Without ``block_key`` every feature shares ``likelihood`` (a string). With ``block_key``, the column
    ``adata.var[block_key]`` names each feature's block (in order of first appearance) and ``likelihood`` is
    one string for all blocks or a mapping ``{block: likelihood}`` covering every block.
    """
    if block_key is None:
        if not isinstance(likelihood, str):
            msg = "a per-block `likelihood` mapping needs `block_key` naming the adata.var column of the blocks"
            raise ValueError(msg)
        if block_weights is not None:
            msg = "`block_weights` was given without `block_key`"
            raise ValueError(msg)
        return [Block("all", _check_likelihood(likelihood, "likelihood"))]  # type: ignore[arg-type]
    if block_key not in adata.var.columns:
        msg = f"block_key {block_key!r} not found in adata.var (columns: {list(adata.var.columns)})"
        raise ValueError(msg)
    col = adata.var[block_key]
    if col.isna().any():
        msg = f"adata.var[{block_key!r}] has {int(col.isna().sum())} missing values; every feature needs a block"
        raise ValueError(msg)
    names = [str(v) for v in pd.unique(col.astype(str))]
    values = col.astype(str).to_numpy()
    if isinstance(likelihood, str):
        like = dict.fromkeys(names, likelihood)
    else:
        like = {str(k): v for k, v in likelihood.items()}
        missing = [n for n in names if n not in like]
        unknown = [k for k in like if k not in names]
        if missing or unknown:
            msg = (
                f"`likelihood` must name every block of adata.var[{block_key!r}] ({names}); "
                f"missing {missing}, unknown {unknown}"
            )
            raise ValueError(msg)
    weights = {} if block_weights is None else {str(k): float(v) for k, v in block_weights.items()}
    unknown = [k for k in weights if k not in names]
    if unknown:
        msg = f"`block_weights` names blocks {unknown} that are not in adata.var[{block_key!r}] ({names})"
        raise ValueError(msg)
    bad = {k: v for k, v in weights.items() if not (v >= 0 and np.isfinite(v))}
    if bad:
        msg = f"`block_weights` must be finite numbers >= 0, got {bad}"
        raise ValueError(msg)
    return [
        Block(
            n,
            _check_likelihood(like[n], f"block {n!r}"),  # type: ignore[arg-type]
            tuple(int(i) for i in np.flatnonzero(values == n)),
            weights.get(n, 1.0),
        )
        for n in names
    ]


def validate_and_moments(X, blocks: list[Block], *, where: str, validate: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Check each block's values against its likelihood; per-feature moments of the encoder inputs.

    Count blocks must hold non-negative integers (their moments are of ``log1p`` normalized counts, the
    encoder's input), Bernoulli blocks 0/1; ``mse`` blocks get the untransformed-input warning.
    ``validate=False`` only recomputes the moments (of data that was checked before, e.g. by the fit).
    """
    if _backed.is_backed(X) and (len(blocks) > 1 or blocks[0].likelihood != "mse"):
        return _backed_moments(X, blocks, where=where)
    n_features = X.shape[1]
    mean = np.zeros(n_features, dtype=np.float32)
    std = np.ones(n_features, dtype=np.float32)
    for b in blocks:
        index = np.arange(n_features) if b.index is None else np.asarray(b.index)
        Xb = X if b.index is None else data.block_matrix(X, index)
        label = where if b.index is None else f"block {b.name!r} of {where}"
        if b.likelihood in COUNT_LIKELIHOODS:
            if validate:
                data.validate_counts(Xb, where=label)
            Xb = data.log_normalize(Xb, TARGET_SUM)
        elif not validate:
            pass
        elif b.likelihood == "bernoulli":
            data.validate_binary(Xb, where=label)
        else:
            data.warn_if_untransformed(Xb, where=label)
        mean[index], std[index] = data.feature_moments(Xb)
    return mean, std


def _backed_moments(X, blocks: list[Block], *, where: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`validate_and_moments` of a backed matrix: one pass over row chunks, never the whole matrix.

    Library sizes are per row, so normalizing a chunk of rows is exact; the checks count problems over the
    whole file and report them as the in-memory checks do.
    """
    n, n_features = X.shape
    s1, s2 = np.zeros(n_features), np.zeros(n_features)
    parts = [
        (b, np.arange(n_features) if b.index is None else np.asarray(b.index),
         where if b.index is None else f"block {b.name!r} of {where}")
        for b in blocks
    ]  # fmt: skip
    found = {label: np.zeros(2, dtype=np.int64) for _, _, label in parts}  # problems, or max |x| of mse blocks
    vmax = dict.fromkeys(found, 0.0)
    for _, chunk in _backed.iter_chunks(X, _backed.default_chunk_rows(n_features, budget=_backed.SCAN_BYTES)):
        for b, index, label in parts:
            xb = chunk if b.index is None else chunk[:, index]
            if b.likelihood in COUNT_LIKELIHOODS:
                found[label] += data.count_violations(xb)
                xb = data.log_normalize(xb, TARGET_SUM)
            elif b.likelihood == "bernoulli":
                found[label][0] += data.binary_violations(xb)
            elif xb.size:
                vmax[label] = max(vmax[label], float(np.abs(xb).max()))
            s1[index] += xb.sum(0, dtype=np.float64)
            s2[index] += np.square(xb, dtype=np.float64).sum(0)
    for b, _, label in parts:
        if b.likelihood in COUNT_LIKELIHOODS:
            data.check_counts(*found[label], where=label)
        elif b.likelihood == "bernoulli":
            data.check_binary(int(found[label][0]), where=label)
        elif vmax[label] > data.LARGE_VALUE_WARNING:
            data.logger.warning("%s has values up to %.3g: scae expects transformed data", label, vmax[label])
    mean = s1 / n
    std = np.sqrt(np.clip(s2 / n - mean**2, 0, None))
    std[std < 1e-6] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)
