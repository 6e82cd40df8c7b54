"""Same-scene hard negatives (row 3 of a batch) and pseudo-labels from a COLMAP database's geometric verification."""

import shutil
import sqlite3

import pytest
import torch
from labelled_scenes import fit_one_batch, make_scenes

from mirror_sfm.errors import MirrorError
from mirror_sfm.labels import load_scene_labels
from mirror_sfm.train.augment import AugmentOptions
from mirror_sfm.train.data import (
    DATABASE,
    DataOptions,
    TripletBatches,
    load_pseudo_scene,
    load_scene,
    load_scenes,
    pseudo_label_scenes,
    same_scene_negatives,
)
from mirror_sfm.train.losses import LossOptions, batched_loss, distance

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def scene_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    make_scenes(root, ["synth_a", "synth_b", "synth_c"])
    return root


def no_overlap(labels, i, j):
    return all(m[a, b] == 0 for m in (labels.ct, labels.mo) for a, b in ((i, j), (j, i)))


def test_same_scene_negatives_share_nothing(scene_root):
    labels = load_scene_labels(scene_root / "synth_a")
    negatives = same_scene_negatives(labels)
    assert negatives[0] and 1 not in negatives[0]  # views slide along a row: far ones share nothing
    for i, js in negatives.items():
        assert i not in js and all(no_overlap(labels, i, j) for j in js)
    relaxed = same_scene_negatives(labels, max_co=0.3)
    assert all(set(js) <= set(relaxed[i]) for i, js in negatives.items())
    assert sum(map(len, relaxed.values())) > sum(map(len, negatives.values()))
    scene = load_scene(scene_root / "synth_a")
    assert all(a.negatives == negatives[a.index] for a in scene.anchors)


def test_batch_row_3_is_a_non_overlapping_image_of_the_anchors_scene(scene_root):
    names = ["synth_a", "synth_b", "synth_c"]
    scenes = load_scenes([scene_root / n for n in names])
    data = TripletBatches(scenes, DataOptions(columns=3, same_scene_negatives=True), AugmentOptions(size=48), seed=3)
    labels = {n: load_scene_labels(scene_root / n) for n in names}
    seen = 0
    for step in range(12):
        batch = data[step]
        assert batch["images"].shape == (4, 3, 3, 48, 48) and batch["indices"].shape == (4, 3)
        for col, scene in enumerate(batch["scenes"]):
            if not batch["negative_valid"][col]:
                continue
            a, n = int(batch["indices"][0, col]), int(batch["indices"][3, col])
            assert n != a and no_overlap(labels[scene], a, n)
            anchor = next(x for x in data.scenes[[s.name for s in data.scenes].index(scene)].anchors if x.index == a)
            assert n in anchor.negatives  # drawn from the anchor's own scene's negatives
            seen += 1
    assert seen > 10
    three = TripletBatches(scenes, DataOptions(columns=3), AugmentOptions(size=48), seed=3)[0]
    assert three["images"].shape[0] == 3 and "negative_valid" not in three


def test_same_scene_term_of_the_loss():
    torch.manual_seed(0)
    desc = torch.nn.functional.normalize(torch.randn(4, 5, 16), dim=-1)
    valid = torch.tensor([True, True, False, True, False])
    o = LossOptions(use_masks=False)
    loss3, terms3 = batched_loss(desc[:3], None, o)
    loss4, terms4 = batched_loss(desc, None, o, valid)
    a, s, n = desc[0], desc[1], desc[3]
    d_n = torch.minimum(distance(a, n), distance(s, n))
    same = ((distance(a, s) + o.margin_same - d_n).clamp_min(0) * valid).mean()
    assert torch.isclose(terms4["same"], same)
    assert torch.isclose(terms4["d_same"], distance(a, n)[valid].mean())
    # row 3 also serves as in-batch negatives of the other columns: the other terms can only grow
    assert terms4["easy"] >= terms3["easy"] - 1e-6 and terms4["weak"] >= terms3["weak"] - 1e-6
    easy_weak_hard = terms4["easy"] + terms4["weak"] + terms4["hard"]
    assert torch.isclose(loss4, easy_weak_hard + o.lambda_same * same)
    assert "same" not in terms3


def test_loss_with_same_scene_negatives_goes_down(scene_root):
    """Eight SGD steps on one fixed 4-row batch of the committed-style fixture scenes: the loss (with the
    same-scene term) falls, the same-scene negatives move away from their anchors, nothing collapses."""
    from mirror_sfm.train.config import load_config

    torch.manual_seed(0)
    sets = {
        "data.columns": 3,
        "data.num_workers": 0,
        "data.same_scene_negatives": True,
        "augment.size": 96,
        "loss.use_masks": False,
        "model.freeze_blocks": 12,
    }
    cfg = load_config(None, [f"{k}={v}" for k, v in sets.items()])
    scenes = load_scenes([scene_root / n for n in ("synth_a", "synth_b", "synth_c")])
    batch = TripletBatches(scenes, cfg.data, cfg.augment, seed=0)[0]
    assert batch["negative_valid"].any()
    losses, first, terms = fit_one_batch(cfg, batch)
    assert sum(losses[-3:]) / 3 < 0.6 * losses[0], losses
    assert terms["d_same"].item() > first["d_same"], (first, terms)
    assert terms["d_neg"].item() > 0.5  # not a collapse


# ----------------------------------------------------------------------------- pseudo-labels

PAIR = 2147483647


def write_database(path, names, geometries):
    """A COLMAP-layout database holding `images` and `two_view_geometries` (the tables pseudo-labels read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE images (image_id INTEGER PRIMARY KEY, name TEXT, camera_id INTEGER)")
    con.execute(
        "CREATE TABLE two_view_geometries (pair_id INTEGER PRIMARY KEY, rows INTEGER, cols INTEGER, config INTEGER)"
    )
    con.executemany("INSERT INTO images VALUES (?, ?, 1)", [(k + 1, n) for k, n in enumerate(names)])
    rows = [((i + 1) * PAIR + (j + 1), inliers, 2, config) for (i, j), (config, inliers) in geometries.items()]
    con.executemany("INSERT INTO two_view_geometries VALUES (?, ?, ?, ?)", rows)
    con.commit()
    con.close()


@pytest.fixture()
def pseudo_root(scene_root, tmp_path):
    """ROOT/street (a train scene with no mesh labels, only a COLMAP database) and ROOT/val_street (validation)."""
    root = tmp_path / "labels"
    names = [f"{k:03d}.jpg" for k in range(6)]
    geometries = {
        (0, 1): (2, 400),  # strong
        (0, 2): (3, 50),  # weak
        (0, 3): (1, 0),  # failed: negative
        (0, 4): (6, 900),  # panoramic: neither
        (0, 5): (2, 10),  # too few inliers: negative
        (1, 2): (2, 200),
        (1, 3): (2, 40),
        (2, 3): (2, 150),
    }
    for scene in ("street", "val_street"):
        shutil.copytree(scene_root / "synth_a" / "images", root / scene / "images")
        write_database(root / scene / DATABASE, names, geometries)
    splits = tmp_path / "splits.yaml"
    splits.write_text("train: [street, 'synth_*']\nvalidation: [val_street]\n")
    return root, splits


def test_pseudo_labels_from_geometric_verification(pseudo_root):
    root, _ = pseudo_root
    scene = load_pseudo_scene(root / "street", DataOptions())
    assert scene.names[:6] == [f"{k:03d}.jpg" for k in range(6)] and scene.mask_bin is None
    anchor = {a.index: a for a in scene.anchors}
    assert [p.j for p in anchor[0].strong] == [1] and [p.j for p in anchor[0].weak] == [2]
    assert sorted(anchor[0].negatives) == [3, 5]  # the failed pair and the one with 10 inliers; not panoramic 4
    assert anchor[0].weak[0].co == pytest.approx(0.5)
    assert 3 in anchor  # strong with 2 (150), weak with 1 (40), negative of 0
    assert [p.j for p in anchor[3].strong] == [2] and anchor[3].negatives == [0]
    assert scene.pair_masks(0, anchor[0].strong[0]) is None  # no masks: mask terms off
    stricter = load_pseudo_scene(root / "street", DataOptions(pseudo_strong_inliers=300))
    assert [p.j for p in {a.index: a for a in stricter.anchors}[0].strong] == [1]
    with pytest.raises(MirrorError, match="not found"):
        load_pseudo_scene(root / "street", DataOptions(pseudo_image_dir=str(root / "{scene}" / "photos")))


def test_pseudo_labels_only_for_the_train_split(pseudo_root, scene_root):
    root, splits = pseudo_root
    assert pseudo_label_scenes(root, splits, "train", ["*"]) == [root / "street"]
    assert pseudo_label_scenes(root, splits, "train", ["val_street"]) == []
    assert pseudo_label_scenes(root, splits, "train", []) == []
    scenes = [load_pseudo_scene(root / "street"), *load_scenes([scene_root / "synth_a", scene_root / "synth_b"])]
    batch = TripletBatches(scenes, DataOptions(columns=3, same_scene_negatives=True), AugmentOptions(size=32))[0]
    col = batch["scenes"].index("street")
    assert not batch["mask_valid"][col].any()


def test_training_run_with_pseudo_labels_and_negatives(pseudo_root, scene_root, tmp_path):
    """`mirror_sfm train`'s loop takes the train split's pseudo-labelled scenes and records them in the weights."""
    from mirror_sfm.model import load_model
    from mirror_sfm.train.config import load_config
    from mirror_sfm.train.loop import train

    root, splits = pseudo_root
    for n in ("synth_a", "synth_b"):
        shutil.copytree(scene_root / n, root / n)
    sets = {
        "data.root": str(root),
        "data.splits": str(splits),
        "data.columns": 3,
        "data.num_workers": 0,
        "data.same_scene_negatives": True,
        "data.pseudo_labels": "[street, val_street]",
        "augment.size": 48,
        "model.freeze_blocks": 12,
        "run.out": str(tmp_path / "run"),
        "run.steps": 2,
        "run.validate_every": 0,
        "run.progress": False,
        "run.threads": 1,
    }
    res = train(load_config(None, [f"{k}={v}" for k, v in sets.items()]))
    meta = load_model(res.weights).meta
    assert meta["pseudo_labelled_scenes"] == ["street"] and meta["same_scene_negatives"] is True
    assert sorted(meta["train_scenes"]) == ["street", "synth_a", "synth_b"]
    header = (tmp_path / "run" / "log.csv").read_text().splitlines()[0]
    assert "same" in header.split(",") and "d_same" in header.split(",")
