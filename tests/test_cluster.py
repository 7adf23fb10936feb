import numpy as np

from scae import cluster


def test_hash_codes_groups_identical_codes_in_order_of_appearance():
    rng = np.random.default_rng(0)
    codes = rng.random((200, 70)) > 0.5  # 70 units → two 64-bit words
    rows = rng.integers(0, 5, size=1000)
    ids = cluster.hash_codes(codes[rows])
    _, first = np.unique(rows, return_index=True)
    assert len(np.unique(ids)) == 5
    # same code ↔ same id
    for a, b in [(0, 1), (2, 3), (10, 500)]:
        assert (ids[a] == ids[b]) == (rows[a] == rows[b])


def test_binarize_relative_threshold():
    codes = np.array([[0.0, 10.0], [1.0, 0.5], [4.0, 9.0]])
    np.testing.assert_array_equal(cluster.binarize(codes, threshold=0.1), [[False, True], [True, False], [True, True]])


def test_absorb_small_and_merge():
    rng = np.random.default_rng(0)
    feats = np.vstack([rng.normal(0, 0.1, (100, 2)), rng.normal(0.05, 0.1, (100, 2)), rng.normal(5, 0.1, (100, 2))])
    labels = np.repeat([0, 1, 2], 100)
    labels[:3] = 3  # a rare code inside the first blob
    absorbed = cluster.absorb_small(labels, feats, min_cells=10)
    assert absorbed.max() + 1 == 3
    merged = cluster.merge_clusters(absorbed, feats, merge_threshold=1.0)
    assert merged.max() + 1 == 2  # the two overlapping blobs merge, the far one stays apart
    assert len(np.unique(merged[200:])) == 1 and merged[0] != merged[250]
    assert cluster.merge_clusters(absorbed, feats, merge_threshold=None, n_clusters=3).max() + 1 == 3


def test_n_clusters_is_not_spent_on_outlying_small_codes():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    feats = np.vstack([rng.normal(c, 0.3, (300, 2)) for c in centres] + [rng.normal([8, 8], 0.1, (6, 2))])
    truth = np.repeat([0, 1, 2, 3], [300, 300, 300, 6])
    # each blob is split into 4 codes (as an over-fragmented clustering layer does); a far outlier code of 6 cells
    labels = np.concatenate([truth[:900] * 4 + rng.integers(0, 4, 900), np.full(6, 12)])
    merged = cluster.merge_clusters(labels, feats, n_clusters=3)
    assert merged.max() + 1 == 3
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(truth[:900], merged[:900]) > 0.99  # the three blobs, the outliers join one
    with np.testing.assert_raises(ValueError):
        cluster.merge_clusters(labels, feats, n_clusters=0)
    assert cluster.merge_clusters(labels, feats, n_clusters=50).max() + 1 == 13  # more than codes: keep codes


def test_merge_distance_is_in_units_of_scale_and_sums_read_sparse_rows():
    import scipy.sparse as sp

    rng = np.random.default_rng(1)
    feats = np.vstack([rng.normal(0, 0.1, (200, 3)), rng.normal([1.5, 0, 0], 0.1, (200, 3))])
    labels = np.repeat([0, 1], 200)
    assert cluster.merge_clusters(labels, feats, merge_threshold=1.0).max() + 1 == 2
    assert cluster.merge_clusters(labels, feats, merge_threshold=1.0, scale=2.0).max() + 1 == 1  # 0.75 units apart
    assert cluster.common_scale([1.0, 2.0, 2.0]) == 3.0 ** 0.5
    np.testing.assert_allclose(
        cluster.label_sums(labels, sp.csr_matrix(feats), 2, chunk_rows=64), cluster.label_sums(labels, feats, 2)
    )


def test_n_clusters_counts_only_groups_with_one_percent_of_cells():
    rng = np.random.default_rng(2)
    centres = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [9.0, 9.0]])
    sizes = [500, 500, 500, 8]  # the last population holds 0.5% of the cells
    feats = np.vstack([rng.normal(c, 0.3, (s, 2)) for c, s in zip(centres, sizes, strict=True)])
    truth = np.repeat(np.arange(4), sizes)
    labels = truth * 3 + rng.integers(0, 3, truth.size)  # three codes per population
    merged = cluster.merge_clusters(labels, feats, n_clusters=4)
    assert merged.max() + 1 == 4
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(truth[:1500], merged[:1500]) < 0.99  # a big population was split to make the 4th
    merged = cluster.merge_clusters(labels, feats, n_clusters=4, min_share=0.001)
    assert adjusted_rand_score(truth, merged) > 0.99  # with a lower bar the rare population is one of the 4
