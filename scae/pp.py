"""Preprocessing for scae inputs."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from . import _values, data
from ._checks import real as _real


def arcsinh(
    adata: AnnData,
    *,
    cofactor: float = 5.0,
    layer: str | None = None,
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Arcsinh transform ``arcsinh(x / cofactor)`` for cytometry (5 for CyTOF, ~150 for flow).

    Parameters
    ----------
    adata
        Cells × channels with raw (compensated) intensities.
    cofactor
        Divisor before the arcsinh.
    layer
        Read from this layer instead of ``adata.X``.
    key_added
        Write the result to ``adata.layers[key_added]`` instead of replacing the source.
    copy
        Return a new AnnData instead of writing into ``adata``.

    Returns
    -------
    ``None`` or a new AnnData (``copy=True``); the transformed values replace ``X`` (or ``layer``), or go
    to ``layers[key_added]``. ``uns["scae_arcsinh"]`` records the cofactor so it is not applied twice.

    Examples
    --------
    >>> import numpy as np, anndata as ad, scae
    >>> a = ad.AnnData(np.array([[0.0, 5.0]], dtype=np.float32))
    >>> scae.pp.arcsinh(a)
    >>> round(float(a.X[0, 1]), 4)
    0.8814
    """
    _real(0, lo_open=True)("cofactor", cofactor)
    X = data.get_matrix(adata, layer)
    _values.validate_matrix(X, where="adata.X" if layer is None else f"adata.layers[{layer!r}]", float32=False)
    target = key_added or layer or "X"
    done = adata.uns.get("scae_arcsinh", {})
    if target in done:
        msg = f"{target!r} was already arcsinh-transformed (cofactor {done[target]}); transforming twice distorts it"
        raise ValueError(msg)
    # float64 input is divided in float64 (values beyond float32 still give finite arcsinh), the rest in float32
    wide = np.issubdtype(X.dtype, np.floating) and X.dtype.itemsize > 4
    if sp.issparse(X):
        Y = X.copy()
        Y.data = np.arcsinh(np.asarray(Y.data, dtype=np.float64 if wide else np.float32) / cofactor).astype(np.float32)
    else:
        Y = np.arcsinh(np.asarray(X, dtype=np.float64 if wide else np.float32) / cofactor).astype(np.float32)
    adata = adata.copy() if copy else adata
    if target == "X":
        adata.X = Y
    else:
        adata.layers[target] = Y
    adata.uns["scae_arcsinh"] = {**done, target: float(cofactor)}
    return adata if copy else None


from .io import read_fcs  # noqa: E402  (re-exported: scae.pp.read_fcs)

__all__ = ["arcsinh", "read_fcs"]
