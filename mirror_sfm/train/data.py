"""Training batches from labelled scenes (gtgen output, read by `mirror_sfm.labels`): a (3, N_b) matrix of
images per step.

Row 0 holds anchors, row 1 a strong positive of each anchor, row 2 a weak positive; each column comes from
another scene, so every image of another column is a negative. Each image comes with the overlap masks
of its pair (the anchor's pixels whose surface the positive also sees, and the converse), cropped and
flipped with it. Real and synthetic (``synth_*``) scenes are mixed at a set ratio.

A batch is a pure function of (seed, step): resuming at step t draws exactly the batches an
uninterrupted run would have, whatever the number of loader workers.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from torch.utils.data import Dataset

from ..errors import MirrorError
from ..labels import MANIFEST, MASK_SIZE, read_manifest, read_mask_bin, read_mask_png, scene_image_dir
from .augment import AugmentOptions, crop_mask, jitter_colour, load_cropped, sample_crop

logger = logging.getLogger(__name__)

SYNTHETIC_PREFIX = "synth_"


@dataclass
class DataOptions:
    """`root`: folder of labelled scenes (one gtgen output folder each); `splits`: YAML naming the train and
    validation scenes (globs allowed; empty: the source checkout's configs/splits.yaml); `columns`: N_b, scenes per
    batch; `real_fraction`: expected share of columns from real scenes (the rest synthetic, when both exist)."""

    root: str = "outputs/labels"
    splits: str = ""
    train_split: str = "train"
    val_split: str = "validation"
    columns: int = 4
    real_fraction: float = 0.5
    num_workers: int = 1


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


def load_scene(path: str | Path, name: str | None = None) -> LabelledScene:
    """Read SCENE/triplets.json (a gtgen manifest) into a LabelledScene."""
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
        """images (3, N, 3, S, S) float in [0, 1]; masks (N, 4, S, S) bool = [anchor for strong, strong for
        anchor, anchor for weak, weak for anchor]; mask_valid (N, 2) bool (strong pair, weak pair labelled);
        indices (3, N) image indices; scenes: N names; step."""
        rng = np.random.default_rng([self.seed, step])
        size = self.augment.size
        n = self.options.columns
        images = torch.empty(3, n, 3, size, size)
        masks = torch.zeros(n, 4, size, size, dtype=torch.bool)
        valid = torch.zeros(n, 2, dtype=torch.bool)
        indices = torch.empty(3, n, dtype=torch.long)
        names = []
        for col, k in enumerate(self.choose_scenes(rng)):
            scene = self.scenes[k]
            anchor = scene.anchors[int(rng.integers(len(scene.anchors)))]
            strong = anchor.strong[int(rng.integers(len(anchor.strong)))]
            weak = anchor.weak[int(rng.integers(len(anchor.weak)))]
            crops = []
            for row, idx in enumerate((anchor.index, strong.j, weak.j)):
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
        return {
            "images": images,
            "masks": masks,
            "mask_valid": valid,
            "indices": indices,
            "scenes": names,
            "step": step,
        }


def load_scenes(paths: list[Path]) -> list[LabelledScene]:
    scenes = [load_scene(p) for p in paths]
    for s in scenes:
        logger.info(
            "scene %s: %d images, %d of %d anchors have strong and weak positives",
            s.name,
            len(s.names),
            len(s.anchors),
            s.num_listed_anchors,
        )
    return scenes
