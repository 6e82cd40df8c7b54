"""--whitening auto (the default): a weights file's whitening is applied by `pairs` / `evaluate` without a flag,
only to descriptors made by those weights; the ImageNet default is unchanged."""

import os
import shutil

import numpy as np
import pytest

from mirror_sfm import pairs_from_retrieval
from mirror_sfm.cli import main
from mirror_sfm.errors import MirrorError
from mirror_sfm.extract import ExtractionOptions, extract, made_by
from mirror_sfm.model import load_model, save_weights
from mirror_sfm.pairs import PairsOptions, generate_pairs
from mirror_sfm.pairs_io import read_pairs
from mirror_sfm.retrieval import RetrievalOptions
from mirror_sfm.verify import VerifyOptions
from mirror_sfm.whitening import Whitening


@pytest.fixture(scope="module")
def images(fixture_images, tmp_path_factory):
    d = tmp_path_factory.mktemp("wd") / "images"
    d.mkdir()
    for name in sorted(os.listdir(fixture_images))[:6]:
        shutil.copy(fixture_images / name, d / name)
    return d


@pytest.fixture(scope="module")
def whitened_weights(tmp_path_factory):
    """ImageNet weights saved with a random 16-d whitening: it re-orders any ranking."""
    rng = np.random.default_rng(0)
    model = load_model("imagenet")
    mean, projection = rng.normal(size=1280), rng.normal(size=(16, 1280))
    model.whitening = Whitening(mean.astype(np.float32), projection.astype(np.float32))
    path = tmp_path_factory.mktemp("wd") / "whitened.pt"
    save_weights(model, path)
    return path


def fast(weights: str, whitening: str | None = None) -> PairsOptions:
    retrieval = RetrievalOptions(num_matched=5) if whitening is None else RetrievalOptions(5, whitening=whitening)
    return PairsOptions(
        extraction=ExtractionOptions(weights=str(weights)), retrieval=retrieval, verify=VerifyOptions(method="none")
    )


def scored(images, tmp_path, name, options, features):
    return generate_pairs(images, tmp_path / f"{name}.txt", features=features, options=options)


def test_default_whitening_is_auto():
    assert RetrievalOptions().whitening == "auto"


def test_weights_with_whitening_change_the_ranking_by_default(images, whitened_weights, tmp_path, mirror_log):
    feats = tmp_path / "w.h5"
    default = scored(images, tmp_path, "default", fast(whitened_weights), feats)
    assert any("applying the weights' own 16-d whitening" in r.getMessage() for r in mirror_log.records)
    model = scored(images, tmp_path, "model", fast(whitened_weights, "model"), feats)
    none = scored(images, tmp_path, "none", fast(whitened_weights, "none"), feats)
    assert default == model
    assert default != none  # the whitening re-ordered the neighbours
    # the CLI: no flag = the file's whitening, --whitening none = unwhitened
    for flags, expected in (([], default), (["--whitening", "none"], none)):
        out = tmp_path / "cli.txt"
        argv = ["pairs", str(images), "-o", str(out), "--weights", str(whitened_weights), "--verify", "none"]
        assert main([*argv, "-k", "5", "--features", str(feats), *flags]) == 0
        assert read_pairs(out) == expected


def test_imagenet_default_is_unchanged(images, tmp_path):
    feats = tmp_path / "i.h5"
    assert scored(images, tmp_path, "a", fast("imagenet"), feats) == scored(
        images, tmp_path, "b", fast("imagenet", "none"), feats
    )
    assert scored(images, tmp_path, "c", fast("default"), feats) == scored(
        images, tmp_path, "b", fast("imagenet", "none"), feats
    )


def test_descriptor_file_of_other_weights_is_not_whitened(images, whitened_weights, tmp_path, mirror_log):
    """pairs_from_retrieval (an h5 given, no images read): auto whitens only vectors the file proves are the
    weights' own; --whitening model refuses the others."""
    imagenet_h5, own_h5 = tmp_path / "imagenet.h5", tmp_path / "own.h5"
    extract(images, imagenet_h5, ExtractionOptions(weights="imagenet"))
    extract(images, own_h5, ExtractionOptions(weights=str(whitened_weights)))
    model = load_model(whitened_weights)
    assert made_by(own_h5, model) and not made_by(imagenet_h5, model)

    def ranked(h5, whitening=None):
        return pairs_from_retrieval.main(h5, tmp_path / "p.txt", options=fast(whitened_weights, whitening))

    assert ranked(imagenet_h5) == ranked(imagenet_h5, "none")
    assert any("described by other weights" in r.getMessage() for r in mirror_log.records)
    with pytest.raises(MirrorError, match="was not described by the weights"):
        ranked(imagenet_h5, "model")
    assert ranked(own_h5) == ranked(own_h5, "model") != ranked(own_h5, "none")
