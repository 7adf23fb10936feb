import warnings

import numpy as np
import pytest

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
    assert cluster.common_scale([1.0, 2.0, 2.0]) == 3.0**0.5
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


def test_n_clusters_does_not_make_a_counted_group_of_two_outlying_small_ones():
    # A and B (49% each) and C (1.5%) are kept apart from each other and from two outlying groups of 0.7% each,
    # which lie 3 apart. Merging to 2 clusters, the closest kept-apart pair used to merge first: the two small
    # groups, which together pass the 1% bar and took one of the 2 slots (A, B and C in one cluster; seen on
    # levine3k resampled to 100,000 cells, k=3 F1 0.58). Two groups under the bar no longer merge once every
    # pair is kept apart; they join their nearest counted group at the end.
    centroids = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, -9.0], [0.0, 30.0], [0.0, 33.0]])
    counts = np.array([4900.0, 4900.0, 150.0, 70.0, 70.0])
    moments = centroids**2 + 0.1  # within-group variance 0.1: every pair is kept apart
    groups = cluster.group_centroids(centroids, counts, n_clusters=2, second_moments=moments)
    assert groups.tolist() == [0, 0, 1, 0, 0]  # A and B merge (6 apart); C keeps its slot
    assert groups.tolist() == list(_closest_means_first(centroids, counts, n_clusters=2, moments=moments))


def _closest_means_first(centroids, counts, *, threshold=None, n_clusters=None, min_share=0.01, moments=None):
    """Reference of cluster.group_centroids, written plainly: recompute every pair distance at every merge."""
    means = {i: np.asarray(c, float) for i, c in enumerate(centroids)}
    second = {i: np.asarray(m, float) for i, m in enumerate(moments)} if moments is not None else None
    weight = {i: float(n) for i, n in enumerate(counts)}
    version = dict.fromkeys(means, 0)
    apart = set()  # (i, j, version of i, version of j): pairs kept apart until one of them changes
    owner = np.arange(len(centroids))

    def closest():
        keys = sorted(means)
        pairs = [
            (float(((means[i] - means[j]) ** 2).sum()), i, j)
            for a, i in enumerate(keys)
            for j in keys[a + 1 :]
            if (i, j, version[i], version[j]) not in apart
        ]
        return min(pairs) if pairs else (np.inf, -1, -1)

    def separated(i, j):
        diff = means[i] - means[j]
        pooled = (weight[i] * (second[i] - means[i] ** 2) + weight[j] * (second[j] - means[j] ** 2)) / (
            weight[i] + weight[j]
        )
        scale = max(1.0, threshold / cluster.DEFAULT_MERGE_THRESHOLD) if n_clusters is None else 1.0
        return np.sqrt((diff @ diff) ** 2 / (diff**2 @ pooled)) >= cluster.MAX_SEPARATION * scale

    def merge(i, j):
        means[i] = (means[i] * weight[i] + means[j] * weight[j]) / (weight[i] + weight[j])
        if second is not None:
            second[i] = (second[i] * weight[i] + second.pop(j) * weight[j]) / (weight[i] + weight[j])
        weight[i] += weight.pop(j)
        version[i] += 1
        del means[j]
        owner[owner == j] = i

    def next_pair(force, bar=None):
        while True:
            d2, i, j = closest()
            if not np.isfinite(d2):  # all kept apart: with a count to reach, the closest of them
                if not force:
                    return d2, i, j
                current = [
                    (a, b)
                    for a, b, va, vb in apart
                    if a in means
                    and b in means
                    and (va, vb) == (version[a], version[b])
                    and (bar is None or max(weight[a], weight[b]) >= bar)  # two groups under the bar: not merged
                ]
                return min((float(((means[a] - means[b]) ** 2).sum()), a, b) for a, b in current)
            if second is not None and d2 >= cluster.SEPARATION_FROM**2 and separated(i, j):
                apart.add((i, j, version[i], version[j]))
                continue
            return d2, i, j

    bar = min_share * float(np.sum(counts))
    if n_clusters is None:
        while len(means) > 1:
            d2, i, j = next_pair(False)
            if d2 >= threshold**2:
                break
            merge(i, j)
    elif sum(w >= bar for w in weight.values()) < n_clusters:
        while len(means) > n_clusters:
            merge(*next_pair(True)[1:])
    else:
        while sum(w >= bar for w in weight.values()) > n_clusters:
            merge(*next_pair(True, bar)[1:])
        big = [i for i in means if weight[i] >= bar]
        for g in [i for i in means if weight[i] < bar]:
            owner[owner == g] = min(big, key=lambda b: ((means[b] - means[g]) ** 2).sum())
    return np.unique(owner, return_inverse=True)[1]


def test_group_centroids_merges_closest_weighted_means_first():
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(0)
    for _ in range(60):
        g, d = int(rng.integers(2, 40)), int(rng.integers(1, 8))
        centroids = rng.normal(size=(g, d)) * rng.uniform(0.5, 4)
        counts = rng.integers(1, 500, g).astype(float)
        k = int(rng.integers(1, g + 1))
        # within-group variances 0.05-1.5 per feature: pairs 2-2.4 apart are both kept apart and merged
        moments = centroids**2 + rng.uniform(0.05, 1.5, size=(g, d))
        for kw in (
            {"merge_threshold": 2.4},
            {"n_clusters": k},
            {"merge_threshold": 3.0, "second_moments": moments},
            {"n_clusters": k, "second_moments": moments},
        ):
            got = cluster.group_centroids(centroids, counts, **kw)
            want = _closest_means_first(
                centroids,
                counts,
                threshold=kw.get("merge_threshold"),
                n_clusters=kw.get("n_clusters"),
                moments=kw.get("second_moments"),
            )
            assert adjusted_rand_score(want, got) == 1.0, kw
            if "n_clusters" in kw:
                assert got.max() + 1 == k


def test_separated_populations_stay_apart_and_overlapping_halves_merge():
    # two populations whose means lie 2.2 apart (under the merge threshold 2.3), each cut into two code
    # clusters: with a within-population SD of 0.5 along the line joining them (separation 4.4) they stay
    # apart; with SD 1.0 (separation 2.2, they overlap) they merge, and so do the halves of each population
    rng = np.random.default_rng(3)
    for sd, expected in ((0.5, 2), (1.0, 1)):
        cells = np.concatenate([rng.normal(0.0, sd, (2000, 3)), rng.normal(0.0, sd, (2000, 3))])
        cells[2000:, 0] += 2.2
        labels = np.repeat([0, 1, 2, 3], 1000)  # halves of each population
        merged = cluster.merge_clusters(labels, cells)
        assert merged.max() + 1 == expected, sd
        assert (merged[:1000] == merged[1000:2000][0]).all() and (merged[2000:] == merged[2000]).all()
        everything = cluster.merge_clusters(labels, cells, max_separation=None)
        assert everything.max() + 1 == 1  # without the rule every pair closer than 2.3 merges
        # the rule starts at SEPARATION_FROM: the same populations 1.9 apart always merge
        cells[2000:, 0] -= 0.3
        assert cluster.merge_clusters(labels, cells).max() + 1 == 1


def test_larger_threshold_lets_separated_pairs_merge():
    """Above the default threshold the separation allowed grows with it (MAX_SEPARATION * t / 2.3), so a larger
    ``merge_threshold`` still coarsens cytometry: two populations 2.2 apart with SD 0.5 (separation 4.4) stay apart
    up to t = 3.3 (allowed 4.0) and merge at 4.0 (allowed 4.9); ``n_clusters`` is not affected."""
    rng = np.random.default_rng(3)
    cells = np.concatenate([rng.normal(0.0, 0.5, (2000, 3)), rng.normal(0.0, 0.5, (2000, 3))])
    cells[2000:, 0] += 2.2
    labels = np.repeat([0, 1, 2, 3], 1000)
    assert cluster.separation(cells[:2000].mean(0), cells[2000:].mean(0), cells[:2000].var(0), cells[2000:].var(0),
                              2000, 2000) == pytest.approx(4.4, abs=0.15)  # fmt: skip
    counts = [cluster.merge_clusters(labels, cells, merge_threshold=t).max() + 1 for t in (2.3, 3.3, 4.0)]
    assert counts == [2, 2, 1]
    assert cluster.merge_clusters(labels, cells, n_clusters=2).max() + 1 == 2


def test_separation_test_is_off_for_wide_inputs():
    # the separated populations of the test above, padded with features of unit noise (so that the unit of wide
    # inputs, merge_unit, stays ~1): up to SEPARATION_MAX_FEATURES features they stay apart, above it (RNA)
    # every pair under the threshold merges
    rng = np.random.default_rng(3)
    cells = rng.normal(0.0, 0.5, (4000, 3))
    cells[2000:, 0] += 2.2
    labels = np.repeat([0, 1, 2, 3], 1000)
    for n_features, expected in ((cluster.SEPARATION_MAX_FEATURES, 2), (cluster.SEPARATION_MAX_FEATURES + 1, 1)):
        padded = np.hstack([cells, rng.normal(0.0, 1.0, (4000, n_features - 3))])
        assert cluster.merge_clusters(labels, padded).max() + 1 == expected, n_features


def _group_moments(n_features: int, seed: int):
    """Cells of 6 groups with different means and per-feature spreads; their centroids, counts and second moments."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, 3000)
    scales = rng.gamma(2.0, 0.5, n_features)
    cells = rng.normal(0.0, 3.0, (6, n_features))[labels] * scales + rng.normal(size=(3000, n_features)) * scales
    centroids, counts, moments = cluster._centroids(labels, cells, 6, square=True)
    return cells, labels, centroids, counts, moments


@pytest.mark.parametrize("n_features", [20, 120, 2400])
def test_merge_unit_is_rms_sd_of_the_top_components(n_features):
    cells, labels, centroids, counts, moments = _group_moments(n_features, n_features)
    unit = cluster.merge_unit(centroids, counts, moments)
    if n_features <= cluster.MERGE_COMPONENTS:  # all components: the root mean square per-feature SD of the cells
        assert np.isclose(unit, cluster.common_scale(cells.std(0)), rtol=1e-10)
        return
    # between-group covariance of the means plus the pooled within-group variances on the diagonal, written
    # plainly from the cells (2,400 features: the Lanczos branch, 120: the dense one)
    w = counts / counts.sum()
    centred = centroids - w @ centroids
    cov = (centred * w[:, None]).T @ centred
    within = sum(w[g] * cells[labels == g].var(0) for g in range(6))
    cov[np.diag_indices(n_features)] += within
    top = np.linalg.eigvalsh(cov)[-cluster.MERGE_COMPONENTS :]
    assert np.isclose(unit, np.sqrt(top.sum() / cluster.MERGE_COMPONENTS), rtol=1e-8)
    assert unit > cluster.common_scale(cells.std(0))  # the top components hold more than their share


def test_wide_merge_distances_do_not_depend_on_the_units_of_the_features():
    from scipy.spatial.distance import pdist

    for n_features in (cluster.MERGE_COMPONENTS, cluster.MERGE_COMPONENTS + 1):
        _, _, centroids, counts, moments = _group_moments(n_features, 7)
        wide = n_features > cluster.MERGE_COMPONENTS
        unit = cluster.merge_unit(centroids, counts, moments) if wide else 1.0
        kw = {"merge_threshold": float(np.quantile(pdist(centroids), 0.2)) / unit, "max_separation": None}
        groups = cluster.group_centroids(centroids, counts, second_moments=moments, **kw)
        scaled = cluster.group_centroids(10.0 * centroids, counts, second_moments=100.0 * moments, **kw)
        assert 1 < len(set(groups)) < 6, n_features
        if wide:  # in units of the top components
            np.testing.assert_array_equal(groups, scaled)
        else:  # in the units given: ten times the distances, no merge
            assert len(set(scaled)) == 6


def test_max_separation_must_be_positive():
    import pytest

    with pytest.raises(ValueError, match="max_separation"):
        cluster.merge_clusters(np.array([0, 1]), np.array([[0.0], [2.1]]), max_separation=0.0)


def test_separation_is_distance_over_pooled_sd_along_the_mean_difference():
    # along the first feature the pooled variance is (3 * 0.25 + 1 * 1.0) / 4 = 0.4375; the second feature's
    # variance (100) is orthogonal to the difference and does not count
    sep = cluster.separation([0.0, 0.0], [2.0, 0.0], [0.25, 100.0], [1.0, 100.0], 3.0, 1.0)
    assert np.isclose(sep, 2.0 / np.sqrt(0.4375))
    assert cluster.separation([1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0], 1.0, 1.0) == 0.0
    assert cluster.separation([0.0], [2.0], [0.0], [0.0], 1.0, 1.0) == np.inf


def test_accumulator_sums_of_squares_follow_absorbed_cells():
    """Chunked passes with rare codes absorbed: per-code sums of squares equal those of the final code clusters."""
    import scipy.sparse as sp

    from scae._accumulator import ClusterAccumulator, array_chunks, run_passes

    rng = np.random.default_rng(4)
    codes = (rng.random((900, 6)) < np.repeat(rng.random((9, 6)), 100, axis=0)).astype(np.float32)
    codes[rng.choice(900, 40, replace=False)] = rng.random((40, 6))  # rare codes, absorbed in pass 3
    features = rng.normal(size=(900, 4)).astype(np.float32)
    merge = sp.csr_matrix(rng.normal(size=(900, 5)) * (rng.random((900, 5)) < 0.5))
    acc = ClusterAccumulator(900, min_cluster_size=10)
    run_passes(acc, array_chunks(codes, features, merge, chunk_rows=97))
    assert acc._small[acc.code_ids].any()
    k = len(acc._keys)
    np.testing.assert_allclose(acc._merge_sums[:k], cluster.label_sums(acc.absorbed, merge, k), atol=1e-9)
    np.testing.assert_allclose(
        acc._merge_squares[:k], cluster.label_sums(acc.absorbed, merge, k, square=True), atol=1e-9
    )


def test_group_means_are_count_weighted():
    # A at 0 and C at 4.5 hold 1,000 cells each, B at 2 one cell: B joins A first; the merged mean stays at
    # ~0.002, 4.5 from C, so C stays apart at a threshold of 3.6. Unweighted (each code one point) the merged
    # centre would sit at 1.0, 3.5 from C, and everything would merge, as it does with equal counts.
    centroids = np.array([[0.0], [2.0], [4.5]])
    groups = cluster.group_centroids(centroids, np.array([1000.0, 1.0, 1000.0]), merge_threshold=3.6)
    assert groups[0] == groups[1] != groups[2]
    assert (cluster.group_centroids(centroids, np.ones(3), merge_threshold=3.6) == 0).all()


def test_device_packing_and_numbering_equal_the_host_ones():
    import torch

    from scae._device_cut import first_appearance_ids, pack_words

    rng = np.random.default_rng(1)
    for n_bits in (5, 64, 65, 130, 256):
        binary = rng.random((500, n_bits)) < 0.3
        binary[:7, -1] = binary[7:9, min(63, n_bits - 1)] = True  # the top bits (the int64 sign bit) are set
        host = cluster.pack_bits(binary)
        words = pack_words(torch.from_numpy(binary))
        np.testing.assert_array_equal(words.numpy().view(np.uint64), host)
        repeated = torch.from_numpy(host[rng.integers(0, 40, 3000)].view(np.int64))
        ids, uniq = first_appearance_ids(repeated)
        expected = cluster.word_ids(repeated.numpy().view(np.uint64))
        np.testing.assert_array_equal(ids.numpy(), expected)
        np.testing.assert_array_equal(uniq.numpy()[ids.numpy()], repeated.numpy())


@pytest.mark.parametrize("data", ["levine", "pbmc68k"])
def test_clusters_cut_on_the_device_equal_the_host_ones(data, request, monkeypatch):
    """The device passes (torch, here on the CPU; tests/test_cuda.py runs them on a GPU) give the host's labels
    and the same per-code sums and sums of squares: on 23 CyTOF markers and on 765 genes (pbmc68k_reduced
    ``.raw``: merge distances in units of :func:`scae.cluster.merge_unit`, from those sums and squares)."""
    import scae
    from scae import _pipeline
    from scae._accumulator import ClusterAccumulator

    adata = request.getfixturevalue(data)
    adata = adata.raw.to_adata() if data == "pbmc68k" else adata
    seen = []
    labels = ClusterAccumulator.labels
    monkeypatch.setattr(ClusterAccumulator, "labels", lambda self: seen.append(self) or labels(self))
    model = scae.SAUCIE(adata, random_state=0).train(max_epochs=15, progress=False)
    out = model.outputs()
    for options in (
        {},
        {"n_clusters": 3},
        {"merge_threshold": None},
        {"merge_threshold": 4.0},
        {"min_cluster_size": 60, "threshold": 0.2},
    ):
        host = _pipeline.cut_labels(model, out["codes"], out["reconstruction"], on_device=False, **options)
        dev = _pipeline.cut_labels(model, out["codes"], out["reconstruction"], on_device=True, **options)
        np.testing.assert_array_equal(dev, host)
        on_host, on_device = seen[-2:]
        k = len(on_host._keys)
        for name in ("_merge_sums", "_merge_squares", "_feature_sums"):
            np.testing.assert_allclose(getattr(on_device, name)[:k], getattr(on_host, name)[:k], rtol=1e-5, atol=1e-6)
        assert host.max() + 1 >= (3 if options.get("n_clusters") else 2), options
        assert (on_host._merge_sums.shape[1] > scae.cluster.MERGE_COMPONENTS) == (data == "pbmc68k")


def test_accumulator_set_codes_checks_shapes():
    import pytest

    from scae._accumulator import ClusterAccumulator

    acc = ClusterAccumulator(10)
    words = np.zeros((2, 1), dtype=np.uint64)
    with pytest.raises(ValueError, match="code ids"):
        acc.set_codes(
            np.ones(3), np.zeros(9, dtype=np.int64), words, np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 3))
        )


def test_threshold_zero_binarizes_without_warnings():
    """At threshold 0 a unit fires wherever it is positive; a unit that never fires stays off (no 0 x inf)."""
    codes = np.array([[0.5, 0.0, 0.0], [0.0, 0.2, 0.0], [0.1, 0.3, 0.0]], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        binary = cluster.binarize(codes, threshold=0.0)
        words = cluster.code_words(codes, threshold=0.0)
    assert binary.astype(int).tolist() == [[1, 0, 0], [0, 1, 0], [1, 1, 0]]
    np.testing.assert_array_equal(words, cluster.pack_bits(binary))
