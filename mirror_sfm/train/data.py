"""Training batches from labelled scenes (gtgen output, read by `mirror_sfm.labels`): a (3, N_b) matrix of
images per step.

Row 0 holds anchors, row 1 a strong positive of each anchor, row 2 a weak positive; each column comes from
another scene, so every image of another column is a negative. With `same_scene_negatives`, row 3 holds an
image of the anchor's own scene that shares no surface with it (a hard negative the other columns cannot
supply). Each image comes with the overlap masks of its pair (the anchor's pixels whose surface the positive
also sees, and the converse), cropped and flipped with it. Real and synthetic (``synth_*``) scenes are mixed at
a set ratio.

Scenes come from gtgen's mesh labels (triplets.json + geolabel/) or, for scenes without a mesh, from the
geometric verification of a COLMAP database (`load_pseudo_scene`: pairs with many verified inliers are
positives, pairs that fail verification negatives; no masks).

A batch is a pure function of (seed, step): resuming at step t draws exactly the batches an
uninterrupted run would have, whatever the number of loader workers.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycolmap
import torch
import yaml
from PIL import Image
from torch.utils.data import Dataset

from ..errors import MirrorError
from ..labels import (
    GEOLABEL,
    MANIFEST,
    MASK_SIZE,
    SceneLabels,
    combined_ratios,
    load_scene_labels,
    read_manifest,
    read_mask_bin,
    read_mask_png,
    scene_image_dir,
)
from ..verify import FAILED_CONFIGS  # undefined, degenerate: verification failed
from .augment import AugmentOptions, crop_mask, jitter_colour, load_cropped, sample_crop

logger = logging.getLogger(__name__)

SYNTHETIC_PREFIX = "synth_"


@dataclass
class DataOptions:
    """`root`: folder of labelled scenes (one gtgen output folder each); `splits`: YAML naming the train and
    validation scenes (globs allowed; empty: the source checkout's configs/splits.yaml); `columns`: N_b, scenes per
    batch; `real_fraction`: expected share of columns from real scenes (the rest synthetic, when both exist).
    `same_scene_negatives`: a fourth row per column, an image of the anchor's scene with no overlap (see
    `same_scene_negatives`); `negative_max_co` > 0 relaxes "no overlap" to CO below it.
    `pseudo_labels`: names or globs of train-split scenes read from their COLMAP
    database (ROOT/<scene>/reconstruction/database.db) by geometric verification instead of mesh labels
    (`load_pseudo_scene`); a scene of any other split is never taken. `pseudo_image_dir`: their photos,
    "{scene}" replaced by the name (empty: ROOT/<scene>/images). `pseudo_strong_inliers` / `pseudo_weak_inliers`:
    verified inliers making a strong / weak positive; `pseudo_negative_inliers`: fewer (or a failed
    verification) make a negative."""

    root: str = "outputs/labels"
    splits: str = ""
    train_split: str = "train"
    val_split: str = "validation"
    columns: int = 4
    real_fraction: float = 0.5
    num_workers: int = 1
    same_scene_negatives: bool = False
    negative_max_co: float = 0.0
    pseudo_labels: tuple[str, ...] = ()
    pseudo_image_dir: str = ""
    pseudo_strong_inliers: int = 100
    pseudo_weak_inliers: int = 30
    pseudo_negative_inliers: int = 15


# ----------------------------------------------------------------------------- labelled scenes


@dataclass
class Positive:
    j: int
    co: float
    mask: str | None = None  # PNG over the anchor of what j sees (relative to the scene folder)
    mask_other: str | None = None  # PNG over j of what the anchor sees


@dataclass
class AnchorLabels:
    index: int
    strong: list[Positive]
    weak: list[Positive]
    negatives: list[int] = field(default_factory=list)  # images of the same scene sharing no surface with it


@dataclass
class LabelledScene:
    """One gtgen output folder: image names, the image folder and the anchors usable for training."""

    name: str
    root: Path
    image_dir: Path
    names: list[str]
    anchors: list[AnchorLabels]  # anchors with at least one strong and one weak positive
    mask_bin: Path | None = None
    mask_bin_size: int = MASK_SIZE
    synthetic: bool = False
    num_listed_anchors: int = 0
    _bin_cache: dict | None = field(default=None, repr=False)
    _sizes: dict = field(default_factory=dict, repr=False)

    def image_path(self, k: int) -> Path:
        return self.image_dir / self.names[k]

    def image_size(self, k: int) -> tuple[int, int]:
        """(width, height) of image k, read from its header once."""
        if k not in self._sizes:
            path = self.image_path(k)
            try:
                with Image.open(path) as im:
                    self._sizes[k] = im.size
            except Exception as exc:
                raise MirrorError(f"cannot read training image {path}: {exc.__class__.__name__}: {exc}") from None
        return self._sizes[k]

    def pair_masks(self, i: int, pos: Positive) -> tuple[np.ndarray, np.ndarray] | None:
        """(mask over i of what pos.j sees, mask over pos.j of what i sees), or None when not labelled."""
        if pos.mask and pos.mask_other:
            return read_mask_png(self.root / pos.mask), read_mask_png(self.root / pos.mask_other)
        if self.mask_bin is not None:
            if self._bin_cache is None:
                self._bin_cache = read_mask_bin(self.mask_bin, self.mask_bin_size)
            j = pos.j
            rec = self._bin_cache.get((min(i, j), max(i, j)))
            if rec is not None:
                return (rec[0], rec[1]) if i <= j else (rec[1], rec[0])
        return None


def load_scene(path: str | Path, name: str | None = None, negative_max_co: float = 0.0) -> LabelledScene:
    """Read SCENE/triplets.json (a gtgen manifest) into a LabelledScene; each anchor's same-scene negatives
    come from geolabel/ (`same_scene_negatives`)."""
    path = Path(path)
    manifest_path = path if path.is_file() else path / MANIFEST
    scene_dir = manifest_path.parent
    manifest = read_manifest(manifest_path)
    names = list(manifest["images"])
    masks = manifest.get("masks") or {}
    mask_bin = scene_dir / masks["bin"] if masks.get("bin") else None
    if mask_bin is not None and not mask_bin.is_file():
        logger.warning(
            "%s: mask file %s is missing; mask terms off for pairs without PNG masks", manifest_path, mask_bin
        )
        mask_bin = None

    def positives(entries) -> list[Positive]:
        return [Positive(int(p["j"]), float(p["co"]), p.get("mask"), p.get("mask_other")) for p in entries]

    anchors = [AnchorLabels(int(a["index"]), positives(a["strong"]), positives(a["weak"])) for a in manifest["anchors"]]
    if (scene_dir / GEOLABEL).is_dir():
        labels = load_scene_labels(scene_dir)
        if labels.names != names:
            raise MirrorError(f"{manifest_path}: its images differ from {scene_dir / 'image_list.txt'}")
        negatives = same_scene_negatives(
            labels, negative_max_co, float(manifest.get("thresholds", {}).get("t_sfm", 0.2))
        )
        for a in anchors:
            a.negatives = negatives.get(a.index, [])
    usable = [a for a in anchors if a.strong and a.weak]
    name = name or scene_dir.name
    return LabelledScene(
        name,
        scene_dir,
        scene_image_dir(scene_dir),
        names,
        usable,
        mask_bin,
        int(masks.get("bin_size") or MASK_SIZE),
        name.startswith(SYNTHETIC_PREFIX),
        len(anchors),
    )


def same_scene_negatives(labels: SceneLabels, max_co: float = 0.0, t_sfm: float = 0.2) -> dict[int, list[int]]:
    """{i: images j of the scene sharing nothing with i}: both labelled (some common track or mesh overlap with
    any image, so registered and seen: an unregistered image's overlap is unknown, never zero) and no common
    track and no mesh overlap in either direction, so CO(i, j) = 0. `max_co` > 0: CO(i, j) < max_co instead."""
    touch = (labels.ct + labels.ct.T + labels.mo + labels.mo.T).tocsr()
    touch.setdiag(0)
    touch.eliminate_zeros()
    labelled = np.flatnonzero(np.diff(touch.indptr) > 0)
    if max_co > 0:
        co = combined_ratios(labels.ct, labels.mo, t_sfm).tocsr()
        close = (co >= max_co).tocsr()
    else:
        close = touch
    out = {}
    for i in labelled:
        linked = set(close.indices[close.indptr[i] : close.indptr[i + 1]].tolist())
        out[int(i)] = [int(j) for j in labelled if j != i and int(j) not in linked]
    return out


# ----------------------------------------------------------------------------- pseudo-labels (COLMAP)

DATABASE = Path("reconstruction") / "database.db"
_CONFIG = pycolmap.TwoViewGeometryConfiguration
# the configs (2-5) RESULTS §15's pseudo-labels were made with; panoramic (5) is in, planar-or-panoramic (6) is not
GEOMETRIC_CONFIGS = {int(c) for c in (_CONFIG.CALIBRATED, _CONFIG.UNCALIBRATED, _CONFIG.PLANAR, _CONFIG.PANORAMIC)}


def verified_pairs(database: str | Path) -> tuple[list[str], dict[tuple[int, int], tuple[int, int]]]:
    """(image names by 0-based index in image_id order, {(i, j) with i < j: (config, inliers)}) of a COLMAP
    database's two-view geometries (read-only). Pairs never matched are absent."""
    import sqlite3

    path = Path(database)
    if not path.is_file():
        raise MirrorError(f"COLMAP database not found: {path}")
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        images = con.execute("SELECT image_id, name FROM images ORDER BY image_id").fetchall()
        rows = con.execute("SELECT pair_id, rows, config FROM two_view_geometries").fetchall()
    except sqlite3.Error as exc:
        raise MirrorError(f"cannot read two-view geometries of {path}: {exc}") from None
    finally:
        con.close()
    index = {int(image_id): k for k, (image_id, _) in enumerate(images)}
    pairs = {}
    for pair_id, inliers, config in rows:
        id1, id2 = (int(i) for i in pycolmap.pair_id_to_image_pair(int(pair_id)))
        if id1 in index and id2 in index:
            i, j = sorted((index[id1], index[id2]))
            pairs[(i, j)] = (int(config), int(inliers or 0))
    return [name for _, name in images], pairs


def load_pseudo_scene(
    scene_dir: str | Path, options: DataOptions | None = None, image_dir: str | Path | None = None
) -> LabelledScene:
    """A training scene labelled by geometric verification instead of a mesh: from SCENE/reconstruction/
    database.db (COLMAP's matching), a pair verified with a two-view geometry of `GEOMETRIC_CONFIGS` (calibrated,
    uncalibrated, planar, panoramic) and >= `pseudo_strong_inliers` inliers is a strong positive, with
    `pseudo_weak_inliers` up to that a weak one; a pair whose verification failed or kept fewer than
    `pseudo_negative_inliers` inliers is a same-scene negative. Planar-or-panoramic (6), watermark and
    multiple geometries are neither. No masks: the mask terms are off for these pairs. `co` of a positive is its inlier
    count over `pseudo_strong_inliers`, capped at 1."""
    options = options or DataOptions()
    scene_dir = Path(scene_dir)
    names, pairs = verified_pairs(scene_dir / DATABASE)
    if image_dir is None:
        image_dir = options.pseudo_image_dir.format(scene=scene_dir.name) if options.pseudo_image_dir else None
    image_dir = Path(image_dir) if image_dir else scene_dir / "images"
    if not image_dir.is_dir():
        raise MirrorError(f"images of pseudo-labelled scene {scene_dir.name} not found: {image_dir}")
    strong: dict[int, list[Positive]] = {}
    weak: dict[int, list[Positive]] = {}
    negatives: dict[int, list[int]] = {}
    for (i, j), (config, inliers) in sorted(pairs.items()):
        for a, b in ((i, j), (j, i)):
            if config in GEOMETRIC_CONFIGS and inliers >= options.pseudo_strong_inliers:
                strong.setdefault(a, []).append(Positive(b, 1.0))
            elif config in GEOMETRIC_CONFIGS and inliers >= options.pseudo_weak_inliers:
                weak.setdefault(a, []).append(Positive(b, inliers / options.pseudo_strong_inliers))
            elif config in FAILED_CONFIGS or inliers < options.pseudo_negative_inliers:
                negatives.setdefault(a, []).append(b)
    anchors = [
        AnchorLabels(k, strong.get(k, []), weak.get(k, []), negatives.get(k, []))
        for k in range(len(names))
        if strong.get(k) or weak.get(k)
    ]
    usable = [a for a in anchors if a.strong and a.weak]
    return LabelledScene(scene_dir.name, scene_dir, image_dir, names, usable, None, MASK_SIZE, False, len(anchors))


# ----------------------------------------------------------------------------- splits


def read_splits(path: str | Path) -> dict[str, list[str]]:
    """splits.yaml: {split name: [scene names or globs]}, plus optional `groups`: lists of scenes (e.g. the
    same photos labelled twice) that must land in one split."""
    path = Path(path)
    if not path.is_file():
        raise MirrorError(f"splits file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise MirrorError(f"{path}: expected a mapping of split name -> scene list")
    return {k: list(v or []) for k, v in data.items()}


def checkout_splits() -> Path:
    """configs/splits.yaml of the source checkout this package runs from (not part of an installed wheel)."""
    path = Path(__file__).resolve().parents[2] / "configs" / "splits.yaml"
    if not path.is_file():
        raise MirrorError(
            "no splits file given and this installation has no configs/splits.yaml (it comes with the source "
            "checkout): give --splits FILE (data.splits in a training config)"
        )
    return path


def split_scenes(root: str | Path, splits_path: str | Path | None, split: str) -> list[Path]:
    """Folders under `root` with a triplets.json that the split names (exact names or globs), sorted.

    Named scenes that are not labelled yet are logged and skipped; a scene matched by two splits, or a
    group split across two, is an error.
    """
    root = Path(root)
    splits_path = splits_path or checkout_splits()
    splits = read_splits(splits_path)
    if split not in splits:
        raise MirrorError(f"{splits_path}: no split {split!r} (have: {', '.join(k for k in splits if k != 'groups')})")
    available = sorted(p.parent.name for p in root.glob("*/triplets.json")) if root.is_dir() else []
    membership: dict[str, str] = {}
    for name, patterns in splits.items():
        if name == "groups":
            continue
        for s in available:
            if any(fnmatch.fnmatchcase(s, pat) for pat in patterns):
                if s in membership and membership[s] != name:
                    raise MirrorError(f"{splits_path}: scene {s} is in both {membership[s]!r} and {name!r}")
                membership[s] = name
    for group in splits.get("groups", []):
        found = {membership[s] for s in group if s in membership}
        if len(found) > 1:
            raise MirrorError(
                f"{splits_path}: scenes {', '.join(group)} hold the same photos but are split across "
                f"{', '.join(sorted(found))}"
            )
    missing = [p for p in splits[split] if not any(ch in p for ch in "*?[") and p not in available]
    if missing:
        logger.info("split %r: not labelled yet under %s: %s", split, root, ", ".join(missing))
    return [root / s for s in available if membership.get(s) == split]


def pseudo_label_scenes(
    root: str | Path, splits_path: str | Path | None, split: str, patterns: list[str] | tuple[str, ...]
) -> list[Path]:
    """Folders under `root` holding reconstruction/database.db whose name matches `patterns` and that the
    split names (and no other split does), sorted: the scenes `load_pseudo_scene` labels. A validation scene
    is never returned for the train split, whatever `patterns` says."""
    root = Path(root)
    if not patterns or not root.is_dir():
        return []
    splits = read_splits(splits_path or checkout_splits())
    if split not in splits:
        raise MirrorError(f"{splits_path}: no split {split!r}")
    out = []
    for folder in sorted(p.parents[1] for p in root.glob(f"*/{DATABASE.as_posix()}")):
        name = folder.name
        if not any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
            continue
        member = {k for k, pats in splits.items() if k != "groups" and any(fnmatch.fnmatchcase(name, p) for p in pats)}
        if member != {split}:
            logger.info("scene %s: in split(s) %s, not only %r: not pseudo-labelled", name, sorted(member), split)
            continue
        out.append(folder)
    return out


# ----------------------------------------------------------------------------- batches


class TripletBatches(Dataset):
    """Item `step` = the training batch of that step (a dict of tensors, see `make_batch`)."""

    def __init__(self, scenes: list[LabelledScene], options: DataOptions, augment: AugmentOptions, seed: int = 0):
        self.scenes = [s for s in scenes if s.anchors]
        for s in scenes:
            if not s.anchors:
                logger.warning("scene %s has no anchor with both a strong and a weak positive: not used", s.name)
        self.options, self.augment, self.seed = options, augment, seed
        n = options.columns
        if n < 2:
            raise MirrorError(f"a batch needs at least 2 columns (scenes), got {n}")
        if len(self.scenes) < n:
            raise MirrorError(
                f"a batch of {n} columns needs {n} distinct training scenes with anchors, "
                f"found {len(self.scenes)} ({', '.join(s.name for s in self.scenes) or 'none'})"
            )
        self.real = [k for k, s in enumerate(self.scenes) if not s.synthetic]
        self.synth = [k for k, s in enumerate(self.scenes) if s.synthetic]
        logger.info(
            "training scenes: %d real, %d synthetic; %d anchors",
            len(self.real),
            len(self.synth),
            sum(len(s.anchors) for s in self.scenes),
        )

    def __len__(self) -> int:
        return 2**62

    def choose_scenes(self, rng: np.random.Generator) -> list[int]:
        """N_b distinct scenes: about `real_fraction` of them real, within what each kind can supply."""
        n = self.options.columns
        n_real = int(rng.binomial(n, min(max(self.options.real_fraction, 0.0), 1.0)))
        n_real = min(max(n_real, n - len(self.synth)), len(self.real))
        picks = list(rng.choice(self.real, n_real, replace=False)) if n_real else []
        if n - n_real:
            picks += list(rng.choice(self.synth, n - n_real, replace=False))
        rng.shuffle(picks)
        return [int(k) for k in picks]

    def __getitem__(self, step: int) -> dict:
        return self.make_batch(int(step))

    def make_batch(self, step: int) -> dict:
        """images (R, N, 3, S, S) float in [0, 1], R = 3 (anchor, strong, weak) or 4 with `same_scene_negatives`
        (row 3: an image of the column's scene sharing nothing with the anchor; where the anchor has none, a
        copy of the weak positive with negative_valid False); masks (N, 4, S, S) bool = [anchor for strong,
        strong for anchor, anchor for weak, weak for anchor]; mask_valid (N, 2) bool (strong pair, weak pair
        labelled); negative_valid (N,) bool (only with row 3); indices (R, N) image indices; scenes: N names;
        step."""
        rng = np.random.default_rng([self.seed, step])
        size = self.augment.size
        n = self.options.columns
        rows = 4 if self.options.same_scene_negatives else 3
        images = torch.empty(rows, n, 3, size, size)
        masks = torch.zeros(n, 4, size, size, dtype=torch.bool)
        valid = torch.zeros(n, 2, dtype=torch.bool)
        negative_valid = torch.zeros(n, dtype=torch.bool)
        indices = torch.empty(rows, n, dtype=torch.long)
        names = []
        for col, k in enumerate(self.choose_scenes(rng)):
            scene = self.scenes[k]
            anchor = scene.anchors[int(rng.integers(len(scene.anchors)))]
            strong = anchor.strong[int(rng.integers(len(anchor.strong)))]
            weak = anchor.weak[int(rng.integers(len(anchor.weak)))]
            chosen = [anchor.index, strong.j, weak.j]
            if rows == 4:
                negative_valid[col] = bool(anchor.negatives)
                chosen.append(
                    anchor.negatives[int(rng.integers(len(anchor.negatives)))] if anchor.negatives else weak.j
                )
            crops = []
            for row, idx in enumerate(chosen):
                w, h = scene.image_size(idx)
                crop = sample_crop(rng, w, h, self.augment)
                images[row, col] = jitter_colour(load_cropped(scene.image_path(idx), crop, size), rng, self.augment)
                indices[row, col] = idx
                crops.append(crop)
            for p, (pos, row) in enumerate(((strong, 1), (weak, 2))):
                pm = scene.pair_masks(anchor.index, pos)
                if pm is None:
                    continue
                masks[col, 2 * p] = crop_mask(pm[0], crops[0], size)
                masks[col, 2 * p + 1] = crop_mask(pm[1], crops[row], size)
                valid[col, p] = True
            names.append(scene.name)
        batch = {
            "images": images,
            "masks": masks,
            "mask_valid": valid,
            "indices": indices,
            "scenes": names,
            "step": step,
        }
        if rows == 4:
            batch["negative_valid"] = negative_valid
        return batch


def load_scenes(paths: list[Path], negative_max_co: float = 0.0) -> list[LabelledScene]:
    scenes = [load_scene(p, negative_max_co=negative_max_co) for p in paths]
    for s in scenes:
        logger.info(
            "scene %s: %d images, %d of %d anchors have strong and weak positives, %d a same-scene negative",
            s.name,
            len(s.names),
            len(s.anchors),
            s.num_listed_anchors,
            sum(1 for a in s.anchors if a.negatives),
        )
    return scenes
