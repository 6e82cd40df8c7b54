"""Retrieval on synthetic descriptors (exact maths) and on the real-photo fixture."""

import tracemalloc

import faiss
import numpy as np
import pytest

from mirror_sfm.errors import MirrorError
from mirror_sfm.evaluate import mean_average_precision
from mirror_sfm.pairs import PairsOptions, generate_pairs, sequential_pairs
from mirror_sfm.pairs_io import read_pairs
from mirror_sfm.retrieval import (
    RetrievalOptions,
    add_chunked,
    alpha_query_expansion,
    build_index,
    faiss_gpu_available,
    index_spec,
    is_exact,
    ivf_nlist,
    make_compressed_index,
    retrieve,
    search,
    train_index,
)
from mirror_sfm.whitening import fit_pca_whitening


@pytest.fixture(autouse=True)
def faiss_one_thread():
    """Small indexes train fastest on one faiss thread (OpenMP threads on a busy machine wait on each other)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


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
    opts = RetrievalOptions(num_matched=5, rerank="none", exact_max=100, index="IVF{nlist},Flat", ivf_nprobe=256)
    ivf = retrieve(g, None, opts)
    assert (ivf.indices[:, 0] == exact.indices[:, 0]).mean() > 0.99


def clustered(n=2000, d=320, clusters=80, noise=0.6, seed=0):
    """Unit vectors in tight groups (like photos of one place among many places)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    return unit(centres[rng.integers(0, clusters, n)] + noise * rng.normal(size=(n, d))).astype(np.float32)


def test_compressed_index_above_exact_max_finds_the_exact_neighbours():
    g = clustered()
    small = build_index(g, RetrievalOptions(exact_max=len(g)))
    assert isinstance(small, faiss.IndexFlatIP)  # up to exact_max: exact search, unchanged
    opts = RetrievalOptions(num_matched=10, rerank="none", exact_max=500)
    big = build_index(g, opts)
    assert not is_exact(big) and big.ntotal == len(g)
    ivf = faiss.extract_index_ivf(big)
    assert ivf.nlist == ivf_nlist(len(g), opts) == 128 and ivf.nprobe == opts.ivf_nprobe
    exact = retrieve(g, None, RetrievalOptions(num_matched=10, rerank="none"))
    approx = retrieve(g, None, opts)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approx.indices, exact.indices)])
    assert recall > 0.9
    assert not np.any(approx.indices == np.arange(len(g))[:, None])  # self excluded
    assert np.all(np.diff(approx.scores, axis=1) <= 1e-6)
    # the exact re-scoring of the index's candidates is what lifts recall: PQ codes alone rank worse
    unrefined = retrieve(g, None, RetrievalOptions(num_matched=10, rerank="none", exact_max=500, refine=0))
    recall0 = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(unrefined.indices, exact.indices)])
    assert recall0 < recall


@pytest.mark.parametrize("exact_max", [10_000, 500])
def test_search_sends_queries_in_chunks_and_never_a_dense_matrix(monkeypatch, exact_max):
    g = clustered(n=2000, d=256)
    opts = RetrievalOptions(num_matched=10, rerank="none", exact_max=exact_max, chunk_size=128)
    index = build_index(g, opts)
    batches = []
    real_search = type(index).search

    def spy(self, x, k, *args, **kwargs):
        batches.append(len(x))
        return real_search(self, x, k, *args, **kwargs)

    monkeypatch.setattr(type(index), "search", spy)
    tracemalloc.start()
    nn = search(index, g, 10, np.arange(len(g)), opts.chunk_size, db=g, refine=opts.refine)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert batches and max(batches) <= 128 and sum(batches) == len(g)
    assert peak < len(g) * len(g) * 4 / 4  # an N x N float32 score matrix would take 16 MB
    monkeypatch.undo()
    whole = search(index, g, 10, np.arange(len(g)), len(g), db=g, refine=opts.refine)
    assert np.allclose(nn.scores, whole.scores, atol=1e-5)  # the same lists (float sums differ by batch)
    assert (nn.indices == whole.indices).mean() > 0.99


def test_default_index_stays_within_64_bytes_per_image_at_1m():
    """The default compressed index on 1280-d descriptors (the backbone's): bytes added per image (codes + id)
    plus the fixed part (projection, coarse centroids at 1M's nlist, codebooks) spread over 1M images <= 64."""
    d, n, nlist_1m = 1280, 4000, ivf_nlist(1_000_000, RetrievalOptions())
    g = clustered(n=n, d=d, clusters=200)
    opts = RetrievalOptions(ivf_nlist=16, exact_max=100)
    index = make_compressed_index(g, opts)
    train_index(index, g, opts)
    empty = len(faiss.serialize_index(index))
    add_chunked(index, g)
    per_image = (len(faiss.serialize_index(index)) - empty) / n
    d_out = index.chain.at(0).d_out
    fixed_1m = empty + (nlist_1m - 16) * d_out * 4  # the coarse centroids grow with nlist
    assert per_image < 57  # 48 B of PQ codes, an 8 B id (and a few bytes of list sizes over all images)
    assert per_image + fixed_1m / 1_000_000 <= 64
    assert empty < d * d * 4  # the projection is stored as its d_out x d matrix, not PCA's d x d eigenvectors


def test_index_pca_is_fitted_uncentred_so_inner_products_rank_alike():
    """faiss's PCA subtracts the mean; on all-positive (MAC) descriptors that re-ranks neighbours. Fitted on the
    sample and its negation, the projection keeps inner products: its offset is 0."""
    g = np.abs(clustered(n=3000, d=320))
    opts = RetrievalOptions(exact_max=100, ivf_nlist=16)
    index = make_compressed_index(g, opts)
    train_index(index, g, opts)
    pca = faiss.downcast_VectorTransform(index.chain.at(0))
    assert np.abs(faiss.vector_to_array(pca.b)).max() < 1e-5
    a = faiss.vector_to_array(pca.A).reshape(pca.d_out, pca.d_in)
    x = g[:200]
    kept = (x @ a.T) @ (x @ a.T).T
    assert np.corrcoef(kept.ravel(), (x @ x.T).ravel())[0, 1] > 0.99


def test_index_options_errors_and_gpu_spec():
    g = clustered(n=600, d=64)
    with pytest.raises(MirrorError, match="faiss cannot build index"):
        build_index(g, RetrievalOptions(exact_max=100, index="IVF{nlist},Nonsense"))
    with pytest.raises(MirrorError, match="cannot train"):
        build_index(g, RetrievalOptions(exact_max=100))  # PCA to 256-d from 64-d descriptors
    with pytest.raises(MirrorError, match="use_gpu"):
        build_index(g, RetrievalOptions(use_gpu="maybe"))
    if not faiss_gpu_available():
        with pytest.raises(MirrorError, match="no GPU"):
            build_index(g, RetrievalOptions(use_gpu="yes"))
    # faiss-gpu holds the default (8-bit PQ) as it is; 4-bit fast-scan PQ (CPU only) becomes 8-bit PQ of the
    # same code size there
    assert index_spec(1_000_000, RetrievalOptions(), gpu=True) == "PCAR240,IVF4096,PQ48np"
    spec = index_spec(1_000_000, RetrievalOptions(index="PCAR256,IVF{nlist},PQ64x4fs"), gpu=True)
    assert spec == "PCAR256,IVF4096,PQ32"
    index = faiss.index_factory(1280, spec, faiss.METRIC_INNER_PRODUCT)
    assert faiss.extract_index_ivf(index).code_size == 32


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


def test_gpu_path_moves_the_trained_index_or_falls_back_to_the_cpu(monkeypatch, mirror_log):
    """No GPU here: faiss-gpu's calls are stood in for, to check what build_index hands them and does after."""
    import mirror_sfm.retrieval as retrieval

    g = clustered(n=1500, d=320)
    moved = []

    def fake_cpu_to_gpu(resources, device, index, options):
        moved.append((device, index.is_trained, options.useFloat16))
        return index  # stands in for the GPU copy

    monkeypatch.setattr(retrieval, "faiss_gpu_available", lambda: True)
    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "GpuClonerOptions", lambda: type("Options", (), {})(), raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", fake_cpu_to_gpu, raising=False)
    index = build_index(g, RetrievalOptions(exact_max=500, ivf_nprobe=7))
    assert moved == [(0, True, True)]  # trained on the CPU, then moved; float16 look-up tables
    assert index.ntotal == len(g) and faiss.extract_index_ivf(index).nprobe == 7

    def refuse(*args):
        raise RuntimeError("Error in ...: not implemented on the GPU")

    monkeypatch.setattr(faiss, "index_cpu_to_gpu", refuse, raising=False)
    index = build_index(g, RetrievalOptions(exact_max=500))
    assert index.ntotal == len(g) and not is_exact(index)  # auto: stays on the CPU
    assert "searching on the CPU" in mirror_log.text
    with pytest.raises(MirrorError, match="faiss-gpu cannot hold"):
        build_index(g, RetrievalOptions(exact_max=500, use_gpu="yes"))
