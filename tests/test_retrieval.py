"""Retrieval on synthetic descriptors (exact maths) and on the real-photo fixture."""

import numpy as np
import pytest

from mirror_sfm.evaluate import mean_average_precision
from mirror_sfm.pairs import PairsOptions, generate_pairs, sequential_pairs
from mirror_sfm.pairs_io import read_pairs
from mirror_sfm.retrieval import RetrievalOptions, alpha_query_expansion, retrieve
from mirror_sfm.whitening import fit_pca_whitening


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_exact_topk_excludes_self_and_orders_by_score():
    g = unit(np.array([[1, 0, 0], [0.9, 0.1, 0], [0.5, 0.5, 0], [0, 0, 1]], dtype=np.float32))
    nn = retrieve(g, None, RetrievalOptions(num_matched=2, rerank="none"))
    assert nn.indices[0].tolist() == [1, 2]
    assert nn.indices[3][0] in (0, 1, 2) and 3 not in nn.indices[3]
    assert np.all(np.diff(nn.scores, axis=1) <= 1e-6)


def test_chunked_and_ivf_search_agree_with_brute_force():
    rng = np.random.default_rng(0)
    g = unit(rng.normal(size=(3000, 32)).astype(np.float32))
    exact = retrieve(g, None, RetrievalOptions(num_matched=5, rerank="none", chunk_size=256))
    sims = g @ g.T
    np.fill_diagonal(sims, -np.inf)
    assert np.array_equal(exact.indices[:, 0], sims.argmax(axis=1))
    ivf = retrieve(g, None, RetrievalOptions(num_matched=5, rerank="none", exact_max=100, ivf_nprobe=256))
    assert (ivf.indices[:, 0] == exact.indices[:, 0]).mean() > 0.99


def test_prmac_rerank_prefers_regional_match():
    # global descriptors say 1 is closer to 0, but only 2 shares 0's regions
    g = unit(np.array([[1, 0, 0, 0], [0.95, 0.3, 0, 0], [0.7, 0, 0.7, 0]], dtype=np.float32))
    regions = np.zeros((3, 2, 4), dtype=np.float32)
    regions[0] = [[0, 0, 1, 0], [0, 0, 0, 1]]
    regions[1] = [[0, 1, 0, 0], [0, 1, 0, 0]]
    regions[2] = [[0, 0, 0, 1], [0, 0, 1, 0]]
    plain = retrieve(g, regions, RetrievalOptions(num_matched=2, rerank="none"))
    rr = retrieve(g, regions, RetrievalOptions(num_matched=2, rerank="prmac", shortlist=2))
    assert plain.indices[0].tolist() == [1, 2]
    assert rr.indices[0].tolist() == [2, 1]
    assert rr.scores[0, 0] == pytest.approx(2.0)


def test_alpha_query_expansion_by_hand():
    db = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    from mirror_sfm.retrieval import Neighbors

    nn = Neighbors(np.array([[1]]), np.array([[0.5]], dtype=np.float32))
    q = alpha_query_expansion(db[:1], db, nn, n=1, alpha=1.0)  # (1, 0) + 0.5 * (0, 1)
    assert np.allclose(q, unit(np.array([[1.0, 0.5]])), atol=1e-6)


def test_whitening_decorrelates():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 8)) @ rng.normal(size=(8, 8))
    w = fit_pca_whitening(x, dim=4, whiten=True)
    y = (x - w.mean) @ w.projection.T
    assert np.allclose(np.cov(y.T), np.eye(4), atol=0.05)
    assert w.apply(x).shape == (2000, 4)


def test_sequential_pairs():
    assert sequential_pairs(["c", "a", "b"], 1) == [(1, 2), (2, 0)]


def test_fixture_ranks_turntable_neighbours_first(fixture_images, imagenet_model, tmp_path):
    """Consecutive photos of the turntable share the most surface: each query's best CNN match is a neighbour.
    (The CNN ranking alone, the fast mode: verification may put a photo two steps away first, which overlaps too.)"""
    opts = PairsOptions()
    opts.verify.method = "none"
    opts.retrieval.rerank = "none"
    pairs = generate_pairs(fixture_images, tmp_path / "pairs.txt", num_matched=11, options=opts, model=imagenet_model)
    names = sorted({a for a, _ in pairs})
    assert len(names) == 12 and len(pairs) == 12 * 11
    pos = {n: i for i, n in enumerate(names)}
    ranking: dict = {}
    for a, b in pairs:
        ranking.setdefault(a, []).append(b)
    assert all(abs(pos[ranking[n][0]] - pos[n]) == 1 for n in names)
    gt = {n: {names[j] for j in (pos[n] - 1, pos[n] + 1) if 0 <= j < 12} for n in names}
    assert mean_average_precision(ranking, gt, 2).map_mirror > 0.85  # random order gives ~0.2
    opts.retrieval.rerank = "prmac"
    pairs = generate_pairs(
        fixture_images,
        tmp_path / "pr.txt",
        num_matched=11,
        options=opts,
        model=imagenet_model,
        features=tmp_path / "pairs-global-feats.h5",
    )
    ranking = {}
    for a, b in read_pairs(tmp_path / "pr.txt"):
        ranking.setdefault(a, []).append(b)
    assert mean_average_precision(ranking, gt, 2).map_mirror > 0.8
