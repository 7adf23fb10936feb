"""The user-facing model: registers what it uses from AnnData, trains the network, returns outputs."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import numpy as np
import torch
from anndata import AnnData

from . import _fast, cluster, data
from .nn.network import SAUCIENet
from .train import LossWeights, infer, train_net

logger = logging.getLogger("scae")

#: Default number of optimizer steps when ``max_epochs`` is not given.
DEFAULT_STEPS = 3000
MAX_AUTO_EPOCHS = 1000


def default_max_epochs(n_cells: int, batch_size: int, n_steps: int = DEFAULT_STEPS) -> int:
    """Epochs giving about ``n_steps`` optimizer steps (at least 1, at most ``MAX_AUTO_EPOCHS``)."""
    steps_per_epoch = max(1, math.ceil(n_cells / max(1, min(batch_size, n_cells))))
    return int(min(MAX_AUTO_EPOCHS, max(1, round(n_steps / steps_per_epoch))))


class SAUCIE:
    """SAUCIE-style multi-head autoencoder on an AnnData.

    One network gives a 2-D embedding (visualization head), an MMD batch correction of that embedding
    (with ``batch_key``), clusters from ID-regularized binary codes of the last decoder layer, and a
    reconstruction that serves as imputed/denoised values.

    Parameters
    ----------
    adata
        Cells × features. Use transformed data: arcsinh for cytometry (:func:`scae.pp.arcsinh`),
        log-normalized counts for RNA. Features are standardized inside the network and outputs are
        returned in input units.
    layer
        Layer to use instead of ``adata.X``.
    batch_key
        Column of ``adata.obs`` with batches to correct; ``None`` for no batch correction.
    reference_batch
        Batch the others are moved onto; default the largest.
    hidden
        Encoder layer widths; the decoder mirrors them and its last hidden layer is the clustering layer.
    n_latent
        Width of the embedding layer.
    lambda_b
        Weight of the MMD between batches in the embedding (only with ``batch_key``).
    lambda_c
        Weight of the ID regularization (entropy) of the clustering layer; larger → fewer clusters.
    lambda_d
        Weight of the within-cluster distance; larger → clusters tighter in input space (more clusters).
    learning_rate
        Adam learning rate.
    batch_size
        Minibatch size; with ``batch_key`` each minibatch holds equal numbers of cells of every batch.
        Default 256 on CPU and 4096 on CUDA (see :mod:`scae._fast`).
    random_state
        Seed of weight init and minibatch sampling: same seed and device type → same results.
    device
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    precision
        ``"32"`` (float32) or ``"bf16"`` (bfloat16 autocast in the training step; falls back to float32
        with a warning where unsupported).
    compile
        Compile the training step with ``torch.compile``; falls back to eager with a warning where that fails.
    block_rows
        Rows per block read from disk when ``adata`` is backed (``read_h5ad(..., backed="r")``); default
        about 64 MB of dense float32 rows. Peak memory of training is one block, whatever the file size.

    Examples
    --------
    >>> import scae
    >>> adata = scae.datasets.cytonorm()
    >>> model = scae.SAUCIE(adata, batch_key="batch")
    >>> model.train(max_epochs=20)  # doctest: +SKIP
    >>> adata.obsm["X_scae"] = model.get_embedding()  # doctest: +SKIP
    """

    def __init__(
        self,
        adata: AnnData,
        *,
        layer: str | None = None,
        batch_key: str | None = None,
        reference_batch: str | None = None,
        hidden: Sequence[int] = (512, 256, 128),
        n_latent: int = 2,
        lambda_b: float = 0.1,
        lambda_c: float = 0.1,
        lambda_d: float = 0.2,
        learning_rate: float = 1e-3,
        batch_size: int | None = None,
        random_state: int = 0,
        device: str | torch.device = "auto",
        precision: str = "32",
        compile: bool = False,
        block_rows: int | None = None,
    ) -> None:
        if not isinstance(adata, AnnData):
            msg = f"expected an AnnData, got {type(adata).__name__}"
            raise TypeError(msg)
        for name, value in (("lambda_b", lambda_b), ("lambda_c", lambda_c), ("lambda_d", lambda_d)):
            if not (value >= 0 and math.isfinite(value)):
                msg = f"`{name}` must be a finite number >= 0, got {value!r}"
                raise ValueError(msg)
        self.device = data.resolve_device(device)
        if batch_size is None:
            batch_size = _fast.default_batch_size(self.device)
        self.autocast_dtype = _fast.autocast_dtype(precision, self.device)
        self.compile = bool(compile)
        self.block_rows = block_rows
        if batch_size < 2:
            msg = f"`batch_size` must be at least 2, got {batch_size}"
            raise ValueError(msg)
        if learning_rate <= 0:
            msg = f"`learning_rate` must be > 0, got {learning_rate}"
            raise ValueError(msg)
        X = data.get_matrix(adata, layer)
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        data.validate_matrix(X, where=where)
        batches = data.get_batches(adata, batch_key, reference_batch)
        if batches is not None and len(batches.categories) > 1:
            need = max(2, batch_size // len(batches.categories))
            counts = np.bincount(batches.codes)
            small = [c for c, n in zip(batches.categories, counts, strict=True) if n < need]
            if small:
                logger.warning("batches %s have fewer cells than their minibatch share (%d); cells are redrawn", small, need)
        data.warn_if_untransformed(X, where=where)

        self.adata = adata
        self.layer = layer
        self.batch_key = batch_key
        self.batches = batches
        self.var_names = list(map(str, adata.var_names))
        self.random_state = int(random_state)
        self.batch_size = int(batch_size)
        self.learning_rate = float(learning_rate)
        self.weights = LossWeights(lambda_b=lambda_b if batches is not None else 0.0, lambda_c=lambda_c, lambda_d=lambda_d)
        self.hparams = {
            "hidden": list(hidden),
            "n_latent": int(n_latent),
            "lambda_b": float(lambda_b),
            "lambda_c": float(lambda_c),
            "lambda_d": float(lambda_d),
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
            "random_state": self.random_state,
        }
        mean, std = data.feature_moments(X)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            self.net = SAUCIENet(
                X.shape[1],
                hidden=hidden,
                n_latent=n_latent,
                feature_mean=torch.from_numpy(mean),
                feature_std=torch.from_numpy(std),
            ).to(self.device)
        self._X = X
        self._source: data.RowSource | None = None
        self._outputs: dict[str, np.ndarray] | None = None
        self.history: dict[str, list[float]] = {}
        self.is_trained = False
        self.runtime: dict[str, float] = {}

    # ------------------------------------------------------------------ training
    def _row_source(self) -> data.RowSource:
        if self._source is None:
            self._source = data.make_row_source(self._X, self.device, block_rows=self.block_rows)
        return self._source

    def train(self, max_epochs: int | None = None, *, progress: bool = True) -> SAUCIE:
        """Train the network.

        Parameters
        ----------
        max_epochs
            Passes over the data; default gives about 3000 optimizer steps.
        progress
            Show a tqdm progress bar.

        Returns
        -------
        The model itself (``history`` holds the per-epoch mean of every loss term).
        """
        n_cells = self._X.shape[0]
        if max_epochs is None:
            max_epochs = default_max_epochs(n_cells, self.batch_size)
        if max_epochs < 1:
            msg = f"`max_epochs` must be >= 1, got {max_epochs}"
            raise ValueError(msg)
        t0 = time.perf_counter()
        source = self._row_source()
        t_load = time.perf_counter() - t0
        gen = torch.Generator(device=self.device).manual_seed(self.random_state)
        if self.batches is not None:
            batch_codes = torch.from_numpy(self.batches.codes).to(self.device)
            n_batches, reference = len(self.batches.categories), self.batches.reference
        else:
            batch_codes, n_batches, reference = None, 1, 0
        t1 = time.perf_counter()
        history = train_net(
            self.net,
            source,
            batch_codes=batch_codes,
            n_batches=n_batches,
            reference=reference,
            weights=self.weights,
            max_epochs=max_epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            generator=gen,
            progress=progress,
            autocast_dtype=self.autocast_dtype,
            compile=self.compile,
        )
        t_train = time.perf_counter() - t1
        for k, v in history.items():
            self.history.setdefault(k, []).extend(v)
        steps = max_epochs * math.ceil(n_cells / min(self.batch_size, n_cells))
        self.runtime = {
            "load_s": t_load,
            "train_s": t_train,
            "epochs": int(max_epochs),
            "steps": int(steps),
            "train_cells_per_s": steps * min(self.batch_size, n_cells) / max(t_train, 1e-9),
        }
        self.is_trained = True
        self._outputs = None
        logger.info("trained %d epochs in %.1fs (%.0f cells/s)", max_epochs, t_train, self.runtime["train_cells_per_s"])
        return self

    # ------------------------------------------------------------------ outputs
    def _check_trained(self) -> None:
        if not self.is_trained:
            msg = "the model is not trained yet: call `model.train()` first"
            raise RuntimeError(msg)

    def _infer(self) -> dict[str, np.ndarray]:
        self._check_trained()
        if self._outputs is None:
            t0 = time.perf_counter()
            out = infer(self.net, self._row_source())
            self._outputs = {k: v.numpy() for k, v in out.items()}
            self.runtime["infer_s"] = time.perf_counter() - t0
        return self._outputs

    def get_embedding(self) -> np.ndarray:
        """2-D embedding (``n_cells × n_latent``, float32); batch-corrected when ``batch_key`` was given."""
        return self._infer()["embedding"].astype(np.float32)

    def get_codes(self) -> np.ndarray:
        """Clustering-layer activations before binarization (``n_cells × n_units``, float32)."""
        return self._infer()["codes"].astype(np.float32)

    def get_clusters(
        self,
        *,
        threshold: float = 0.1,
        min_cluster_size: int | None = None,
        merge_threshold: float | None = 2.0,
        n_clusters: int | None = None,
    ) -> np.ndarray:
        """Cluster label per cell (0 = largest cluster) from binarized codes after merging.

        Parameters
        ----------
        threshold
            A unit fires when its activation exceeds this fraction of its maximum.
        min_cluster_size
            Codes with fewer cells join the nearest cluster; default ``max(5, n_cells // 1000)``.
        merge_threshold
            Clusters whose denoised centres differ by less than about this many standard deviations in
            every feature are merged; larger → fewer clusters; ``None``/0 disables merging.
        n_clusters
            Cut the merge tree into this many clusters instead of using ``merge_threshold``.
        """
        out = self._infer()
        features = (out["reconstruction"] - self.net.feature_mean.cpu().numpy()) / self.net.feature_std.cpu().numpy()
        return cluster.codes_to_clusters(
            out["codes"],
            features,
            threshold=threshold,
            min_cluster_size=min_cluster_size,
            merge_threshold=merge_threshold,
            n_clusters=n_clusters,
        )

    def get_reconstruction(self, *, corrected: bool = False) -> np.ndarray:
        """Reconstruction in input units (imputed/denoised values).

        Parameters
        ----------
        corrected
            With batch correction, ``True`` returns every batch in the reference batch's units
            (``layers["scae_corrected"]``); ``False`` puts each batch back to its own per-feature mean and
            spread, keeping the denoised within-batch structure (``layers["scae_imputed"]``).
        """
        rec = self._infer()["reconstruction"].astype(np.float32)
        if corrected and self.batches is None:
            msg = "`corrected=True` needs a model trained with `batch_key`"
            raise ValueError(msg)
        if corrected or self.batches is None or self.weights.lambda_b == 0:
            return rec
        return _restore_batch_moments(rec, self._X, self.batches.codes)

    @property
    def n_cells(self) -> int:
        """Number of cells the model was set up with."""
        return self._X.shape[0]


def _restore_batch_moments(rec: np.ndarray, X, codes: np.ndarray) -> np.ndarray:
    """Shift and scale each batch of ``rec`` to the per-feature mean/std that batch has in ``X``."""
    out = np.empty_like(rec)
    for b in np.unique(codes):
        rows = np.flatnonzero(codes == b)
        mean_in, std_in = data.feature_moments(X[rows])
        mean_out, std_out = data.feature_moments(rec[rows])
        out[rows] = (rec[rows] - mean_out) / std_out * std_in + mean_in
    return out
