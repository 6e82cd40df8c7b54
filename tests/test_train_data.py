"""Training batches: shapes, one scene per column, real/synthetic mix, masks cropped with their images."""

import numpy as np
import pytest
import torch
from labelled_scenes import make_scenes
from PIL import Image

from mirror_sfm.errors import MirrorError
from mirror_sfm.train.augment import AugmentOptions, Crop, crop_mask, load_cropped, sample_crop
from mirror_sfm.train.data import DataOptions, TripletBatches, load_scene, load_scenes, split_scenes

SIZE = 64


@pytest.fixture(scope="module")
def scene_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    make_scenes(root, ["real_a", "real_b", "synth_a", "synth_b", "synth_c"])
    return root


def batches(root, names, columns=3, real_fraction=0.5, **aug):
    scenes = load_scenes([root / n for n in names])
    return TripletBatches(
        scenes, DataOptions(columns=columns, real_fraction=real_fraction), AugmentOptions(size=SIZE, **aug), seed=7
    )


def test_scene_labels_are_read(scene_root):
    s = load_scene(scene_root / "synth_a")
    assert s.synthetic and len(s.names) == 12 and s.anchors
    assert all(a.strong and a.weak for a in s.anchors)
    a = s.anchors[0]
    mine, other = s.pair_masks(a.index, a.strong[0])
    assert mine.shape == (24, 32) and mine.any() and other.any()
    assert not load_scene(scene_root / "real_a").synthetic


def test_batch_shapes_and_distinct_scenes(scene_root):
    ds = batches(scene_root, ["real_a", "real_b", "synth_a", "synth_b", "synth_c"], columns=4)
    for step in range(5):
        b = ds[step]
        assert b["images"].shape == (3, 4, 3, SIZE, SIZE) and b["images"].dtype == torch.float32
        assert 0.0 <= b["images"].min() and b["images"].max() <= 1.0
        assert b["masks"].shape == (4, 4, SIZE, SIZE) and b["masks"].dtype == torch.bool
        assert b["mask_valid"].all() and b["indices"].shape == (3, 4)
        assert len(set(b["scenes"])) == 4  # every column from another scene
        # anchors differ from their positives
        assert (b["indices"][0] != b["indices"][1]).all() and (b["indices"][0] != b["indices"][2]).all()


def test_batches_are_a_function_of_seed_and_step(scene_root):
    ds = batches(scene_root, ["real_a", "synth_a", "synth_b"])
    a, b, c = ds[3], ds[3], ds[4]
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["masks"], b["masks"])
    assert not torch.equal(a["images"], c["images"])


def test_real_fraction_mixes_scene_kinds(scene_root):
    names = ["real_a", "real_b", "synth_a", "synth_b", "synth_c"]
    all_real = batches(scene_root, names, columns=2, real_fraction=1.0)
    all_synth = batches(scene_root, names, columns=2, real_fraction=0.0)
    for step in range(4):
        assert all(not s.startswith("synth_") for s in all_real[step]["scenes"])
        assert all(s.startswith("synth_") for s in all_synth[step]["scenes"])
    # 3 columns, only 2 real scenes: a synthetic one fills in
    assert sum(s.startswith("synth_") for s in batches(scene_root, names, real_fraction=1.0)[0]["scenes"]) == 1


def test_too_few_scenes_is_a_clear_error(scene_root):
    with pytest.raises(MirrorError, match="3 columns needs 3 distinct training scenes"):
        batches(scene_root, ["real_a", "synth_a"])


def test_masks_move_with_their_image(tmp_path):
    """An image painted from its own mask grid: every crop + flip keeps pixels and mask cells aligned."""
    rng = np.random.default_rng(0)
    grid = rng.random((12, 16)) > 0.5
    pixels = np.kron(grid, np.ones((20, 20), bool))  # 240 x 320 image
    Image.fromarray(np.repeat(pixels[..., None] * 255, 3, axis=2).astype(np.uint8)).save(tmp_path / "m.png")
    opts = AugmentOptions(size=96, scale=(0.2, 1.0))
    flips = 0
    for _ in range(20):
        crop = sample_crop(rng, 320, 240, opts)
        flips += crop.flip
        img = load_cropped(tmp_path / "m.png", crop, 96)[0] > 0.5
        mask = crop_mask(grid, crop, 96)
        assert (img == mask).float().mean() > 0.97
    assert 0 < flips < 20
    # a flipped crop is the mirror image of the unflipped one
    box = (0.1, 0.2, 0.7, 0.9)
    assert torch.equal(crop_mask(grid, Crop(box, True), 50), crop_mask(grid, Crop(box, False), 50).flip(-1))


def test_dataset_masks_follow_the_crop(scene_root):
    """Whole-image 'crops': the batch's masks are the labelled masks resampled (and flipped with the image)."""
    ds = batches(scene_root, ["real_a", "synth_a", "synth_b"], enabled=False)
    b = ds[0]
    for col, name in enumerate(b["scenes"]):
        scene = next(s for s in ds.scenes if s.name == name)
        i, j = int(b["indices"][0, col]), int(b["indices"][1, col])
        anchor = next(a for a in scene.anchors if a.index == i)
        pos = next(p for p in anchor.strong if p.j == j)
        mine, other = scene.pair_masks(i, pos)
        assert torch.equal(b["masks"][col, 0], crop_mask(mine, Crop((0, 0, 1, 1)), SIZE))
        assert torch.equal(b["masks"][col, 1], crop_mask(other, Crop((0, 0, 1, 1)), SIZE))


def test_split_scenes(tmp_path, scene_root):
    splits = tmp_path / "splits.yaml"
    splits.write_text("validation: [real_a, not_yet]\ntrain: [real_b, 'synth_*']\n")
    assert [p.name for p in split_scenes(scene_root, splits, "train")] == ["real_b", "synth_a", "synth_b", "synth_c"]
    assert [p.name for p in split_scenes(scene_root, splits, "validation")] == ["real_a"]
    splits.write_text("validation: [real_a]\ntrain: ['real_*']\n")
    with pytest.raises(MirrorError, match="both"):
        split_scenes(scene_root, splits, "train")
    splits.write_text("validation: [real_a]\ntrain: [real_b]\ngroups: [[real_a, real_b]]\n")
    with pytest.raises(MirrorError, match="same photos"):
        split_scenes(scene_root, splits, "train")
    with pytest.raises(MirrorError, match="no split"):
        split_scenes(scene_root, splits, "test")


def test_shipped_splits_keep_statue_scenes_together():
    from pathlib import Path

    import yaml

    conf = yaml.safe_load((Path(__file__).parents[1] / "configs" / "splits.yaml").read_text())
    assert {"statue_of_liberty", "statue_of_liberty_40", "alexander"} <= set(conf["validation"])
    assert not set(conf["validation"]) & set(conf["train"])


def test_no_splits_file_means_the_checkouts_own_from_any_folder(scene_root, monkeypatch, tmp_path):
    from pathlib import Path

    from mirror_sfm.train import data

    monkeypatch.chdir(tmp_path)  # not the repository: a relative configs/ path would not be found
    assert data.checkout_splits() == Path(__file__).resolve().parents[1] / "configs" / "splits.yaml"
    assert split_scenes(scene_root, None, "validation") == []  # the shipped split names none of these scenes
    monkeypatch.setattr(data, "__file__", str(tmp_path / "site-packages" / "mirror_sfm" / "train" / "data.py"))
    with pytest.raises(MirrorError, match="give --splits FILE"):
        split_scenes(scene_root, None, "validation")
