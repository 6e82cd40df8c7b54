"""PR-MAC above exact_max: regional descriptors read from the h5 per query chunk (`RegionStore`) give the same
neighbours as holding them all in memory, and a chunk never reads more than its budget."""

import h5py
import numpy as np
import pytest

from mirror_sfm import regions, retrieval
from mirror_sfm.errors import MirrorError
from mirror_sfm.regions import RegionStore, read_for_retrieval
from mirror_sfm.retrieval import RetrievalOptions, choose_whitening, retrieve
from mirror_sfm.whitening import fit_pca_whitening


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture
def h5_file(tmp_path):
    """300 images of 9 regions of 32-d in groups (so shortlists share images), in hloc's h5 layout."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 9, 32))
    reg = unit(centres[rng.integers(0, 20, 300)] + 0.7 * rng.normal(size=(300, 9, 32))).astype(np.float16)
    glob = unit(reg.astype(np.float32).max(axis=1)).astype(np.float16)
    names = [f"img{i:04d}.jpg" for i in range(300)]
    path = tmp_path / "feats.h5"
    with h5py.File(path, "w") as f:
        for name, g, r in zip(names, glob, reg):
            f[f"{name}/global_descriptor"] = g
            f[f"{name}/regional_descriptors"] = r
    return path, names


def test_lazy_regions_above_exact_max_rerank_like_regions_in_memory(h5_file, monkeypatch):
    path, names = h5_file
    opts = RetrievalOptions(num_matched=10, shortlist=20)
    names_m, glob, in_memory = read_for_retrieval(path, None, "prmac", exact_max=10_000)
    assert isinstance(in_memory, np.ndarray) and names_m == names
    _, glob_l, store = read_for_retrieval(path, None, "prmac", exact_max=100)
    assert isinstance(store, RegionStore) and store.shape == in_memory.shape
    np.testing.assert_array_equal(glob, glob_l)
    reads = []
    real_read = RegionStore.read

    def spy(self, ids):
        rows = real_read(self, ids)
        reads.append(len(rows))
        return rows

    monkeypatch.setattr(RegionStore, "read", spy)
    budget = 21 * 9 * 32 * 2 * 5  # the regions of 5 queries' shortlists (20 candidates + the query)
    monkeypatch.setattr(retrieval.rerank_prmac, "__defaults__", (64, budget))
    for whitening, rmac in ((None, False), ("database", True)):
        o = RetrievalOptions(**{**opts.__dict__, "whitening": whitening or "none"})
        w_mem = choose_whitening(o, None, in_memory, glob)
        w_lazy = choose_whitening(o, None, store, glob)
        if w_mem is not None:  # 300 x 9 regions < the sample: fitted on the same vectors
            np.testing.assert_allclose(w_mem.projection, w_lazy.projection, rtol=1e-4, atol=1e-5)
        reads.clear()
        a = retrieve(glob, in_memory, o, whitening=w_mem, rmac_global=rmac)
        b = retrieve(glob, store, o, whitening=w_lazy, rmac_global=rmac)
        assert (a.indices == b.indices).mean() > 0.995, whitening  # float sums of another order may swap a tie
        np.testing.assert_allclose(a.scores, b.scores, atol=2e-3)
        assert max(reads[-60:]) <= 5 * 21 < 300  # the re-ranking: 60 chunks of 5 queries, never all 300 images
        assert len(reads) == 60 + (1 if whitening else 0) + (1 if rmac else 0)  # + the transform's probe, R-MAC
    store.close()


def test_pairs_tiny_exact_max_reads_regions_from_the_h5(h5_file, tmp_path, mirror_log):
    import logging

    from mirror_sfm.pairs_from_retrieval import main

    path, names = h5_file
    mirror_log.set_level(logging.INFO, logger="mirror_sfm")
    exact = main(path, tmp_path / "exact.txt", 5)
    opts = RetrievalOptions(exact_max=100, index="IVF{nlist},Flat", ivf_nlist=8, ivf_nprobe=8)
    from mirror_sfm.pairs import PairsOptions

    lazy = main(path, tmp_path / "lazy.txt", 5, options=PairsOptions(retrieval=opts))
    assert "PR-MAC reads the regional descriptors" in mirror_log.text and "per query chunk" in mirror_log.text
    assert np.mean([p == q for p, q in zip(exact, lazy)]) > 0.99


def test_store_without_regions_is_one_line(tmp_path):
    path = tmp_path / "g.h5"
    with h5py.File(path, "w") as f:
        f["a.jpg/global_descriptor"] = np.ones(4, np.float16)
    with pytest.raises(MirrorError, match="no regional descriptors for a.jpg"):
        RegionStore(path, ["a.jpg"])
    assert regions.REGIONAL == "regional_descriptors"


def test_sampled_whitening_is_bounded(h5_file):
    path, names = h5_file
    with RegionStore(path, names) as store:
        sample = store.sample_vectors(900)
        assert sample.shape == (900, 32)  # 100 images x 9 regions, not 300 x 9
        w = fit_pca_whitening(sample, 16)
        assert store.with_transform(w.apply)[[0, 5]].shape == (2, 9, 16)
