"""Model folders: readable JSON + safetensors, safe loading, var-name matching, mapping new cells."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import scae

FIT = {"hidden": (64, 32, 16), "max_epochs": 8, "merge_threshold": None, "progress": False, "random_state": 0}


@pytest.fixture(scope="module")
def cyto():
    """1,500 real CyTOF cells: batches 1 and 2 for training, batch 3 held back as new data."""
    a = scae.datasets.cytonorm()
    a = a[np.sort(np.random.default_rng(0).choice(a.n_obs, 1500, replace=False))].copy()
    return a[a.obs["batch"] != "3"].copy(), a[a.obs["batch"] == "3"].copy()


@pytest.fixture(scope="module")
def fitted(cyto, tmp_path_factory):
    ref = cyto[0].copy()
    path = tmp_path_factory.mktemp("model") / "run1"
    # 20 passes (40 steps): enough for several codes to fire (after 8 passes, 1-5 code clusters over seeds 0-5)
    scae.tl.fit(ref, batch_key="batch", save_model=path, **{**FIT, "max_epochs": 20})
    return ref, path


def test_model_folder_contents(fitted):
    ref, path = fitted
    assert sorted(os.listdir(path)) == ["model.json", "state.safetensors", "weights.safetensors"]
    meta = json.loads((path / "model.json").read_text())
    assert meta["format"] == "scae-model" and meta["var_names"] == list(ref.var_names)
    assert meta["hparams"]["hidden"] == [64, 32, 16] and meta["hparams"]["lambda_c"] == 0.1
    assert meta["batch_key"] == "batch" and meta["batch_categories"] == ["1", "2"]
    assert meta["reference_batch"] in ("1", "2") and meta["loss_weights"]["lambda_b"] == 0.1
    assert meta["clusters"]["n_clusters"] == ref.obs["scae_cluster"].cat.categories.size
    weights = load_file(path / "weights.safetensors")
    assert {"feature_mean", "feature_std"} <= set(weights)
    np.testing.assert_allclose(weights["feature_mean"].numpy().ravel(), ref.X.mean(0), rtol=1e-4, atol=1e-4)


def test_transform_of_training_cells_reproduces_fit(fitted):
    ref, path = fitted
    model = scae.SAUCIE.load(path)
    again = ref.copy()
    scae.tl.transform(model, again)
    np.testing.assert_array_equal(again.obsm["X_scae"], ref.obsm["X_scae"])
    np.testing.assert_array_equal(again.obsm["X_scae_codes"], ref.obsm["X_scae_codes"])
    assert ref.obs["scae_cluster"].cat.categories.size > 3
    assert (again.obs["scae_cluster"] == ref.obs["scae_cluster"]).all()  # by code and by nearest code centroid
    assert again.uns["scae"]["n_by_code"] < ref.n_obs  # some cells of rare codes went the centroid way
    np.testing.assert_allclose(again.layers["scae_imputed"], ref.layers["scae_imputed"], atol=1e-5)
    np.testing.assert_allclose(again.layers["scae_corrected"], ref.layers["scae_corrected"], atol=1e-5)
    assert "model" not in again.uns["scae"]["params"]
    # the folder itself (str or Path) gives the same, and its path is recorded
    for where in (path, str(path)):
        by_path = scae.tl.transform(where, ref, copy=True)
        np.testing.assert_array_equal(by_path.obsm["X_scae"], again.obsm["X_scae"])
        assert (by_path.obs["scae_cluster"] == again.obs["scae_cluster"]).all()
        assert by_path.uns["scae"]["params"]["model"] == os.path.abspath(path)


def test_transform_by_path_errors(fitted, tmp_path, guard):
    ref, path = fitted
    check = guard(ref)
    with pytest.raises(FileNotFoundError, match="missing"):
        scae.tl.transform(tmp_path / "missing", ref)
    with pytest.raises(TypeError, match="expected a scae.SAUCIE for `model`, got int"):
        scae.tl.transform(3, ref)
    check()  # the AnnData is untouched on error
    with pytest.raises(TypeError, match="AnnData"):  # the AnnData is checked before the model is read
        scae.tl.transform(tmp_path / "missing", ref.X)


def test_var_name_permutation_and_missing_features(fitted, cyto, guard):
    ref, path = fitted
    new = cyto[1]
    perm = np.random.default_rng(1).permutation(new.n_vars)
    shuffled = new[:, perm].copy()
    model = scae.SAUCIE.load(path, adata=ref[:, perm].copy(), deterministic=True)
    assert model.deterministic
    np.testing.assert_array_equal(model.get_embedding(), ref.obsm["X_scae"])
    a, b = new.copy(), shuffled.copy()
    scae.tl.transform(model, a)
    scae.tl.transform(model, b)
    np.testing.assert_array_equal(a.obsm["X_scae"], b.obsm["X_scae"])
    assert (a.obs["scae_cluster"] == b.obs["scae_cluster"]).all()
    np.testing.assert_array_equal(a.layers["scae_imputed"], b.layers["scae_imputed"][:, np.argsort(perm)])
    partial = new[:, 3:].copy()
    check = guard(partial)
    with pytest.raises(ValueError, match=r"3 of the model's 37 features are missing .*" + new.var_names[0]):
        scae.tl.transform(model, partial)
    with pytest.raises(ValueError, match="missing from adata.var_names"):
        scae.SAUCIE.load(path, adata=partial)
    check()


def test_loaded_without_data(fitted):
    model = scae.SAUCIE.load(fitted[1])
    with pytest.raises(RuntimeError, match="loaded without data"):
        model.get_embedding()
    text = repr(model)
    assert text.startswith(f"SAUCIE({model.n_features} features, no data, hidden=") and text.endswith("; trained)")


class _Payload:
    """Unpickling this object runs code (writes a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_weights_with_pickled_code_are_refused(fitted, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(fitted[1], bad)
    marker = tmp_path / "code_ran"
    (bad / "weights.safetensors").unlink()
    torch.save({"encoder.0.0.weight": _Payload(marker)}, bad / "weights.pt")
    with pytest.raises(ValueError, match="weights_only=True refused"):
        scae.SAUCIE.load(bad)
    assert not marker.exists()
    # the same bytes under the safetensors name: not a safetensors header, refused without unpickling
    shutil.copy(bad / "weights.pt", tmp_path / "payload.pt")
    shutil.move(bad / "weights.pt", bad / "weights.safetensors")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        scae.SAUCIE.load(bad)
    assert not marker.exists()
    # the payload is real: an unsafe load would have run it
    torch.load(tmp_path / "payload.pt", weights_only=False)
    assert marker.read_text() == "ran"


def test_state_dict_in_torch_format_loads(fitted, tmp_path):
    d = tmp_path / "pt"
    shutil.copytree(fitted[1], d)
    torch.save(load_file(d / "weights.safetensors"), d / "weights.pt")
    (d / "weights.safetensors").unlink()
    a = fitted[0].copy()
    scae.tl.transform(scae.SAUCIE.load(d), a)
    np.testing.assert_array_equal(a.obsm["X_scae"], fitted[0].obsm["X_scae"])


def test_hparams_stored_generically(fitted, tmp_path):
    model = scae.SAUCIE.load(fitted[1])
    model.hparams["future_option"] = {"name": "nb", "sizes": (1, 2)}
    model.save(tmp_path / "m2")
    again = scae.SAUCIE.load(tmp_path / "m2")
    assert again.hparams["future_option"] == {"name": "nb", "sizes": [1, 2]}
    model.hparams["future_option"] = torch.ones(3)
    with pytest.raises(TypeError, match="belongs in the network's state dict"):
        model.save(tmp_path / "m3")
    assert not (tmp_path / "m3").exists()


def test_save_refuses_foreign_folder_and_replaces_model(fitted, tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    model = scae.SAUCIE.load(fitted[1])
    with pytest.raises(FileExistsError, match="not a scae model folder"):
        model.save(other)
    assert (other / "todo.txt").read_text() == "keep me"
    model.save(tmp_path / "m")
    model.save(tmp_path / "m")  # replacing a model folder is fine
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(tmp_path / "m", overwrite=False)
    with pytest.raises(FileNotFoundError, match="not a scae model folder"):
        scae.SAUCIE.load(other)
    (tmp_path / "out.h5ad").write_bytes(b"")  # an h5ad passed where the model folder goes
    with pytest.raises(NotADirectoryError, match=r"out.h5ad is a file, not a scae model folder .*model.save\(folder\)"):
        scae.SAUCIE.load(tmp_path / "out.h5ad")


def test_transform_new_batch_with_fine_tuning(fitted, cyto, guard):
    ref, path = fitted
    model = scae.SAUCIE.load(path)
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    plain, tuned = cyto[1].copy(), cyto[1].copy()
    scae.tl.transform(model, plain)
    assert set(plain.obs["scae_cluster"].cat.categories) == set(ref.obs["scae_cluster"].cat.categories)
    assert plain.uns["scae"]["n_by_code"] > 0.5 * plain.n_obs
    scae.tl.transform(model, tuned, fine_tune_epochs=2, random_state=0)
    assert len(tuned.uns["scae"]["history"]["mmd"]) == 2
    assert not np.array_equal(tuned.obsm["X_scae"], plain.obsm["X_scae"])
    for k, v in model.net.state_dict().items():  # the model itself is not changed by fine-tuning
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match="fine_tune_epochs"):
        scae.tl.transform(model, cyto[1].copy(), fine_tune_epochs=-1)
    untrained = scae.SAUCIE(cyto[1].copy(), hidden=(8, 4))
    check = guard(plain)
    with pytest.raises(ValueError, match="not trained"):
        scae.tl.transform(untrained, plain)
    check()


def test_transform_of_training_cells_reproduces_fit_for_counts(data_dir, tmp_path):
    """Count models: new cells are placed by the features the fit clustered on (standardized log1p prediction)."""
    a = scae.datasets.cellbench(data_dir)
    a = a[a.obs["demuxlet_cls"].astype(str) != "DBL"]
    a = a[np.sort(np.random.default_rng(0).choice(a.n_obs, 300, replace=False))]
    a = a[:, np.sort(np.argsort(-np.asarray(a.X.sum(0)).ravel())[:300])].copy()
    scae.tl.fit(a, likelihood="nb", save_model=tmp_path / "nb", min_cluster_size=30, **{**FIT, "max_epochs": 3})
    again = a.copy()
    scae.tl.transform(scae.SAUCIE.load(tmp_path / "nb"), again)
    assert again.uns["scae"]["n_by_code"] < a.n_obs  # some cells go the nearest-centroid way
    assert (again.obs["scae_cluster"] == a.obs["scae_cluster"]).all()
