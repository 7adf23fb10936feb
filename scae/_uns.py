"""Values for ``adata.uns`` that every anndata release can write to .h5ad and .zarr.

anndata writes each key of a mapping in ``uns`` (and each column of a DataFrame there) as an HDF5/zarr
node name, where ``/`` separates groups: anndata 0.12 warned about such keys, anndata 0.13 refuses to
write them (``ValueError: Forward slashes are not allowed in keys``). scae puts user-given names into
keys in a few places (marker names as the columns of ``cluster_means``, feature-block names in
``blocks`` and ``history``, FCS keywords), so a marker called ``NK1/1`` would make a fitted AnnData
unwritable. :func:`writable` replaces ``/`` in such keys by ``∕`` (U+2215 DIVISION SLASH), which reads
the same in tables and plot labels; values (arrays, lists, index entries) keep their ``/``.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

#: Stands in for "/" in uns keys (looks the same on screen and in figures).
SLASH_STAND_IN = "\u2215"


def writable_key(key) -> str:
    """``key`` as a string without ``/`` (see the module docstring)."""
    return str(key).replace("/", SLASH_STAND_IN)


def writable(value):
    """Copy of ``value`` whose mapping keys and DataFrame column names contain no ``/``.

    Mappings are rebuilt as plain dicts (recursively); DataFrames get renamed columns (the index is
    written as data and keeps its names); everything else is returned as is.

    Examples
    --------
    >>> import pandas as pd
    >>> from scae.io import writable
    >>> writable({"NK1/1": [1, 2], "CD3": {"a/b": "x/y"}})  # keys get U+2215 DIVISION SLASH, values keep "/"
    {'NK1∕1': [1, 2], 'CD3': {'a∕b': 'x/y'}}
    >>> list(writable(pd.DataFrame({"CD4/CD8": [1.0]})).columns)
    ['CD4∕CD8']
    """
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            key = writable_key(k)
            if key in out:
                msg = f"two uns keys become {key!r} once '/' is replaced by {SLASH_STAND_IN!r}: rename one of them"
                raise ValueError(msg)
            out[key] = writable(v)
        return out
    if isinstance(value, pd.DataFrame):
        if any("/" in str(c) for c in value.columns):
            return value.rename(columns=writable_key)
        return value
    return value
