"""The user-facing model: registers what it uses from AnnData, trains the network, returns outputs."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from . import _fast, _pipeline, _reproducible, _settings, _setup, _values, data, genesets
from ._docs import MODEL_PARAMS, doc_params
from ._save import load_model, save_model
from .cluster import DEFAULT_MERGE_THRESHOLD
from .nn.likelihoods import is_plain
from .objectives import Variants
from .train import LossWeights, infer_gene_sets

logger = logging.getLogger("scae")


@doc_params(model_params=MODEL_PARAMS)
class SAUCIE:
    """SAUCIE-style multi-head autoencoder on an AnnData.

    One network gives a 2-D embedding (visualization head), an MMD batch correction of that embedding
    (with ``batch_key``), clusters from ID-regularized binary codes of the last decoder layer, and a
    reconstruction that serves as imputed/denoised values.

    Parameters
    ----------
    {model_params}

    Examples
    --------
    >>> import scae
    >>> adata = scae.datasets.cytonorm()
    >>> model = scae.SAUCIE(adata, batch_key="batch").train(max_epochs=2, progress=False)  # default: until converged
    >>> adata.obsm["X_scae"] = model.get_embedding()
    """

    def __init__(
        self,
        adata: AnnData,
        *,
        layer: str | None = None,
        batch_key: str | None = None,
        reference_batch: str | None = None,
        hidden: Sequence[int] = (256, 128, 64),
        n_latent: int = 2,
        lambda_b: float = 0.1,
        lambda_c: float = 0.1,
        lambda_d: float = 0.2,
        learning_rate: float | None = None,
        batch_size: int | None = None,
        pairwise_cells: int | None = 256,
        random_state: int | None = 0,
        device: str | torch.device = "auto",
        batch_reconstruction: str = "moments",
        gene_sets: genesets.GeneSets | None = None,
        min_genes: int = 5,
        n_free_nodes: int = 0,
        gene_set_layer: str = "encoder",
        likelihood: str | Mapping[str, str] = "mse",
        block_key: str | None = None,
        block_weights: Mapping[str, float] | None = None,
        input_dropout: float = 0.0,
        input_noise: float = 0.0,
        l1_activity: float = 0.0,
        contractive: float = 0.0,
        variational: bool = False,
        lambda_kl: float = 0.01,
        precision: str = "32",
        compile: bool = False,
        deterministic: bool = False,
        block_rows: int | None = None,
    ) -> None:
        args = dict(locals())
        _settings.check_model(args)
        inputs = _setup.read_inputs(adata, args)
        self.adata, self.X, self.group, self.device = adata, inputs.X, inputs.group, inputs.device
        self.autocast_dtype = _fast.autocast_dtype(precision, self.device)
        self.compile, self.block_rows = bool(compile), block_rows
        self.deterministic = bool(deterministic)
        self.layer, self.batch_key, self.batches, self.blocks = layer, batch_key, inputs.batches, inputs.blocks
        self.var_names = list(map(str, adata.var_names))
        self.shard = (0, self.X.shape[0]) if self.group is None else self.group.shard(self.X.shape[0])
        self.random_state = _reproducible.resolve_seed(random_state, self.group)
        self.batch_size = int(inputs.batch_size)
        effective = min(self.batch_size, self.X.shape[0])  # a minibatch larger than the data is all of it
        lr = _fast.default_learning_rate(effective) if learning_rate is None else learning_rate
        self.learning_rate = float(lr)
        self.weights = LossWeights(
            lambda_b=lambda_b if self.batches is not None else 0.0,
            lambda_c=lambda_c,
            lambda_d=lambda_d,
            nonref_loss=batch_reconstruction,
            pairwise_cells=None if pairwise_cells is None else int(pairwise_cells),
        )
        self.variants = Variants(**{k: float(args[k]) for k in _setup.VARIANT_ARGS})
        self.gene_set_mask = inputs.set_mask  # genes × sets DataFrame (the net holds it as a buffer) or None
        self.hparams = _setup.hparams(args, self)
        self.net = _setup.build_net(self, inputs, args)
        self._source: data.RowSource | None = None
        self._outputs: dict[str, dict[str, np.ndarray]] = {}
        self.history: dict[str, list[float]] = {}
        self.is_trained = False
        self.runtime: dict[str, float] = {}
        self.mapping_state = None  # cluster table etc. for new cells (scae._mapping), set at save/load/transform

    def __repr__(self) -> str:
        return _setup.describe(self)

    # ------------------------------------------------------------------ data
    @property
    def n_cells(self) -> int:
        """Number of cells the model was set up with (all ranks together under torchrun)."""
        return self.X.shape[0]

    @property
    def n_features(self) -> int:
        """Number of features (``var_names``) of the model."""
        return len(self.var_names)

    @property
    def plain(self) -> bool:
        """Whether every feature has the ``mse`` likelihood (continuous input, the original SAUCIE loss)."""
        return is_plain(self.blocks)

    def row_source(self):
        """The rows the model trains on and infers from (this rank's shard under torchrun), on the device.

        A :class:`scae.data.RowSource` for in-memory matrices, :class:`scae._backed.BackedRowSource` for backed
        ones; made on first use and kept.
        """
        if self.X is None:
            msg = (
                "this model was loaded without data: use `scae.tl.transform(model, adata)` or "
                "`SAUCIE.load(path, adata)`"
            )
            raise RuntimeError(msg)
        if self._source is None:
            start, stop = self.shard
            self._source = data.make_row_source(self.X, self.device, block_rows=self.block_rows, start=start, stop=stop)
        return self._source

    # ------------------------------------------------------------------ training
    def train(
        self, max_epochs: int | None = None, *, progress: bool = True, early_stopping: bool | None = None
    ) -> SAUCIE:
        """Train the network.

        Parameters
        ----------
        max_epochs
            Passes over the data. Default: the budget of :func:`scae._stopping.step_budget` (8 passes, 150 to
            6,000 optimizer steps), ended earlier when the loss has converged (:mod:`scae._stopping`). Given,
            exactly this many passes (unless ``early_stopping=True``, which makes it an upper bound).
        progress
            Show a tqdm progress bar.
        early_stopping
            Stop when the loss has converged. Default: on when ``max_epochs`` is not given. ``False`` without
            ``max_epochs`` trains the whole budget.

        Returns
        -------
        The model itself (``history`` holds the per-epoch mean of every loss term; ``runtime`` the steps,
        epochs and ``stop_reason``: ``"converged"``, ``"max_steps"`` or ``"max_epochs"``).

        Examples
        --------
        >>> import scae
        >>> model = scae.SAUCIE(scae.datasets.cytonorm(), batch_key="batch")
        >>> model.train(max_epochs=2, progress=False).runtime["stop_reason"]
        'max_epochs'
        >>> sorted(model.history)[:3]  # per-epoch means of every loss term
        ['id_regularization', 'mmd', 'reconstruction']
        """
        _settings.check_train(max_epochs, early_stopping)
        if not self.is_trained:  # (a loaded model being fine-tuned keeps the genes it was trained on)
            _values.warn_if_highly_variable_unused(self.adata)
            _values.warn_if_acquisition_channels(self.adata)
        self.runtime = _pipeline.train_model(self, max_epochs, progress=progress, early_stopping=early_stopping)
        self.is_trained = True
        self._outputs = {}
        rt = self.runtime
        logger.info(
            "trained %d steps (%d epochs, %s) in %.1fs (%.0f cells/s)",
            rt["steps"], rt["epochs"], rt["stop_reason"], rt["train_s"], rt["train_cells_per_s"],
        )  # fmt: skip
        return self

    # ------------------------------------------------------------------ outputs
    def _check_trained(self) -> None:
        if not self.is_trained:
            msg = "the model is not trained yet: call `model.train()` first"
            raise RuntimeError(msg)

    def outputs(self, counts: str = "counts") -> dict[str, np.ndarray]:
        """``embedding``, ``codes`` and ``reconstruction`` of every cell (float32), computed once and kept.

        The arrays themselves, not copies (``tl.fit`` moves them into the AnnData); ``get_*`` return copies.
        With ``counts`` other than ``"counts"`` only the reconstruction (count blocks in those units) is kept.
        """
        self._check_trained()
        self.row_source()  # a clear error for a model loaded without data
        if counts not in self._outputs:
            t0 = time.perf_counter()
            out = _pipeline.infer_arrays(self, counts=counts)
            if counts != "counts":  # other count units: only the reconstruction differs, keep just that
                out = {"reconstruction": out["reconstruction"]}
            self._outputs[counts] = out
            self.runtime["infer_s"] = time.perf_counter() - t0
        return self._outputs[counts]

    def get_embedding(self) -> np.ndarray:
        """2-D embedding (``n_cells × n_latent``, float32); batch-corrected when ``batch_key`` was given.

        Examples
        --------
        >>> import scae
        >>> scae.SAUCIE(scae.datasets.cytonorm()).train(max_epochs=2, progress=False).get_embedding().shape
        (6000, 2)
        """
        return self.outputs()["embedding"].copy()

    def get_codes(self) -> np.ndarray:
        """Clustering-layer activations before binarization (``n_cells × n_units``, float32).

        Examples
        --------
        >>> import scae
        >>> adata = scae.datasets.cytonorm()
        >>> model = scae.SAUCIE(adata, batch_key="batch").train(max_epochs=2, progress=False)
        >>> codes = model.get_codes()
        >>> codes.shape == (adata.n_obs, model.hparams["hidden"][0]), bool((codes >= 0).all())
        (True, True)
        """
        return self.outputs()["codes"].copy()

    def get_clusters(
        self,
        *,
        threshold: float = 0.1,
        min_cluster_size: int | None = None,
        merge_threshold: float | None = DEFAULT_MERGE_THRESHOLD,
        n_clusters: int | None = None,
    ) -> np.ndarray:
        """Cluster label per cell (0 = largest cluster) from binarized codes after merging.

        Parameters
        ----------
        threshold
            A unit fires when its activation exceeds this fraction of its maximum.
        min_cluster_size
            Codes with fewer cells join the nearest cluster; default
            :func:`scae.cluster.default_min_cluster_size` (20 cells between 2,000 and 20,000 cells).
        merge_threshold
            Groups of code clusters whose mean input values lie closer than this (Euclidean, in units of the
            root mean square of the features' standard deviations) are merged, closest first; larger → fewer
            clusters; ``None``/0 disables merging.
        n_clusters
            Merge the code clusters the same way until exactly this many clusters remain instead of using
            ``merge_threshold`` (groups with < 1% of the cells do not count; see :func:`scae.cluster.merge_clusters`).

        Examples
        --------
        >>> import numpy as np
        >>> import scae
        >>> adata = scae.datasets.cytonorm()
        >>> model = scae.SAUCIE(adata, batch_key="batch").train(max_epochs=2, progress=False)
        >>> sizes = np.bincount(model.get_clusters())
        >>> bool((np.diff(sizes) <= 0).all())  # label 0 is the largest cluster, then by size
        True
        """
        _settings.check_table(_settings.CLUSTER_OPTIONS, locals())
        out = self.outputs()
        return _pipeline.cut_labels(
            self, out["codes"], out["reconstruction"], threshold=threshold, min_cluster_size=min_cluster_size,
            merge_threshold=merge_threshold, n_clusters=n_clusters,
        )  # fmt: skip

    def get_reconstruction(self, *, corrected: bool = False, counts: str = "counts") -> np.ndarray:
        """Reconstruction = imputed/denoised values, in input units.

        ``mse`` blocks are in the input's units; ``bernoulli`` blocks are probabilities of 1; ``nb``/``zinb``
        blocks are given by ``counts``.

        Parameters
        ----------
        corrected
            With batch correction, ``True`` returns every batch in the reference batch's units
            (``layers["scae_corrected"]``); ``False`` puts each batch back to its own per-feature mean and
            spread, keeping the denoised within-batch structure (``layers["scae_imputed"]``; all-``mse``
            models only: count models keep their per-cell library offset instead).
        counts
            Units of count blocks: ``"counts"`` (expected counts, the NB mean at the cell's observed library
            size; for ZINB the mean without dropouts), ``"normalized"`` (expected counts per 10,000) or
            ``"log1p"`` (``log1p`` of the normalized value).

        Examples
        --------
        >>> import scae
        >>> adata = scae.datasets.cytonorm()
        >>> model = scae.SAUCIE(adata, batch_key="batch").train(max_epochs=2, progress=False)
        >>> model.get_reconstruction().shape == adata.shape  # each batch in its own units
        True
        >>> model.get_reconstruction(corrected=True).shape == adata.shape  # all in the reference batch's
        True
        """
        rec = self.reconstruction_array(corrected=corrected, counts=counts)
        return rec.copy() if rec is self.outputs(counts)["reconstruction"] else rec

    def reconstruction_array(self, *, corrected: bool = False, counts: str = "counts") -> np.ndarray:
        """:meth:`get_reconstruction`, possibly the kept array itself (no copy: ``tl.fit`` moves it into AnnData)."""
        rec = self.outputs(counts)["reconstruction"]
        if corrected and self.batches is None:
            msg = "`corrected=True` needs a model trained with `batch_key`"
            raise ValueError(msg)
        if corrected or self.batches is None or self.weights.lambda_b == 0 or not self.plain:
            return rec
        return data.restore_batch_moments(rec, self.X, self.batches.codes)

    # ------------------------------------------------------------------ save / load
    def save(self, path, *, overwrite: bool = True):
        """Save to the folder ``path``: ``model.json`` + safetensors (see :mod:`scae._save`); returns the path.

        Examples
        --------
        >>> model.save("run1/")  # doctest: +SKIP
        """
        return save_model(self, path, overwrite=overwrite)

    @classmethod
    def load(
        cls, path, adata: AnnData | None = None, *, device: str | torch.device = "auto", deterministic: bool = False
    ) -> SAUCIE:
        """Load a model saved with :meth:`save`, optionally registered on new data ``adata``.

        The weights are read from safetensors (or a state dict with ``torch.load(weights_only=True)``); no
        pickled object is ever run. ``adata``'s features are matched to the saved var names: reordered when
        they are a permutation, a ``ValueError`` names the missing ones. ``deterministic``: as in the constructor.

        Examples
        --------
        >>> new = scae.SAUCIE.load("run1/", adata=other)  # doctest: +SKIP
        >>> other.obsm["X_scae"] = new.get_embedding()  # doctest: +SKIP
        """
        return load_model(cls, path, adata, device=device, deterministic=deterministic)

    @property
    def gene_set_names(self) -> list[str]:
        """Names of the gene sets kept in the gene-set layer (empty without ``gene_sets``)."""
        return [] if self.gene_set_mask is None else list(self.gene_set_mask.columns)

    def _check_gene_sets(self) -> None:
        if self.gene_set_mask is None:
            msg = "the model has no gene-set layer: create it with `gene_sets=` (e.g. scae.datasets.hallmark_gmt())"
            raise ValueError(msg)

    def get_gene_set_activities(self) -> np.ndarray:
        """Gene-set node activities (``n_cells × n_sets``, float32), oriented so positive means the set is up.

        The orientation of each set is the sign of the mean weight between its node and its genes.

        Examples
        --------
        >>> import scae, warnings
        >>> adata = scae.datasets.tcga_coread()  # 121 tumours × 500 genes
        >>> with warnings.catch_warnings(action="ignore"):  # warns of the 14 sets with < min_genes=5 of the genes
        ...     model = scae.SAUCIE(adata, gene_sets=scae.datasets.hallmark_gmt()).train(max_epochs=2, progress=False)
        >>> model.get_gene_set_activities().shape  # the 36 hallmark sets with >= 5 of the 500 genes
        (121, 36)
        """
        self._check_trained()
        self._check_gene_sets()
        return infer_gene_sets(self.net, self.row_source()).numpy().astype(np.float32)

    def get_gene_set_weights(self) -> pd.DataFrame:
        """Oriented weights between set nodes and genes (genes × sets; exactly 0 outside each set).

        ``model.get_gene_set_weights()[name].sort_values()`` lists a set's genes by weight.

        Examples
        --------
        >>> import scae
        >>> adata = scae.datasets.tcga_coread()  # 121 tumours × 500 genes
        >>> sets = {"set_a": list(adata.var_names[:20]), "set_b": list(adata.var_names[20:50])}
        >>> model = scae.SAUCIE(adata, gene_sets=sets).train(max_epochs=2, progress=False)
        >>> w = model.get_gene_set_weights()
        >>> w.shape, int((w["set_b"] != 0).sum())  # nonzero only for the set's 30 genes
        ((500, 2), 30)
        """
        self._check_gene_sets()
        with torch.no_grad():
            w = self.net.gene_set_weights().cpu().numpy()
        return pd.DataFrame(w, index=self.var_names, columns=self.gene_set_names)
