"""Every parameter of the entry points gets a wrong type and a value out of range, refused before any work.

One row per bad value: ``(entry point, parameter, value, error type, stage)``. ``stage`` "settings" means the
error must come before any data matrix is read (``scae.data.get_matrix`` raises if called), "setup" before
any training step. ``test_table_covers_every_parameter`` fails when a parameter has no row (and is not in
``UNCHECKED``), so a new option cannot go unchecked.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import shutil

import anndata as ad
import numpy as np
import pytest

import scae
from scae import _options, _settings

NAN, INF = math.nan, math.inf
S, U = "settings", "setup"
#: parameters with nothing to check, per entry point (any truthy/falsy value works for `progress`)
UNCHECKED = {"fit": {"progress"}, "model": set(), "train": {"progress"}, "transform": {"progress"}, "query": set(),
             "cluster": set()}  # fmt: skip

_MODEL_ROWS = [
    ("layer", 5, TypeError, S), ("layer", "", ValueError, S),
    ("batch_key", 5, TypeError, S), ("batch_key", "", ValueError, S),
    ("reference_batch", 1.5, TypeError, S), ("reference_batch", "a", ValueError, S),
    ("hidden", "64", TypeError, S), ("hidden", [64, 2.5], TypeError, S), ("hidden", [True], TypeError, S),
    ("hidden", [0], ValueError, S), ("hidden", [-4], ValueError, S), ("hidden", [64, 0, 16], ValueError, S),
    ("hidden", [], ValueError, S),
    ("lambda_b", "0.1", TypeError, S), ("lambda_b", -0.1, ValueError, S), ("lambda_b", NAN, ValueError, S),
    ("lambda_c", None, TypeError, S), ("lambda_c", INF, ValueError, S),
    ("lambda_d", True, TypeError, S), ("lambda_d", -1, ValueError, S),
    ("learning_rate", "1e-3", TypeError, S), ("learning_rate", 0, ValueError, S), ("learning_rate", NAN, ValueError, S),
    ("batch_size", "256", TypeError, S), ("batch_size", 2.7, TypeError, S), ("batch_size", True, TypeError, S),
    ("batch_size", 1, ValueError, S),
    ("pairwise_cells", 2.5, TypeError, S), ("pairwise_cells", 1, ValueError, S),
    ("random_state", 1.7, TypeError, S), ("random_state", "0", TypeError, S), ("random_state", True, TypeError, S),
    ("random_state", -1, ValueError, S), ("random_state", 2**63, ValueError, S),
    ("device", 0, TypeError, S), ("device", "gpu0", ValueError, S), ("device", "cuda:x", ValueError, S),
    ("device", "mps", ValueError, S),
    ("batch_reconstruction", 1, TypeError, S), ("batch_reconstruction", "pairs", ValueError, S),
    ("gene_sets", 5, TypeError, S), ("gene_sets", {}, ValueError, S),
    ("min_genes", 1.5, TypeError, S), ("min_genes", 0, ValueError, S),
    ("n_free_nodes", 1.5, TypeError, S), ("n_free_nodes", -1, ValueError, S), ("n_free_nodes", 3, ValueError, S),
    ("gene_set_layer", 1, TypeError, S), ("gene_set_layer", "middle", ValueError, S),
    ("likelihood", 5, TypeError, S), ("likelihood", {"all": 5}, TypeError, S), ("likelihood", "poisson", ValueError, S),
    ("block_key", 5, TypeError, S), ("block_key", "", ValueError, S),
    ("block_weights", [1.0], TypeError, S), ("block_weights", {"a": "1"}, TypeError, S),
    ("block_weights", {"a": -1.0}, ValueError, S),
    ("input_dropout", "0.1", TypeError, S), ("input_dropout", 1.0, ValueError, S),
    ("input_dropout", -0.1, ValueError, S),
    ("input_noise", "x", TypeError, S), ("input_noise", -1, ValueError, S),
    ("l1_activity", [0.1], TypeError, S), ("l1_activity", NAN, ValueError, S),
    ("contractive", "1", TypeError, S), ("contractive", -1, ValueError, S),
    ("variational", "yes", TypeError, S), ("variational", 1, TypeError, S),  # a bool has no range
    ("lambda_kl", "0.01", TypeError, S), ("lambda_kl", -INF, ValueError, S),
    ("precision", 32, TypeError, S), ("precision", "fp8", ValueError, S),
    ("compile", "yes", TypeError, S), ("compile", 1, TypeError, S),
    ("deterministic", "yes", TypeError, S), ("deterministic", None, TypeError, S),
    ("block_rows", 1.5, TypeError, S), ("block_rows", 0, ValueError, S),
    ("adata", np.zeros((4, 3)), TypeError, S), ("adata", ad.AnnData(np.zeros((0, 3), np.float32)), ValueError, U),
]  # fmt: skip
_FIT_ONLY = [
    ("max_epochs", 1.5, TypeError, S), ("max_epochs", "5", TypeError, S), ("max_epochs", 0, ValueError, S),
    ("early_stopping", "no", TypeError, S), ("early_stopping", 1, TypeError, S),
    ("merge_threshold", "2.8", TypeError, S), ("merge_threshold", -1, ValueError, S),
    ("merge_threshold", NAN, ValueError, S),
    ("n_clusters", "5", TypeError, S), ("n_clusters", 0, ValueError, S), ("n_clusters", 10**6, ValueError, S),
    ("min_cluster_size", 2.5, TypeError, S), ("min_cluster_size", 0, ValueError, S),
    ("impute", "no", TypeError, S), ("impute", 1, TypeError, S),
    ("imputed_units", 1, TypeError, S), ("imputed_units", "foo", ValueError, S),
    ("save_model", 5, TypeError, S), ("save_model", "", ValueError, S),
    ("key_added", 5, TypeError, S), ("key_added", "", ValueError, S), ("key_added", "a/b", ValueError, S),
    ("copy", "no", TypeError, S), ("copy", 1, TypeError, S),
    ("out_path", 5, TypeError, S), ("out_path", "out.h5ad", ValueError, S),  # in-memory AnnData: no out_path
]  # fmt: skip
ROWS = (
    [("model", *r) for r in _MODEL_ROWS]
    + [("model", "n_latent", 2.0, TypeError, S), ("model", "n_latent", 0, ValueError, S)]
    + [("fit", "n_latent", 2.0, TypeError, S), ("fit", "n_latent", 0, ValueError, S)]
    + [("fit", *r) for r in _MODEL_ROWS + _FIT_ONLY]
    + [("train", "max_epochs", 1.5, TypeError, S), ("train", "max_epochs", "3", TypeError, S),
       ("train", "max_epochs", 0, ValueError, S), ("train", "early_stopping", "no", TypeError, S),
       ("train", "early_stopping", 0, TypeError, S)]
    + [("transform", *r) for r in [
        ("model", 3, TypeError, S), ("model", "untrained", ValueError, S),
        ("model", "no_such_model_folder", FileNotFoundError, S),  # (a str is a saved model's folder)
        ("adata", np.zeros((4, 3)), TypeError, S), ("adata", ad.AnnData(np.zeros((0, 3), np.float32)), ValueError, U),
        ("batch_key", 5, TypeError, S), ("batch_key", "", ValueError, S),
        ("fine_tune_epochs", 1.5, TypeError, S), ("fine_tune_epochs", -1, ValueError, S),
        ("fine_tune_learning_rate", "0.1", TypeError, S), ("fine_tune_learning_rate", 0, ValueError, S),
        ("impute", "yes", TypeError, S), ("impute", 0, TypeError, S),
        ("random_state", 1.0, TypeError, S), ("random_state", -1, ValueError, S),
        ("key_added", None, TypeError, S), ("key_added", "", ValueError, S),
        ("copy", "no", TypeError, S), ("copy", 1, TypeError, S),
    ]]
    + [("query", *r) for r in [
        ("adata_ref", np.zeros((4, 3)), TypeError, S), ("adata_ref", "nan_codes", ValueError, U),
        ("adata_query", [1, 2], TypeError, S), ("adata_query", "nan_codes", ValueError, U),
        ("k", 2.5, TypeError, S), ("k", 0, ValueError, S),
        ("codes_key", 5, TypeError, S), ("codes_key", "", ValueError, S),
        ("threshold", "0.1", TypeError, S), ("threshold", 1.0, ValueError, S), ("threshold", NAN, ValueError, S),
        ("tie_break", 5, TypeError, S), ("tie_break", "", ValueError, S),
        ("transfer", 5, TypeError, S), ("transfer", [""], ValueError, S),
        ("key_added", 5, TypeError, S), ("key_added", "", ValueError, S),
        ("copy", "no", TypeError, S), ("copy", 1, TypeError, S),
    ]]
    + [("cluster", *r) for r in [
        ("adata", np.zeros((4, 3)), TypeError, S), ("adata", "unfitted", KeyError, U),
        ("n_clusters", "5", TypeError, S), ("n_clusters", 0, ValueError, S), ("n_clusters", 10**6, ValueError, S),
        ("merge_threshold", "1", TypeError, S), ("merge_threshold", -0.5, ValueError, S),
        ("min_cluster_size", 1.5, TypeError, S), ("min_cluster_size", 0, ValueError, S),
        ("threshold", None, TypeError, S), ("threshold", -0.1, ValueError, S),
        ("key_added", 5, TypeError, S), ("key_added", "a/b", ValueError, S),
        ("copy", "no", TypeError, S), ("copy", 1, TypeError, S),
    ]]
)  # fmt: skip

FUNCS = {
    "fit": scae.tl.fit,
    "model": scae.SAUCIE.__init__,
    "train": scae.SAUCIE.train,
    "transform": scae.tl.transform,
    "query": scae.tl.query,
    "cluster": scae.tl.cluster,
}


def _parameters(func) -> set[str]:
    return {n for n in inspect.signature(func).parameters if n != "self"}


@pytest.mark.parametrize("target", list(FUNCS))
def test_table_covers_every_parameter(target):
    rows = {(param, exc) for t, param, _, exc, _ in ROWS if t == target}
    params = _parameters(FUNCS[target])
    covered = {p for p, _ in rows}
    assert covered | UNCHECKED[target] == params, sorted(params - covered - UNCHECKED[target])
    # every checked parameter has a wrong type (TypeError) and, where it has a range, a value out of it
    assert {p for p, e in rows if e is TypeError} >= covered - {"adata"} - {"model"}, target
    bools = {p for p in covered if all(e is TypeError for q, e in rows if q == p)}
    flags = {"variational", "compile", "deterministic", "impute", "copy", "early_stopping"}
    assert bools <= flags, bools  # flags: no range
    assert UNCHECKED[target] == set(_settings.UNCHECKED[target])


@pytest.fixture(scope="module")
def tiny(levine):
    return levine[:300].copy()


@pytest.fixture(scope="module")
def trained(tiny):
    model = scae.SAUCIE(tiny.copy(), hidden=(16, 8), random_state=0)
    return model.train(1, progress=False)


@pytest.fixture(scope="module")
def fitted(tiny):
    a = tiny.copy()
    scae.tl.fit(a, hidden=(16, 8), max_epochs=1, progress=False)
    return a


#: bad values the message names without quoting them: a stand-in for a model, and a path (as the CLI prints paths)
NOT_QUOTED = ("untrained", "no_such_model_folder")


def _blocked(*_, **__):
    raise AssertionError("trained")


def _call(target, param, value, *, tiny, trained, fitted, monkeypatch):
    """Call the entry point with one bad value; return the AnnData that must stay unchanged (or None)."""
    if target in ("fit", "model"):
        a = tiny.copy()
        kw = {"max_epochs": 1, "progress": False} if target == "fit" else {}
        kw.update(hidden=(16, 8))
        if param == "adata":
            return None, lambda: FUNCS[target](value, **kw) if target == "fit" else scae.SAUCIE(value)
        kw[param] = value
        return a, (lambda: scae.tl.fit(a, **kw)) if target == "fit" else (lambda: scae.SAUCIE(a, **kw))
    if target == "train":
        if param == "early_stopping":
            return None, lambda: trained.train(1, early_stopping=value, progress=False)
        return None, lambda: trained.train(value, progress=False)
    if target == "transform":
        a = tiny.copy()
        if param == "model":
            if isinstance(value, str) and value == "untrained":
                value = scae.SAUCIE(tiny.copy(), hidden=(16, 8))
            return a, lambda: scae.tl.transform(value, a)
        if param == "adata":
            return None, lambda: scae.tl.transform(trained, value)
        return a, lambda: scae.tl.transform(trained, a, **{param: value})
    if target == "query":
        ref, qry = fitted.copy(), fitted[:50].copy()
        if isinstance(value, str) and value == "nan_codes":
            bad = ref if param == "adata_ref" else qry
            bad.obsm["X_scae_codes"][3, 1] = np.nan
            return qry, lambda: scae.tl.query(ref, qry)
        if param in ("adata_ref", "adata_query"):
            return None, lambda: scae.tl.query(**{"adata_ref": ref, "adata_query": qry, param: value})
        return qry, lambda: scae.tl.query(ref, qry, **{param: value})
    a = fitted.copy()
    if param == "adata":
        return (a := tiny.copy()), lambda: scae.tl.cluster(a if isinstance(value, str) else value)
    return a, lambda: scae.tl.cluster(a, **{param: value})


@pytest.mark.parametrize(("target", "param", "value", "exc", "stage"), ROWS, ids=lambda v: repr(v)[:24])
def test_bad_value_refused_before_work(target, param, value, exc, stage, tiny, trained, fitted, guard, monkeypatch):
    adata, call = _call(target, param, value, tiny=tiny, trained=trained, fitted=fitted, monkeypatch=monkeypatch)
    monkeypatch.setattr(scae._pipeline, "train_net", _blocked)
    monkeypatch.setattr(scae._transform, "train_net", _blocked)
    monkeypatch.setattr(scae._transform, "infer", _blocked)
    monkeypatch.setattr(scae._query, "hamming_knn", _blocked)
    if stage == S:  # not even the data matrix may be read
        read = AssertionError("data read")
        monkeypatch.setattr(scae.data, "get_matrix", lambda *a, **k: (_ for _ in ()).throw(read))
        monkeypatch.setattr(scae._tl_cluster, "get_matrix", lambda *a, **k: (_ for _ in ()).throw(read))
    check = guard(adata) if adata is not None else None
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    assert re.search(rf"\b{param}\b", msg), msg
    if stage == S and isinstance(value, int | float | str | list | dict) and value not in NOT_QUOTED:
        assert repr(value) in msg or (param == "reference_batch" and "without `batch_key`" in msg), msg
    if check is not None:
        check()


def test_n_clusters_above_cells_names_both_numbers(tiny):
    with pytest.raises(ValueError, match=r"`n_clusters` must be at most the number of cells \(300\), got 301"):
        scae.tl.fit(tiny.copy(), n_clusters=301, progress=False)


def test_backed_out_path_refused_before_training(tmp_path, tiny, monkeypatch):
    path = tmp_path / "in.h5ad"
    tiny.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    monkeypatch.setattr(scae._pipeline, "train_net", _blocked)
    with pytest.raises(ValueError, match="`out_path` must differ from the backed input file"):
        scae.tl.fit(backed, out_path=str(path), progress=False)
    with pytest.raises(ValueError, match="`out_path` must be in an existing folder.*missing"):
        scae.tl.fit(backed, out_path=str(tmp_path / "missing" / "out.h5ad"), progress=False)
    with pytest.raises(ValueError, match="`copy=True` is not supported for a backed AnnData"):
        scae.tl.fit(backed, copy=True, progress=False)
    assert "scae" not in backed.uns and "X_scae" not in backed.obsm
    backed.file.close()


def test_model_json_missing_key_or_not_an_object(trained, tmp_path):
    good = tmp_path / "good"
    trained.save(good)
    meta = json.loads((good / "model.json").read_text())
    missing = tmp_path / "missing"
    shutil.copytree(good, missing)
    (missing / "model.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "var_names"}))
    with pytest.raises(ValueError, match=r"missing/model.json.*'var_names'"):
        scae.SAUCIE.load(missing)
    listed = tmp_path / "listed"
    shutil.copytree(good, listed)
    (listed / "model.json").write_text(json.dumps([meta]))
    with pytest.raises(ValueError, match=r"listed/model.json must hold a JSON object.*list"):
        scae.SAUCIE.load(listed)
    wrong = tmp_path / "wrong"
    shutil.copytree(good, wrong)
    (wrong / "model.json").write_text(json.dumps({**meta, "hparams": [1, 2]}))
    with pytest.raises(ValueError, match=r"wrong/model.json.*'hparams'"):
        scae.SAUCIE.load(wrong)
    names = meta["var_names"]
    for edit, message in [
        ({"n_features": len(names) - 1}, rf"'n_features' is {len(names) - 1} but 'var_names' lists {len(names)}"),
        ({"var_names": [names[0], *names[:-1]]}, rf"'var_names' repeats \['{names[0]}'\]"),
        ({"var_names": [1.5, *names[1:]]}, "'var_names' must be a non-empty list of feature names"),
        ({"var_names": []}, "'var_names' must be a non-empty list of feature names"),
    ]:
        shutil.copytree(good, tmp_path / "edited", dirs_exist_ok=True)
        (tmp_path / "edited" / "model.json").write_text(json.dumps({**meta, **edit}))
        with pytest.raises(ValueError, match=message):
            scae.SAUCIE.load(tmp_path / "edited")


def test_get_clusters_options_checked(trained):
    with pytest.raises(TypeError, match=r"`n_clusters` must be None or an int >= 1, got '3'"):
        trained.get_clusters(n_clusters="3")
    with pytest.raises(ValueError, match=r"`threshold` must be a finite number in \[0, 1\), got 1.5"):
        trained.get_clusters(threshold=1.5)


@pytest.mark.parametrize(("func", "groups"), [
    (scae.tl.fit, _options.FIT_GROUPS),
    (scae.SAUCIE, _options.MODEL_GROUPS),
])  # fmt: skip
def test_flat_signatures_are_the_declared_options(func, groups):
    """tl.fit and SAUCIE keep flat keywords for scanpy users; every one is an option of scae._options, same default."""
    signature = {n: p.default for n, p in inspect.signature(func).parameters.items() if n != "adata"}
    declared = _options.defaults(*groups)
    assert set(signature) == set(declared), sorted(set(signature) ^ set(declared))
    differing = {k: (signature[k], declared[k]) for k in declared if signature[k] != declared[k]}
    assert not differing, differing
    # the grouped settings round-trip the flat keywords
    flat = _options.FitSettings.from_flat(signature).flat() if func is scae.tl.fit else None
    assert flat is None or flat == signature
