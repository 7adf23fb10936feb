"""Out-of-core rows: an h5ad opened with ``backed="r"`` (dense or CSR) streamed in shuffled row blocks.

Training reads a *block* of rows at a time: the rows are cut into contiguous pieces of ``piece_rows``
rows; every epoch the pieces are shuffled and grouped into blocks of about ``block_rows`` rows (many
pieces from all over the file, so batches sorted in the file still mix); a block is read with one
contiguous read per piece and shuffled in memory; minibatches are drawn inside the block. Peak memory is
one block, whatever the file size. This module never touches AnnData objects, only the backed matrix.
"""

from __future__ import annotations

import math

import h5py
import numpy as np
import scipy.sparse as sp
import torch

#: Bytes of dense float32 rows held per training block (and per inference chunk).
BLOCK_BYTES = 64 * 1024**2
#: Bytes of dense rows per chunk of the validating scan (moments, finiteness).
SCAN_BYTES = 16 * 1024**2
#: Rows per contiguous read; a block is ``block_rows // piece_rows`` reads from random places.
PIECE_ROWS = 1024


def is_backed(X) -> bool:
    """True for a matrix that lives on disk (h5py dataset or anndata's backed sparse dataset)."""
    if isinstance(X, h5py.Dataset):
        return True
    try:
        from anndata.abc import CSCDataset, CSRDataset
    except ImportError:  # pragma: no cover - anndata < 0.10
        return type(X).__name__.endswith("Dataset")
    return isinstance(X, (CSRDataset, CSCDataset))


def _check_layout(X) -> None:
    fmt = getattr(X, "format", None)
    if fmt == "csc":
        msg = "backed CSC matrices cannot be read by rows efficiently; rewrite the h5ad with X as CSR or dense"
        raise ValueError(msg)


def read_rows(X, start: int, stop: int) -> np.ndarray:
    """Dense float32 rows ``start:stop`` of a backed (or in-memory) matrix (float64 beyond float32: infinite)."""
    block = X[start:stop]
    with np.errstate(over="ignore"):  # the validating scan reports such values (scan)
        if sp.issparse(block):
            return block.toarray().astype(np.float32, copy=False)
        return np.asarray(block, dtype=np.float32)


def default_chunk_rows(n_features: int, budget: int = BLOCK_BYTES) -> int:
    """Rows per block so that one dense float32 block takes about ``budget`` bytes."""
    return max(PIECE_ROWS, (budget // (4 * max(1, n_features))) // PIECE_ROWS * PIECE_ROWS)


def iter_chunks(X, chunk_rows: int):
    """Yield ``(start, dense float32 rows)`` over the whole matrix, one chunk in memory at a time."""
    for start in range(0, X.shape[0], chunk_rows):
        yield start, read_rows(X, start, min(start + chunk_rows, X.shape[0]))


#: Entries whose integrality is tested at a time by :func:`value_range` (it stops at the first fraction).
_INTEGER_TEST_ENTRIES = 1 << 22


def _has_fraction(values: np.ndarray) -> bool:
    """Whether any entry is not a whole number, tested a slice of rows at a time (transformed data: one slice)."""
    if np.issubdtype(values.dtype, np.integer) or values.dtype == np.bool_:
        return False
    rows = values.reshape(values.shape[0], -1)
    step = max(1, _INTEGER_TEST_ENTRIES // max(1, rows.shape[1]))
    for a in range(0, rows.shape[0], step):
        part = rows[a : a + step]
        if np.any(part != np.round(part)):
            return True
    return False


def value_range(values) -> np.ndarray:
    """``[max |value|, 0 if every entry is a non-negative whole number (count-like) else 1]`` of finite values.

    What the untransformed-input warning reads (:func:`scae._values.report_range`); chunks combine with
    ``np.maximum``. The integrality test stops at the first fraction (transformed data: in the first rows).
    """
    values = np.asarray(values)
    if values.size == 0:
        return np.zeros(2)
    lo, hi = float(values.min()), float(values.max())  # (no |values| copy of a matrix that may fill memory)
    not_counts = lo < 0 or _has_fraction(values)
    return np.array([max(hi, -lo), float(not_counts)])


#: Largest finite float32; float64 input beyond it is refused (:func:`check_float32_range`).
FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_float32_range(largest: float, *, where: str) -> None:
    """``ValueError`` when the largest absolute value cannot be held in float32, the precision scae trains in.

    Such values turn into infinities on the device and the first loss into NaN (the error then blamed the
    learning rate).
    """
    if largest > FLOAT32_MAX:
        msg = (
            f"{where} holds values up to {largest:.3g} in magnitude, beyond float32 ({FLOAT32_MAX:.3g}), which scae "
            "trains in: transform the data first (arcsinh for cytometry, log1p of normalized counts for RNA)"
        )
        raise ValueError(msg)


def scan(X, *, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pass over a backed matrix: validate it and return feature mean, std and :func:`value_range`.

    Raises ``ValueError`` for empty, non-numeric or non-finite data, like :func:`scae._values.validate_matrix`.
    """
    _check_layout(X)
    if X.shape[0] == 0 or X.shape[1] == 0:
        msg = f"{where} is empty (shape {X.shape}); scae needs at least one cell and one feature"
        raise ValueError(msg)
    dtype = np.dtype(X.dtype)
    if not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)) or np.issubdtype(
        dtype, np.complexfloating
    ):
        msg = f"{where} has non-numeric dtype {dtype}; scae needs a real-valued numeric matrix"
        raise ValueError(msg)
    s1 = np.zeros(X.shape[1])
    s2 = np.zeros(X.shape[1])
    vrange, n_bad = np.zeros(2), 0
    wide = np.issubdtype(dtype, np.floating) and dtype.itemsize > 4
    for start, block in iter_chunks(X, default_chunk_rows(X.shape[1], budget=SCAN_BYTES)):
        n_finite = np.count_nonzero(np.isfinite(block))
        if n_finite < block.size:
            if wide:  # infinite in float32 only? then say so (the rows are read again in their own dtype)
                raw = X[start : start + block.shape[0]]
                raw = np.asarray(raw.data if sp.issparse(raw) else raw)
                finite = np.abs(raw[np.isfinite(raw)])
                check_float32_range(float(finite.max()) if finite.size else 0.0, where=where)
            n_bad += int(block.size - n_finite)
            continue
        s1 += block.sum(0, dtype=np.float64)
        s2 += np.square(block).sum(0, dtype=np.float64)
        vrange = np.maximum(vrange, value_range(block))
    if n_bad:
        msg = f"{where} contains {n_bad} non-finite (NaN or infinite) values; remove or impute them first"
        raise ValueError(msg)
    n = X.shape[0]
    mean = s1 / n
    std = np.sqrt(np.clip(s2 / n - mean**2, 0, None))
    std[std < 1e-6] = 1.0
    return mean.astype(np.float32), std.astype(np.float32), vrange


class BackedRowSource:
    """Row source over a backed matrix (same interface as :class:`scae.data.RowSource`).

    ``rows(idx)`` serves global row indices from the block loaded by the sampler returned by
    :meth:`make_sampler`; ``chunks(n)`` streams the file in order. Rows ``start:stop`` restrict the
    source to a shard (used by :mod:`scae.distributed`).
    """

    def __init__(
        self,
        X,
        device: torch.device,
        *,
        block_rows: int | None = None,
        piece_rows: int = PIECE_ROWS,
        start: int = 0,
        stop: int | None = None,
    ) -> None:
        _check_layout(X)
        self.X = X
        self.device = device
        self.start = int(start)
        self.stop = int(X.shape[0] if stop is None else stop)
        self.shape = (self.stop - self.start, X.shape[1])
        self.piece_rows = int(piece_rows)
        self.block_rows = int(block_rows or default_chunk_rows(X.shape[1]))
        n_pieces = math.ceil(len(self) / self.piece_rows)
        self._piece_pos = torch.zeros(n_pieces, dtype=torch.long, device=device)
        self._block: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def piece_len(self, p: int) -> int:
        """Rows in piece ``p`` (the last piece may be short)."""
        return min(self.piece_rows, len(self) - p * self.piece_rows)

    def load(self, pieces: list[int]) -> torch.Tensor:
        """Read the given pieces (in this order) into the block; return their row indices (local, on device)."""
        parts, idx, pos = [], [], 0
        piece_pos = np.zeros(len(pieces), dtype=np.int64)
        for i, p in enumerate(pieces):
            a = p * self.piece_rows
            b = a + self.piece_len(p)
            parts.append(read_rows(self.X, self.start + a, self.start + b))
            idx.append(np.arange(a, b))
            piece_pos[i] = pos
            pos += b - a
        self._block = torch.from_numpy(np.concatenate(parts)).to(self.device)
        self._piece_pos[torch.as_tensor(pieces, device=self.device)] = torch.from_numpy(piece_pos).to(self.device)
        return torch.from_numpy(np.concatenate(idx)).to(self.device)

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Dense float32 rows ``idx`` (shard-local indices, all inside the loaded block)."""
        if self._block is None:
            msg = "no block loaded: draw indices from `make_sampler(...)` before calling `rows`"
            raise RuntimeError(msg)
        pos = self._piece_pos[idx // self.piece_rows] + idx % self.piece_rows
        return self._block.index_select(0, pos)

    def chunks(self, chunk_size: int):
        """Yield consecutive dense row blocks of the shard, read straight from disk."""
        chunk_size = min(chunk_size, self.block_rows)
        for a in range(self.start, self.stop, chunk_size):
            yield torch.from_numpy(read_rows(self.X, a, min(a + chunk_size, self.stop))).to(self.device)

    def make_sampler(self, n_cells: int, batch_size: int, **kwargs) -> BlockSampler:
        """The sampler :func:`scae.train.train_net` uses for this source (``steps`` attribute → exact steps)."""
        return BlockSampler(self, batch_size, min_steps=getattr(self, "steps", 0), **kwargs)


class BlockSampler:
    """Shuffled blocks of pieces; minibatches drawn within a block (stratified by batch when given).

    ``steps_per_epoch`` is fixed at the start of each epoch. ``min_steps`` (when > 0) makes every epoch
    exactly that many steps (extra draws from the last block, or fewer from the last blocks), so that all
    ranks of a distributed run take the same number of steps.
    """

    def __init__(
        self,
        source: BackedRowSource,
        batch_size: int,
        *,
        batch_codes: torch.Tensor | None,
        n_batches: int,
        generator: torch.Generator,
        device: torch.device,
        min_steps: int = 0,
    ) -> None:
        self.source = source
        self.batch_size = min(batch_size, len(source))
        self.batch_codes = batch_codes
        self.n_batches = n_batches
        self.generator = generator
        self.device = device
        self.min_steps = int(min_steps)
        self.pieces_per_block = max(1, source.block_rows // source.piece_rows)
        self.n_pieces = math.ceil(len(source) / source.piece_rows)
        self.steps_per_epoch = max(self.min_steps, math.ceil(len(source) / self.batch_size))

    def _plan(self) -> list[list[int]]:
        if self.n_pieces <= self.pieces_per_block:
            # one block holds the whole source: minibatches are drawn exactly as from rows held in memory
            # (scae.train.Sampler), so a backed fit of data that fits one block equals the in-memory fit
            return [list(range(self.n_pieces))]
        perm = torch.randperm(self.n_pieces, generator=self.generator, device=self.device).tolist()
        return [perm[i : i + self.pieces_per_block] for i in range(0, len(perm), self.pieces_per_block)]

    def epoch(self):
        """Yield the (shard-local) index tensors of one epoch, loading blocks as it goes."""
        plan = self._plan()
        lens = [sum(self.source.piece_len(p) for p in blk) for blk in plan]
        steps = [max(1, math.ceil(n / self.batch_size)) for n in lens]
        if self.min_steps:  # exactly min_steps (all ranks of a distributed run step together)
            diff = self.min_steps - sum(steps)
            steps[-1] += max(0, diff)
            for i in range(len(steps) - 1, -1, -1):
                if diff >= 0:
                    break
                take = min(steps[i], -diff)
                steps[i] -= take
                diff += take
        self.steps_per_epoch = sum(steps)
        for blk, n_steps in zip(plan, steps, strict=True):
            if n_steps == 0:
                continue
            idx = self.source.load(sorted(blk))
            if self.batch_codes is None:
                for s in range(n_steps):
                    if s % max(1, math.ceil(len(idx) / self.batch_size)) == 0:
                        perm = idx[torch.randperm(len(idx), generator=self.generator, device=self.device)]
                    k = s % max(1, math.ceil(len(idx) / self.batch_size))
                    yield perm[k * self.batch_size : (k + 1) * self.batch_size]
                continue
            codes = self.batch_codes.index_select(0, idx)
            order = idx[torch.argsort(codes, stable=True)]
            counts = torch.bincount(codes, minlength=self.n_batches)
            starts = torch.cumsum(counts, 0) - counts
            present = torch.nonzero(counts).ravel()
            per_batch = max(1, self.batch_size // self.n_batches)
            which = present.repeat_interleave(per_batch)
            sizes = counts.to(torch.float32)
            for _ in range(n_steps):
                u = torch.rand(which.shape[0], generator=self.generator, device=self.device, dtype=torch.float32)
                yield order[starts[which] + (u * sizes[which]).long().clamp_max(counts[which] - 1)]
