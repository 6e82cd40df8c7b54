"""hloc interop: a descriptor file mirror_sfm did not write is ranked from and never overwritten; mirror_sfm's
network as an hloc extractor; generate_pairs' rule for K."""

import hashlib
import logging
import os
import shutil

import h5py
import numpy as np
import pytest
import torch

from mirror_sfm.cli import main
from mirror_sfm.errors import MirrorError
from mirror_sfm.extract import extract
from mirror_sfm.features_io import is_foreign, read_descriptors
from mirror_sfm.images import decode_image
from mirror_sfm.pairs import PairsOptions, generate_pairs
from mirror_sfm.pairs_io import read_pairs
from mirror_sfm.retrieval import RetrievalOptions
from mirror_sfm.verify import VerifyOptions

FAST = PairsOptions(verify=VerifyOptions(method="none"))


@pytest.fixture()
def images(fixture_images, tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    for name in sorted(os.listdir(fixture_images))[:6]:
        shutil.copy(fixture_images / name, d / name)
    return d


def hloc_file(path, names, dim=64, regional=False, skip=()):
    """An hloc global-feats file: a group per image with `global_descriptor` (not normalised), no mirror_sfm
    attributes. Image i's descriptor is closest to those of images i-1 and i+1."""
    with h5py.File(path, "w") as f:
        for i, name in enumerate(names):
            if name in skip:
                continue
            vec = np.zeros(dim, np.float32)
            vec[i] = 3.0
            vec[(i + 1) % dim] = vec[(i - 1) % dim] = 1.0
            grp = f.create_group(name)
            grp.create_dataset("global_descriptor", data=vec.astype(np.float16))
            grp.create_dataset("image_size", data=np.array([512, 512]))
            if regional:
                grp.create_dataset(
                    "regional_descriptors", data=np.tile(vec / np.linalg.norm(vec), (3, 1)).astype(np.float16)
                )
    return path


def digest(path):
    return hashlib.sha1(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def test_hloc_file_is_ranked_from_and_never_overwritten(images, tmp_path, mirror_log):
    names = sorted(os.listdir(images))
    feats = hloc_file(tmp_path / "global-feats-netvlad.h5", names, dim=64)
    before = digest(feats)
    assert is_foreign(feats)
    mirror_log.set_level(logging.INFO)
    pairs = generate_pairs(images, tmp_path / "pairs.txt", num_matched=2, features=feats, options=FAST)
    assert digest(feats) == before
    assert pairs == read_pairs(tmp_path / "pairs.txt")
    ranked = {}
    for a, b in pairs:
        ranked.setdefault(a, set()).add(b)
    for i, name in enumerate(names):  # the two neighbours in name order (one at the ends, plus the next best)
        assert {names[j] for j in (i - 1, i + 1) if 0 <= j < len(names)} <= ranked[name]
    lines = [r.getMessage() for r in mirror_log.records if "not written by mirror_sfm" in r.getMessage()]
    assert len(lines) == 1 and "64-d" in lines[0] and "without PR-MAC" in lines[0]
    assert not (tmp_path / "global-feats-netvlad.h5.partial").exists()


def test_hloc_file_with_regional_vectors_gets_prmac(images, tmp_path, mirror_log):
    names = sorted(os.listdir(images))
    feats = hloc_file(tmp_path / "feats.h5", names, dim=32, regional=True)
    before = digest(feats)
    mirror_log.set_level(logging.INFO)
    assert (
        main(
            [
                "pairs",
                str(images),
                "-o",
                str(tmp_path / "p.txt"),
                "-k",
                "2",
                "--verify",
                "none",
                "--features",
                str(feats),
            ]
        )
        == 0
    )
    assert digest(feats) == before and len(read_pairs(tmp_path / "p.txt")) == 2 * len(names)
    assert any("regional ones (PR-MAC)" in r.getMessage() for r in mirror_log.records)


def test_hloc_file_missing_an_image_is_refused_untouched(images, tmp_path, capsys):
    names = sorted(os.listdir(images))
    feats = hloc_file(tmp_path / "feats.h5", names, skip={names[2]})
    before = digest(feats)
    with pytest.raises(MirrorError, match=f"{feats}.*not written by mirror_sfm.*{names[2]} \\(1 of 6 missing\\)"):
        generate_pairs(images, tmp_path / "pairs.txt", features=feats, options=FAST)
    assert main(["pairs", str(images), "-o", str(tmp_path / "p.txt"), "--features", str(feats)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(feats) in err[0]
    assert main(["extract", str(images), "-o", str(feats), "--weights", "imagenet"]) == 2  # extract refuses too
    assert "is not overwritten" in capsys.readouterr().err
    assert digest(feats) == before
    assert not (tmp_path / "pairs.txt").exists() and not (tmp_path / "p.txt").exists()


def test_hloc_file_and_model_whitening_is_refused(images, tmp_path):
    feats = hloc_file(tmp_path / "feats.h5", sorted(os.listdir(images)))
    options = PairsOptions(retrieval=RetrievalOptions(whitening="model"), verify=VerifyOptions(method="none"))
    with pytest.raises(MirrorError, match="--whitening model"):
        generate_pairs(images, tmp_path / "pairs.txt", features=feats, options=options)


def test_num_matched_rule(images, tmp_path, mirror_log):
    """K is `num_matched` when given, else the options'; replacing a non-default K of the options is a warning."""
    feats = hloc_file(tmp_path / "feats.h5", sorted(os.listdir(images)))
    opts = PairsOptions(retrieval=RetrievalOptions(num_matched=3), verify=VerifyOptions(method="none"))
    assert len(generate_pairs(images, tmp_path / "a.txt", features=feats, options=opts)) == 6 * 3
    assert not [r for r in mirror_log.records if r.levelno >= logging.WARNING]
    assert len(generate_pairs(images, tmp_path / "b.txt", num_matched=3, features=feats, options=opts)) == 6 * 3
    assert not [r for r in mirror_log.records if r.levelno >= logging.WARNING]
    assert len(generate_pairs(images, tmp_path / "c.txt", num_matched=1, features=feats, options=opts)) == 6
    warnings = [r.getMessage() for r in mirror_log.records if r.levelno >= logging.WARNING]
    assert warnings == ["num_matched=1 given: it replaces options.retrieval.num_matched=3"]
    assert len(generate_pairs(images, tmp_path / "d.txt", num_matched=2, features=feats, options=FAST)) == 6 * 2
    assert len([r for r in mirror_log.records if r.levelno >= logging.WARNING]) == 1  # default K: no warning
    with pytest.raises(MirrorError, match="must be >= 1"):
        generate_pairs(images, tmp_path / "e.txt", num_matched=0, features=feats, options=FAST)


def test_hloc_extractor_matches_mirror_sfm_extract(images, tmp_path, imagenet_model):
    from mirror_sfm.hloc_extractor import HLOC_CONF, MirrorSfM

    name = sorted(os.listdir(images))[0]
    result = extract(images, tmp_path / "f.h5", model=imagenet_model, image_names=[name])
    _, glob, regional = read_descriptors(result.path, [name], regional=True)
    model = MirrorSfM({"weights": "imagenet"}).eval()
    assert model.conf["pooling"] == "model" and model.net.pooling == "mac" and model.required_inputs == ["image"]
    rgb, _ = decode_image(images / name, 384)  # as mirror_sfm (and hloc's resize_max=384) resizes
    image = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div(255)[None]
    with torch.no_grad():
        out = model({"image": image})
    assert out["global_descriptor"].shape == (1, 1280) and out["regional_descriptors"].shape == (1, 35, 1280)
    assert float(out["global_descriptor"][0].numpy() @ glob[0]) > 0.999
    assert np.abs(out["regional_descriptors"][0].numpy() - regional[0].astype(np.float32)).max() < 0.01
    full, _ = decode_image(images / name, 0)  # resized inside the model instead
    model.conf["resize"] = 384
    with torch.no_grad():
        g = model({"image": torch.from_numpy(full.copy()).permute(2, 0, 1).float().div(255)[None]})
    assert float(g["global_descriptor"][0].numpy() @ glob[0]) > 0.95
    with pytest.raises((KeyError, AssertionError)):
        model({"img": image})
    assert HLOC_CONF["model"]["name"] == "mirror_sfm" and HLOC_CONF["preprocessing"]["resize_max"] == 384
