"""Feature blocks from AnnData: which likelihood each feature has, validation, and input moments.

The likelihood entries (:mod:`scae.nn.likelihoods`) give the input transform; the check of the input values
is chosen by the entry's ``value_kind`` from :data:`VALUE_CHECKS`, the one place that knows the AnnData checks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData

from . import _backed, _values, data
from .nn.heads import LIKELIHOODS, Block
from .nn.likelihoods import get_likelihood, is_plain


@dataclass(frozen=True)
class ValueCheck:
    """The check of one kind of input values, in memory and over the row chunks of a backed matrix."""

    #: ``check(X, where=...)`` of an in-memory matrix: raises ``ValueError`` (or logs a warning)
    check: Callable[..., None]
    #: statistics of one dense chunk, e.g. numbers of bad entries
    scan: Callable[[np.ndarray], np.ndarray]
    #: how chunk statistics combine (``np.add`` for counts of bad entries, ``np.maximum`` for a maximum)
    combine: Callable[[np.ndarray, np.ndarray], np.ndarray]
    #: ``report(statistics, where=...)`` after the last chunk: raises or warns as :attr:`check` does
    report: Callable[..., None]


#: ``Likelihood.value_kind`` → the check of its input values.
VALUE_CHECKS: dict[str, ValueCheck] = {
    "continuous": ValueCheck(
        _values.warn_if_untransformed,
        _backed.value_range,
        np.maximum,
        _values.report_range,
    ),
    "counts": ValueCheck(
        _values.validate_counts,
        lambda xb: np.array(_values.count_violations(xb), dtype=np.int64),
        np.add,
        lambda found, *, where: _values.check_counts(*found, where=where),
    ),
    "binary": ValueCheck(
        _values.validate_binary,
        lambda xb: np.array([_values.binary_violations(xb)], dtype=np.int64),
        np.add,
        lambda found, *, where: _values.check_binary(int(found[0]), where=where),
    ),
}


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
    col = data.label_column(
        adata.var, block_key, param="block_key", where="adata.var", each="every feature needs a block"
    )
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
    encoder's input), Bernoulli blocks 0/1; ``mse`` blocks get the untransformed-input warning (see
    :data:`VALUE_CHECKS`). ``validate=False`` only recomputes the moments (of data that was checked before,
    e.g. by the fit).
    """
    if _backed.is_backed(X) and (len(blocks) > 1 or not is_plain(blocks)):
        return _backed_moments(X, blocks, where=where)
    n_features = X.shape[1]
    mean = np.zeros(n_features, dtype=np.float32)
    std = np.ones(n_features, dtype=np.float32)
    for b in blocks:
        index = np.arange(n_features) if b.index is None else np.asarray(b.index)
        Xb = _checked_block(X, b, where=where, validate=validate)
        mean[index], std[index] = data.feature_moments(get_likelihood(b.likelihood).encoder_input_np(Xb))
    return mean, std


def validate_values(X, blocks: list[Block], *, where: str) -> None:
    """The value checks of :func:`validate_and_moments` alone, for new cells of a trained model (a backed matrix is
    checked in the one pass of :func:`validate_and_moments`, its moments then dropped).
    """
    if _backed.is_backed(X):
        validate_and_moments(X, blocks, where=where)
        return
    for b in blocks:
        _checked_block(X, b, where=where, validate=True)


def _checked_block(X, b: Block, *, where: str, validate: bool):
    """Block ``b``'s columns of the in-memory ``X``, checked against its likelihood when ``validate``."""
    Xb = X if b.index is None else data.block_matrix(X, np.asarray(b.index))
    if validate:
        kind = get_likelihood(b.likelihood).value_kind
        VALUE_CHECKS[kind].check(Xb, where=where if b.index is None else f"block {b.name!r} of {where}")
    return Xb


def _backed_moments(X, blocks: list[Block], *, where: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`validate_and_moments` of a backed matrix: one pass over row chunks, never the whole matrix.

    Library sizes are per row, so normalizing a chunk of rows is exact; the checks gather their statistics
    over the whole file and report them as the in-memory checks do.
    """
    n, n_features = X.shape
    s1, s2 = np.zeros(n_features), np.zeros(n_features)
    parts = [
        (get_likelihood(b.likelihood), np.arange(n_features) if b.index is None else np.asarray(b.index),
         where if b.index is None else f"block {b.name!r} of {where}", b.index is None)
        for b in blocks
    ]  # fmt: skip
    found: dict[str, np.ndarray | None] = {label: None for _, _, label, _ in parts}
    for _, chunk in _backed.iter_chunks(X, _backed.default_chunk_rows(n_features, budget=_backed.SCAN_BYTES)):
        for lik, index, label, full in parts:
            xb = chunk if full else chunk[:, index]
            checker = VALUE_CHECKS[lik.value_kind]
            stats = checker.scan(xb)
            found[label] = stats if found[label] is None else checker.combine(found[label], stats)
            xb = lik.encoder_input_np(xb)
            s1[index] += xb.sum(0, dtype=np.float64)
            s2[index] += np.square(xb, dtype=np.float64).sum(0)
    for lik, _, label, _ in parts:
        if found[label] is not None:
            VALUE_CHECKS[lik.value_kind].report(found[label], where=label)
    mean = s1 / n
    std = np.sqrt(np.clip(s2 / n - mean**2, 0, None))
    std[std < 1e-6] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)
