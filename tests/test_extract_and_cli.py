"""Extraction cache behaviour, weights loading and every bad-input case of `mirror_sfm pairs`."""

import os
import shutil

import faiss
import h5py
import numpy as np
import pytest

from mirror_sfm.cli import main
from mirror_sfm.errors import MirrorError
from mirror_sfm.extract import ExtractionOptions, extract
from mirror_sfm.features_io import list_h5_names, partial_path, read_descriptors
from mirror_sfm.model import load_model


@pytest.fixture()
def few_images(fixture_images, tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    for name in sorted(os.listdir(fixture_images))[:4]:
        shutil.copy(fixture_images / name, d / name)
    return d


def test_extract_writes_hloc_layout_and_resumes(few_images, imagenet_model, tmp_path):
    out = tmp_path / "feats.h5"
    r1 = extract(few_images, out, model=imagenet_model)
    assert (r1.num_extracted, r1.num_cached) == (4, 0)
    with h5py.File(out) as f:
        g = f["IMG_9669.jpg"]
        assert g["global_descriptor"].dtype == np.float16 and g["global_descriptor"].shape == (1280,)
        assert g["regional_descriptors"].shape == (35, 1280)
        assert g["image_size"][()].tolist() == [512, 512]
    assert not partial_path(out).exists()
    r2 = extract(few_images, out, model=imagenet_model)
    assert (r2.num_extracted, r2.num_cached) == (0, 4)
    os.utime(few_images / "IMG_9670.jpg", ns=(1, 1))  # a changed file is described again
    r3 = extract(few_images, out, model=imagenet_model)
    assert (r3.num_extracted, r3.num_cached) == (1, 3)
    r4 = extract(few_images, out, ExtractionOptions(resize=256), model=imagenet_model)  # other settings
    assert r4.num_extracted == 4


def test_interrupted_run_resumes_from_partial(few_images, imagenet_model, tmp_path):
    out = tmp_path / "feats.h5"
    extract(few_images, out, image_names=["IMG_9669.jpg", "IMG_9670.jpg"], model=imagenet_model)
    os.replace(out, partial_path(out))  # as if killed before the final rename
    r = extract(few_images, out, model=imagenet_model)
    assert (r.num_extracted, r.num_cached) == (2, 2)
    assert list_h5_names(out) == sorted(os.listdir(few_images))


def test_unreadable_images_are_skipped_once_and_counted(few_images, tmp_path, capfd):
    (few_images / "empty.jpg").write_bytes(b"")
    (few_images / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    out = tmp_path / "pairs.txt"
    assert (
        main(["pairs", str(few_images), "-o", str(out), "-k", "2", "--weights", "imagenet", "--num-workers", "0"]) == 0
    )
    err = capfd.readouterr().err
    assert err.count("empty.jpg") == 1 and err.count("broken.jpg") == 1, err
    assert "2 unreadable images skipped" in err
    text = out.read_text()
    assert "empty.jpg" not in text and "broken.jpg" not in text and len(text.splitlines()) == 8


def cli_error(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    return err[-1]


def test_bad_inputs_give_one_clear_line_and_keep_old_output(few_images, tmp_path, capsys):
    out = tmp_path / "pairs.txt"
    out.write_text("previous run\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no images found in" in cli_error(["pairs", str(empty), "-o", str(out)], capsys)
    line = cli_error(["pairs", str(few_images), "-o", str(out), "--weights", str(tmp_path / "missing.pt")], capsys)
    assert "model weights not found" in line and "missing.pt" in line
    (few_images / "with space.jpg").write_bytes((few_images / "IMG_9669.jpg").read_bytes())
    line = cli_error(["pairs", str(few_images), "-o", str(out), "--weights", "imagenet"], capsys)
    assert "with space.jpg" in line
    assert out.read_text() == "previous run\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "images", "pairs.txt"]


def test_not_a_weights_file(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"junk")
    with pytest.raises(MirrorError, match="w.pt"):
        load_model(tmp_path / "w.pt")


def test_weights_round_trip_fp16_with_whitening(few_images, imagenet_model, tmp_path, capsys):
    feats = tmp_path / "feats.h5"
    extract(few_images, feats, model=imagenet_model)
    weights = tmp_path / "w.pt"
    assert main(["whiten", "--features", str(feats), "--weights", "imagenet", "--dim", "16", "-o", str(weights)]) == 0
    model = load_model(weights)
    assert model.whitening is not None and model.whitening.dim == 16
    assert weights.stat().st_size < 8_000_000  # fp16: a few MB
    _, g1, _ = read_descriptors(feats)
    r = extract(few_images, tmp_path / "f2.h5", model=model)
    _, g2, _ = read_descriptors(r.path)
    assert np.abs(g1 - g2).max() < 0.02  # fp16 weights describe like the fp32 ones


def test_config_file_sets_defaults_and_flags_win(few_images, tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("num-matched: 1\nweights: imagenet\nrerank: none\n")
    out = tmp_path / "p.txt"
    assert main(["pairs", str(few_images), "-o", str(out), "--config", str(conf), "--num-workers", "0"]) == 0
    assert len(out.read_text().splitlines()) == 4
    assert main(["pairs", str(few_images), "-o", str(out), "--config", str(conf), "-k", "2", "--num-workers", "0"]) == 0
    assert len(out.read_text().splitlines()) == 8
    conf.write_text("nonsense: 1\n")
    assert main(["pairs", str(few_images), "-o", str(out), "--config", str(conf)]) == 2


def test_tiny_exact_max_takes_the_compressed_index_given_on_the_command_line(fixture_images, tmp_path, monkeypatch):
    """--exact-max below the 12 photos: the --index factory string is built, trained and searched (every list probed,
    every candidate re-scored exactly: the same pairs as exact search)."""
    from mirror_sfm import retrieval

    built = []
    real = retrieval.make_compressed_index

    def spy(db, options, gpu=False):
        index = real(db, options, gpu)
        built.append((len(db), retrieval.index_spec(len(db), options), faiss.extract_index_ivf(index).nprobe))
        return index

    monkeypatch.setattr(retrieval, "make_compressed_index", spy)
    common = ["pairs", str(fixture_images), "--weights", "imagenet", "--num-workers", "0", "-k", "3"]
    common += ["--verify", "none", "--rerank", "none", "--features", str(tmp_path / "feats.h5")]
    exact, compressed = tmp_path / "exact.txt", tmp_path / "compressed.txt"
    assert main([*common, "-o", str(exact)]) == 0
    assert not built  # 12 images <= the default --exact-max: exact search
    index_flags = ["--exact-max", "4", "--index", "PCAR64,IVF{nlist},SQ8", "--index-nlist", "2", "--index-nprobe", "2"]
    assert main([*common, "-o", str(compressed), *index_flags]) == 0
    assert built == [(12, "PCAR64,IVF2,SQ8", 2)]
    assert compressed.read_text() == exact.read_text() and len(exact.read_text().splitlines()) == 36
    # PR-MAC re-ranking above --exact-max: the regional descriptors are read from the h5 per query chunk
    prmac = [*common[: common.index("--rerank")], *common[common.index("--rerank") + 2 :]]
    assert main([*prmac, "-o", str(exact)]) == 0
    assert main([*prmac, "-o", str(compressed), *index_flags]) == 0
    assert compressed.read_text() == exact.read_text() and len(built) == 2
