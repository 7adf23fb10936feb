"""scae.tl.query: Hamming retrieval on binary codes, checked against brute force and exact kNN on real data."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

import scae
from scae._mapping import pack_bits
from scae._query import hamming_distances, hamming_knn

# Measured on flowsom_bal (default fit, seed 0, 15,000 reference / 4,225 query cells, CPU):
# recall@10 against exact 10-NN in the embedding 0.862, cell-type transfer accuracy 0.989 (303 codes).
RECALL_FLOOR = 0.80
TRANSFER_FLOOR = 0.95


def _random_codes(rng, n, bits=70, p=0.05):
    return rng.random((n, bits)) < p


def test_hamming_distances_match_bit_counting():
    rng = np.random.default_rng(0)
    a, b = _random_codes(rng, 40, p=0.3), _random_codes(rng, 30, p=0.3)
    expected = (a[:, None, :] != b[None, :, :]).sum(2)
    np.testing.assert_array_equal(hamming_distances(pack_bits(a), pack_bits(b)), expected)


@pytest.mark.parametrize("with_rep", [False, True])
def test_hamming_knn_matches_brute_force(with_rep):
    rng = np.random.default_rng(1)
    ref, qry = _random_codes(rng, 400), _random_codes(rng, 60)
    ref[:150] = ref[0]  # a big bucket of identical codes (ties)
    qry[:10] = ref[0]
    ref_rep, q_rep = rng.normal(size=(400, 2)), rng.normal(size=(60, 2))
    reps = {"ref_rep": ref_rep, "query_rep": q_rep} if with_rep else {}
    idx, dist = hamming_knn(pack_bits(ref), pack_bits(qry), 10, **reps)
    ham = (qry[:, None, :] != ref[None, :, :]).sum(2)
    for i in range(len(qry)):
        second = np.linalg.norm(ref_rep - q_rep[i], axis=1) if with_rep else np.arange(len(ref))
        expected = np.lexsort((second, ham[i]))[:10]
        np.testing.assert_array_equal(idx[i], expected)
        np.testing.assert_array_equal(dist[i], ham[i, expected])


def test_query_on_real_data_recall_and_label_transfer(flow_fitted):
    rng = np.random.default_rng(0)
    is_ref = np.zeros(flow_fitted.n_obs, dtype=bool)
    is_ref[rng.choice(flow_fitted.n_obs, 15000, replace=False)] = True
    ref, qry = flow_fitted[is_ref].copy(), flow_fitted[~is_ref].copy()
    scae.tl.query(ref, qry, k=10, transfer="cell_type")
    idx = qry.obsm["scae_query_indices"]
    assert idx.shape == (qry.n_obs, 10) and qry.obsm["scae_query_hamming"].shape == (qry.n_obs, 10)
    assert (np.diff(qry.obsm["scae_query_hamming"], axis=1) >= 0).all()
    _, exact = cKDTree(ref.obsm["X_scae"]).query(qry.obsm["X_scae"], 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, exact, strict=True)])
    labels = qry.obs["cell_type"].astype(str).to_numpy()
    keep = labels != "Unlabeled"
    acc = float(np.mean(qry.obs["cell_type_scae_query"].astype(str).to_numpy()[keep] == labels[keep]))
    print(f"recall@10 {recall:.3f}, transfer accuracy {acc:.3f}, {qry.uns['scae_query']['n_ref_codes']} codes")
    assert recall > RECALL_FLOOR and acc > TRANSFER_FLOOR
    with pytest.raises(ValueError, match="run `scae.tl.fit`"):
        scae.tl.query(ref, qry, codes_key="X_pca")


def test_k_above_the_reference_cells_warns_and_records_the_k_used(flow_fitted):
    ref, qry = flow_fitted[:50].copy(), flow_fitted[50:60].copy()
    with pytest.warns(UserWarning, match="k=80 is more than the 50 reference cells"):
        scae.tl.query(ref, qry, k=80)
    assert qry.obsm["scae_query_indices"].shape == (10, 50) and qry.uns["scae_query"]["params"]["k"] == 50
    assert (np.sort(qry.obsm["scae_query_indices"], axis=1) == np.arange(50)).all()  # every reference cell once
