"""Plots of scae outputs."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import scanpy as sc
from anndata import AnnData
from matplotlib.axes import Axes

from ._pl_genesets import gene_sets  # noqa: F401


def _require(adata: AnnData, key_added: str) -> None:
    if f"X_{key_added}" not in adata.obsm:
        msg = f"adata.obsm['X_{key_added}'] not found: run `scae.tl.fit(adata)` first"
        raise KeyError(msg)


def embedding(
    adata: AnnData,
    *,
    color: str | Sequence[str] | None = None,
    key_added: str = "scae",
    ax: Axes | None = None,
    show: bool | None = None,
    **kwargs,
):
    """Scatter plot of the scae embedding, coloured by cluster by default.

    Parameters
    ----------
    adata
        AnnData after :func:`scae.tl.fit`.
    color
        ``obs`` columns or var names to colour by; default ``f"{key_added}_cluster"``.
    key_added
        The ``key_added`` used in :func:`scae.tl.fit`.
    ax
        Axes to draw into (single ``color`` only).
    show
        Show the figure; ``None`` follows scanpy's settings.
    **kwargs
        Passed to :func:`scanpy.pl.embedding`.

    Returns
    -------
    The Axes (or list of Axes for several colours) when ``show`` is False.

    Examples
    --------
    >>> import scae
    >>> adata = scae.datasets.cytonorm()
    >>> scae.tl.fit(adata, max_epochs=2, progress=False)
    >>> ax = scae.pl.embedding(adata, show=False)
    """
    _require(adata, key_added)
    color = f"{key_added}_cluster" if color is None else color
    return sc.pl.embedding(adata, basis=f"X_{key_added}", color=color, ax=ax, show=show, **kwargs)


def loss_history(adata: AnnData, *, key_added: str = "scae", ax: Axes | None = None, show: bool | None = None) -> Axes:
    """Per-term training loss by epoch (log scale), from ``uns[key_added]["history"]``.

    Examples
    --------
    >>> import scae
    >>> adata = scae.datasets.cytonorm()
    >>> scae.tl.fit(adata, max_epochs=2, progress=False)
    >>> ax = scae.pl.loss_history(adata, show=False)
    """
    if key_added not in adata.uns or "history" not in adata.uns[key_added]:
        msg = f"adata.uns[{key_added!r}]['history'] not found: run `scae.tl.fit(adata)` first"
        raise KeyError(msg)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    for name, values in adata.uns[key_added]["history"].items():
        values = np.asarray(values, dtype=float)
        ax.plot(np.arange(1, values.size + 1), np.abs(values), label=name)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(frameon=False, fontsize=8)
    if show or (show is None and plt.isinteractive()):
        plt.show()
    return ax

