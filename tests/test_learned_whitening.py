"""Learned whitening (Radenović et al.): its maths on synthetic pairs, fitting it from labelled scenes, the CLI."""

import numpy as np
import pytest
from labelled_scenes import make_scene

from mirror_sfm.cli import main
from mirror_sfm.errors import MirrorError
from mirror_sfm.learned_whitening import LearnedWhiteningOptions, load_label_folders, mutual_region_pairs
from mirror_sfm.model import load_model
from mirror_sfm.whitening import fit_learned_whitening, fit_pca_whitening

D, K, NOISE_AXIS = 16, 200, 3


def pair_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """K points seen twice; the two views differ mostly along one axis (large noise), a little elsewhere.
    Returns the 2K vectors, the K matching pairs (i, K + i) and the noise direction."""
    rng = np.random.default_rng(seed)
    u = np.zeros(D)
    u[NOISE_AXIS] = 1.0
    centres = rng.normal(size=(K, D))

    def view():
        return centres + 3.0 * rng.normal(size=(K, 1)) * u + 0.1 * rng.normal(size=(K, D))

    x = np.concatenate([view(), view()])
    return x, np.stack([np.arange(K), K + np.arange(K)], axis=1), u


def gains(projection: np.ndarray, u: np.ndarray) -> tuple[float, float]:
    """How much the map keeps of the noise direction, and (median) of each other axis."""
    others = np.eye(D)[[i for i in range(D) if i != NOISE_AXIS]]
    return float(np.linalg.norm(projection @ u)), float(np.median(np.linalg.norm(projection @ others.T, axis=0)))


def pair_recall(y: np.ndarray) -> float:
    """Share of first views whose nearest second view (cosine) is their own pair."""
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    return float(np.mean(np.argmax(y[:K] @ y[K:].T, axis=1) == np.arange(K)))


@pytest.mark.parametrize("pre_dim", [None, 12])
def test_learned_whitening_suppresses_the_direction_matching_pairs_differ_along(pre_dim):
    x, pairs, u = pair_data()
    w = fit_learned_whitening(x, pairs, dim=8, pre_dim=pre_dim, shrinkage=0.0)
    noise, other = gains(w.projection, u)
    assert noise < 0.05 * other  # S^-1/2 scales the pairs' difference axis down
    pca = fit_pca_whitening(x, dim=8)  # unsupervised: that axis has the most variance and is kept
    pca_noise, pca_other = gains(pca.projection, u)
    assert pca_noise > 0.2 * pca_other
    assert pair_recall(w.apply(x)) > 0.98
    assert pair_recall(x) < 0.8 and pair_recall(pca.apply(x)) < 0.9


def reference_learned_whitening(x: np.ndarray, pairs: np.ndarray, dim: int) -> np.ndarray:
    """The method written out another way (S^-1/2 by eigendecomposition instead of a Cholesky inverse: the two
    differ by a rotation that the PCA step absorbs); returns the whitened, L2-normalised vectors."""
    m = x[pairs[:, 0]].mean(axis=0)
    diff = x[pairs[:, 0]] - x[pairs[:, 1]]
    val, vec = np.linalg.eigh(diff.T @ diff / len(diff))
    inv_sqrt = vec @ np.diag(val**-0.5) @ vec.T
    y = (x - m) @ inv_sqrt
    val2, vec2 = np.linalg.eigh(y.T @ y)
    z = y @ vec2[:, np.argsort(val2)[::-1][:dim]]
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def same_up_to_axis_signs(a: np.ndarray, b: np.ndarray) -> bool:
    signs = np.sign(np.sum(a * b, axis=0))
    return bool(np.allclose(a, b * signs, atol=1e-4))


def test_learned_whitening_matches_the_method_written_out():
    x, pairs, _ = pair_data(seed=1)
    pairs = pairs[x[pairs[:, 0], 0] > 0.5]  # pairs of a corner of the data: their mean is far from x's mean
    w = fit_learned_whitening(x, pairs, dim=6, pre_dim=None, shrinkage=0.0)
    assert same_up_to_axis_signs(w.apply(x), reference_learned_whitening(x, pairs, 6))
    # PCA to 10 dims first: one affine map of the input, the same as the method run on the reduced vectors
    w = fit_learned_whitening(x, pairs, dim=6, pre_dim=10, shrinkage=0.0)
    val, vec = np.linalg.eigh(np.cov(x.T))
    reduced = (x - x.mean(axis=0)) @ vec[:, np.argsort(val)[::-1][:10]]
    assert w.projection.shape == (6, D) and w.mean.shape == (D,)
    assert same_up_to_axis_signs(w.apply(x), reference_learned_whitening(reduced, pairs, 6))


def test_singular_pair_covariance_is_regularised_and_bad_pairs_refused():
    x, pairs, _ = pair_data()
    w = fit_learned_whitening(x, pairs[:3], dim=4, shrinkage=0.0)  # 3 differences span 3 of 16 dims
    assert np.isfinite(w.projection).all() and w.dim == 4
    with pytest.raises(ValueError, match="out of range"):
        fit_learned_whitening(x, np.array([[0, len(x)]]))
    with pytest.raises(ValueError, match="at least one matching pair"):
        fit_learned_whitening(x, np.zeros((0, 2), np.int64))


def test_mutual_region_pairs_keeps_only_mutual_nearest_regions():
    eye = np.eye(4, dtype=np.float32)
    a = eye[[0, 1, 2]]
    b = eye[[2, 0, 3]]  # a0 <-> b1 and a2 <-> b0 are mutual; a1's best (b0, all ties) prefers a2
    regional = np.stack([a, b])
    got = mutual_region_pairs(regional, np.array([[0, 1]]))
    assert sorted(map(tuple, got.tolist())) == [(0, 3 + 1), (2, 3 + 0)]


def test_whiten_from_labels_writes_weights_that_load_model_serves(tmp_path, capsys):
    scenes = [make_scene(tmp_path / "labels" / name, seed, num_views=6) for seed, name in enumerate("ab")]
    out = tmp_path / "w.pt"
    work = tmp_path / "descriptors"
    args = ["whiten", "--labels", *map(str, scenes), "--weights", "imagenet", "--dim", "16", "--pre-dim", "32"]
    assert main([*args, "--work", str(work), "-o", str(out)]) == 0
    assert "learned whitening to 16-d" in capsys.readouterr().out
    model = load_model(out)
    assert model.whitening is not None and model.whitening.dim == 16 and model.whitening.mean.shape == (1280,)
    info = model.meta["whitening"]
    assert info["scenes"] == ["a", "b"] and info["vectors"] == "regional" and info["pairs"] > 0
    assert sorted(p.name for p in work.iterdir()) == ["a-global-feats.h5", "b-global-feats.h5"]
    # global descriptors and CO positives; the descriptors are reused from the work folder
    out2 = tmp_path / "w2.pt"
    assert main([*args, "--fit-on", "global", "--positives", "co:0.5", "--pre-dim", "8", "--dim", "4",
                 "--work", str(work), "-o", str(out2)]) == 0  # fmt: skip
    info2 = load_model(out2).meta["whitening"]
    assert info2["vectors"] == "global" and info2["positives"] == "co:0.5" and info2["fitting_vectors"] == 12


def test_bad_labels_folder_is_one_line_and_nothing_is_written(tmp_path, capsys):
    bad = tmp_path / "not_a_scene"
    bad.mkdir()
    out = tmp_path / "w.pt"
    out.write_bytes(b"previous")
    code = main(["whiten", "--labels", str(bad), "--weights", "imagenet", "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert "not a labelled scene folder" in err[0] and "not_a_scene" in err[0]
    assert out.read_bytes() == b"previous"
    assert not (tmp_path / "w-descriptors").exists()
    with pytest.raises(MirrorError, match="no labelled scene"):
        load_label_folders([])
    with pytest.raises(MirrorError, match="fit on each|global or regional"):
        LearnedWhiteningOptions(vectors="patches").validate()
