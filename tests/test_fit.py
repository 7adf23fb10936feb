"""scae.tl.fit on real data: the AnnData contract, quality floors, determinism, loss curves."""

import logging
import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import scae
from scae._torch_state import default_dtype
from scae.metrics import cluster_scores, knn_accuracy

# Floors sit below the worst of nine default fits on flowsom_bal_flow (CPU; seeds 0-2 under 1 and 2 torch threads
# and with float32 feature moments, 2026-11-26; see test_cluster_stability.py): automatic count 6-8 clusters,
# F1 0.819-0.957, ARI 0.971-0.991; n_clusters=7: F1 0.931-0.968, ARI >= 0.971. Earlier kNN accuracy
# 0.996/0.996/0.995.
F1_FLOOR = 0.78
ARI_FLOOR = 0.95
K7_F1_FLOOR = 0.90
KNN_FLOOR = 0.98

CONTRACT_OBSM = ["X_scae", "X_scae_codes"]


def test_fit_writes_contract(flow_fitted, flow):
    a = flow_fitted
    assert a.obsm["X_scae"].shape == (a.n_obs, 2) and a.obsm["X_scae"].dtype == np.float32
    assert a.obsm["X_scae_codes"].shape == (a.n_obs, 256) and a.obsm["X_scae_codes"].dtype == np.float32
    assert isinstance(a.obs["scae_cluster"].dtype, pd.CategoricalDtype)
    assert a.layers["scae_imputed"].shape == a.shape
    assert "scae_corrected" not in a.layers  # no batch_key
    info = a.uns["scae"]
    assert {"params", "history", "versions", "seed", "device", "runtime"} <= set(info)
    assert info["params"]["random_state"] == 0 and info["params"]["key_added"] == "scae"
    assert info["device"] == "cpu" and info["seed"] == 0
    assert {"torch", "anndata", "scanpy", "scae"} <= set(info["versions"])
    assert info["runtime"]["train_cells_per_s"] > 0
    assert set(info["history"]) == {"reconstruction", "id_regularization", "within_cluster", "total"}
    # input untouched apart from the added keys
    np.testing.assert_array_equal(a.X, flow.X)


def test_h5ad_round_trip_keeps_every_key(flow_fitted, tmp_path):
    path = tmp_path / "fit.h5ad"
    flow_fitted.write_h5ad(path)
    b = ad.read_h5ad(path)
    for key in CONTRACT_OBSM:
        np.testing.assert_array_equal(b.obsm[key], flow_fitted.obsm[key])
    assert b.obs["scae_cluster"].equals(flow_fitted.obs["scae_cluster"])
    np.testing.assert_array_equal(b.layers["scae_imputed"], flow_fitted.layers["scae_imputed"])
    hist = b.uns["scae"]["history"]
    for k, v in flow_fitted.uns["scae"]["history"].items():
        np.testing.assert_allclose(hist[k], v)
    assert b.uns["scae"]["params"]["lambda_c"] == flow_fitted.uns["scae"]["params"]["lambda_c"]
    assert b.uns["scae"]["versions"]["torch"] == flow_fitted.uns["scae"]["versions"]["torch"]


def test_clusters_match_manual_gates(flow_fitted):
    labels = flow_fitted.obs["cell_type"].astype(str).to_numpy()
    keep = labels != "Unlabeled"
    s = cluster_scores(labels[keep], flow_fitted.obs["scae_cluster"].to_numpy()[keep])
    assert s["f1"] > F1_FLOOR, s
    assert s["ari"] > ARI_FLOOR, s
    k7 = scae.tl.cluster(flow_fitted, n_clusters=7, copy=True)
    s7 = cluster_scores(labels[keep], k7.obs["scae_cluster"].to_numpy()[keep])
    assert s7["n_clusters"] == 7 and s7["f1"] > K7_F1_FLOOR, s7


def test_embedding_keeps_gates_apart(flow_fitted):
    labels = flow_fitted.obs["cell_type"].astype(str).to_numpy()
    keep = labels != "Unlabeled"
    assert knn_accuracy(flow_fitted.obsm["X_scae"][keep], labels[keep]) > KNN_FLOOR


def test_each_loss_term_decreases(flow_fitted):
    for name, values in flow_fitted.uns["scae"]["history"].items():
        values = np.asarray(values)
        assert values.size == flow_fitted.uns["scae"]["runtime"]["epochs"] >= 6  # first and last 3 apart
        assert values[-3:].mean() < values[:3].mean(), (name, values[:3], values[-3:])


def test_same_seed_gives_identical_outputs(small):
    a, b, c = small.copy(), small.copy(), small.copy()
    for x, seed in ((a, 3), (b, 3), (c, 4)):  # bit-identical reruns are a CPU promise (CUDA: test_cuda.py)
        scae.tl.fit(x, max_epochs=4, random_state=seed, progress=False, device="cpu")
    np.testing.assert_array_equal(a.obsm["X_scae"], b.obsm["X_scae"])
    np.testing.assert_array_equal(a.obs["scae_cluster"], b.obs["scae_cluster"])
    assert not np.array_equal(a.obsm["X_scae"], c.obsm["X_scae"])


#: global torch states a notebook can leave behind (scae._torch_state); "meta" stands in for another default device
#: (a GPU session's "cuda" with device="cpu"): each failed inside torch, or (autocast) computed other numbers
CALLER_STATES = {
    "no_grad": torch.no_grad,
    "inference_mode": torch.inference_mode,
    "float64_default": lambda: default_dtype(torch.float64),
    "default_device": lambda: torch.device("meta"),  # as torch.set_default_device("meta") in the block
    "autocast_bf16": lambda: torch.autocast("cpu", dtype=torch.bfloat16),
}


@pytest.mark.parametrize("state", list(CALLER_STATES))
def test_fit_ignores_the_callers_torch_state(small, state):
    # the batch-stratified sampler too (its draws followed the default dtype)
    small.obs["batch"] = np.where(np.arange(small.n_obs) % 3 == 0, "a", "b")
    kw = {"batch_key": "batch", "max_epochs": 3, "random_state": 0, "progress": False, "device": "cpu"}
    plain, inside = small.copy(), small.copy()
    scae.tl.fit(plain, **kw)
    before = (torch.get_default_dtype(), torch.is_grad_enabled())
    with CALLER_STATES[state]():
        inner = (torch.get_default_dtype(), torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        scae.tl.fit(inside, **kw)
        assert (torch.get_default_dtype(), torch.is_grad_enabled(), torch.is_inference_mode_enabled()) == inner
    assert (torch.get_default_dtype(), torch.is_grad_enabled()) == before
    assert inside.obsm["X_scae"].dtype == np.float32
    np.testing.assert_array_equal(plain.obsm["X_scae"], inside.obsm["X_scae"])
    np.testing.assert_array_equal(plain.layers["scae_imputed"], inside.layers["scae_imputed"])
    np.testing.assert_array_equal(plain.obs["scae_cluster"], inside.obs["scae_cluster"])


def test_random_state_none_draws_a_recorded_seed(small, caplog):
    a = small.copy()
    with caplog.at_level(logging.INFO, logger="scae"):
        scae.tl.fit(a, max_epochs=2, random_state=None, progress=False, device="cpu")
    seed = a.uns["scae"]["params"]["random_state"]
    assert isinstance(seed, int) and 0 <= seed < 2**32 and a.uns["scae"]["seed"] == seed
    assert f"pass random_state={seed} to repeat" in caplog.text
    b = small.copy()
    scae.tl.fit(b, max_epochs=2, random_state=seed, progress=False, device="cpu")
    np.testing.assert_array_equal(a.obsm["X_scae"], b.obsm["X_scae"])  # the recorded seed repeats the fit
    models = [scae.SAUCIE(small, hidden=(16, 8), random_state=None, device="cpu") for _ in range(2)]
    assert models[0].random_state != models[1].random_state  # (equal with probability 2**-32)
    model = models[0].train(max_epochs=1, progress=False)
    new = small[:50].copy()
    scae.tl.transform(model, new, fine_tune_epochs=1, random_state=None, progress=False)
    assert isinstance(new.uns["scae"]["params"]["random_state"], int)


def test_deterministic_fit_repeats_the_cpu_fit_and_restores_torch(small, monkeypatch):
    ref = small.copy()
    scae.tl.fit(ref, max_epochs=4, random_state=3, progress=False, device="cpu")
    seen, train_net = [], scae._pipeline.train_net

    def spy(*args, **kwargs):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return train_net(*args, **kwargs)

    monkeypatch.setattr(scae._pipeline, "train_net", spy)
    x = small.copy()
    scae.tl.fit(x, max_epochs=4, random_state=3, progress=False, device="cpu", deterministic=True)
    assert seen == [True] and not torch.are_deterministic_algorithms_enabled()
    assert x.uns["scae"]["params"]["deterministic"] is True
    # CPU fits are bit-reproducible anyway: the deterministic kernels give the very same fit
    np.testing.assert_array_equal(x.obsm["X_scae"], ref.obsm["X_scae"])
    np.testing.assert_array_equal(x.layers["scae_imputed"], ref.layers["scae_imputed"])
    np.testing.assert_array_equal(x.obs["scae_cluster"], ref.obs["scae_cluster"])
    model = scae.SAUCIE(small, hidden=(16, 8), device="cpu", deterministic=True)
    monkeypatch.setattr(scae._transform, "train_net", spy)
    scae.tl.transform(model.train(max_epochs=1, progress=False), small[:50].copy(), fine_tune_epochs=1, progress=False)
    assert seen == [True, True, True]  # the model's training and the transform's fine-tuning

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(scae._pipeline, "train_net", interrupted)
    torch.use_deterministic_algorithms(True, warn_only=True)  # the user's own setting survives a fit
    try:
        with pytest.raises(KeyboardInterrupt):
            scae.tl.fit(small.copy(), max_epochs=4, progress=False, device="cpu", deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_dense_and_sparse_input_agree(small, fmt):
    ref = small.copy()
    scae.tl.fit(ref, max_epochs=2, random_state=0, progress=False, device="cpu")
    x = small.copy()
    if fmt == "csr":
        x.X = sp.csr_matrix(x.X)
    out = scae.tl.fit(x, max_epochs=2, random_state=0, progress=False, copy=True, key_added="run", device="cpu")
    assert "X_run" not in x.obsm  # copy=True leaves the input alone
    np.testing.assert_allclose(out.obsm["X_run"], ref.obsm["X_scae"], rtol=1e-4, atol=1e-4)
    assert out.uns["run"]["input_sparse"] == (fmt == "csr")


def test_model_api_and_untrained_error(small):
    model = scae.SAUCIE(small, hidden=(64, 32, 16))
    head = "SAUCIE(600 cells × 23 features, hidden=(64, 32, 16), n_latent=2, likelihood='mse', device=cpu; "
    assert repr(model) == head + "not trained)"
    with pytest.raises(RuntimeError, match="not trained"):
        model.get_embedding()
    model.train(max_epochs=2, progress=False)
    assert repr(model) == head + "trained 4 steps (2 epochs, max_epochs))"  # 600 cells: 2 minibatches of 512
    assert model.get_embedding().shape == (small.n_obs, 2)
    assert model.get_codes().shape == (small.n_obs, 64)
    assert model.get_clusters(n_clusters=3).max() + 1 == 3
    assert model.get_reconstruction().shape == small.shape
    with pytest.raises(ValueError, match="batch_key"):
        model.get_reconstruction(corrected=True)


def test_progress_bar_redraws_at_most_every_tenth_of_a_second(small, capfd):
    """The bar shows the epoch's loss without a redraw per epoch: 200 epochs of one step each (600 cells, one
    minibatch) redraw a few times a second, not 200+ times (a pipeline's log got one line per epoch)."""
    model = scae.SAUCIE(small, hidden=(64, 32, 16), batch_size=1024)
    start = time.perf_counter()
    model.train(max_epochs=200, progress=True)
    seconds = time.perf_counter() - start
    redraws = capfd.readouterr().err.count("\r")
    assert 1 <= redraws <= 12 + 10 * seconds, (redraws, seconds)
