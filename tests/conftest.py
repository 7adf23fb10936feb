"""Shared fixtures: real data from the shared data directory, fitted once per session."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import anndata
import numpy as np
import pytest
import scanpy as sc
import torch

import scae


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``cuda`` where no CUDA device is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is false)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def two_gloo_processes(tmp_path):
    """Run ``script`` as ranks 0 and 1 of a gloo group; return what each saved (``torch.save`` to ``out.<rank>``).

    The script gets ``rank init_file out_prefix`` as its arguments.
    """

    def run(script: str) -> list:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        paths = [str(tmp_path / "init"), str(tmp_path / "out")]
        cmd = [sys.executable, "-c", script]
        procs = [subprocess.Popen([*cmd, str(r), *paths], env=env, stderr=subprocess.PIPE) for r in range(2)]
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err.decode()[-2000:]
        return [torch.load(tmp_path / f"out.{r}") for r in range(2)]

    return run


@pytest.fixture(scope="session")
def data_dir():
    try:
        return scae.datasets.shared_data_dir()
    except FileNotFoundError as e:  # pragma: no cover - CI and dev machines have ../shared/data
        pytest.fail(str(e))


@pytest.fixture(scope="session")
def flow(data_dir):
    """FlowSOM BAL flow data, 8 marker channels, 7 manual gates."""
    return scae.datasets.flowsom_bal(data_dir)


@pytest.fixture(scope="session")
def flow_fitted(flow):
    """One default CPU fit of the flow data (about a minute on 2 cores), shared by the contract/quality tests.

    Pinned to the CPU: the floors of test_fit.py were measured there (CUDA floors: test_cuda.py).
    """
    adata = flow.copy()
    scae.tl.fit(adata, random_state=0, progress=False, device="cpu")
    return adata


@pytest.fixture(scope="session")
def grown():
    """``grown(adata, n, seed=0)``: ``adata`` grown to ``n`` cells by resampling its cells with small Gaussian noise
    (0.05 per feature), with ``obs`` of the drawn cells: real data at scale."""

    def grow(adata, n: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, adata.n_obs, n)
        x = np.asarray(adata.X)[idx] + rng.normal(0, 0.05, (n, adata.n_vars)).astype(np.float32)
        obs = adata.obs.iloc[idx].reset_index(drop=True)
        obs.index = obs.index.astype(str)
        return anndata.AnnData(x.astype(np.float32), obs=obs, var=adata.var.copy())

    return grow


@pytest.fixture(scope="session")
def levine(data_dir):
    """Levine 2015 CyTOF, 3,000 cells × 23 markers, 3 PhenoGraph groups."""
    return scae.datasets.levine3k(data_dir)


@pytest.fixture(scope="session")
def pbmc68k():
    """Scanpy's bundled pbmc68k_reduced (700 cells x 765 genes: ``X`` scaled, ``.raw`` log-normalized)."""
    with warnings.catch_warnings():  # scanpy 1.11 ships this file in an old anndata layout (anndata 0.13 warns)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return sc.datasets.pbmc68k_reduced()


@pytest.fixture
def small(levine):
    """600 real CyTOF cells (a copy per test)."""
    rng = np.random.default_rng(0)
    return levine[np.sort(rng.choice(levine.n_obs, 600, replace=False))].copy()


def _layer_names(adata):
    """Names of the layers; anndata >= 0.13 also lists ``.X`` under the key ``None``."""
    return sorted(k for k in adata.layers.keys() if k is not None)


def _snapshot(adata):
    """Everything a failed call must leave unchanged."""
    X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.array(adata.X, copy=True)
    return {
        "X": X,
        "obs": adata.obs.copy(),
        "obsm": sorted(adata.obsm.keys()),
        "layers": _layer_names(adata),
        "uns": sorted(adata.uns.keys()),
    }


def _assert_unchanged(adata, snap):
    X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    np.testing.assert_array_equal(X, snap["X"])
    assert adata.obs.equals(snap["obs"])
    assert sorted(adata.obsm.keys()) == snap["obsm"]
    assert _layer_names(adata) == snap["layers"]
    assert sorted(adata.uns.keys()) == snap["uns"]


@pytest.fixture
def guard():
    """``check = guard(adata)`` records the AnnData; ``check()`` asserts nothing changed since."""

    def make(adata):
        snap = _snapshot(adata)
        return lambda: _assert_unchanged(adata, snap)

    return make
