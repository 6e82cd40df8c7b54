"""Learned whitening fitted on labelled scenes: descriptors from `extract`, matching pairs from the labels.

`whitening_from_labels` describes each scene's images (the names of its ``image_list.txt``; descriptors cached
in one h5 file per scene, resumable), takes every pair the labels call positive (``ct:0.2``: symmetric
common-track ratio >= 0.2; ``co:0.5``: combined overlap >= 0.5) and fits `whitening.fit_learned_whitening` either
on the images' global descriptors or on their R-MAC regional vectors (`vectors="regional"`: every region of every
image, and as pairs, within each positive image pair, the regions that are each other's nearest neighbour by
cosine — the regions PR-MAC would match). Pairs never cross scenes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import MirrorError
from .extract import ExtractionOptions, extract
from .features_io import read_descriptors
from .labels import SceneLabels, load_scene_labels
from .model import RetrievalModel, load_model
from .scene_eval import parse_gt
from .whitening import Whitening, fit_learned_whitening

logger = logging.getLogger(__name__)

VECTORS = ("global", "regional")


@dataclass
class LearnedWhiteningOptions:
    """How learned whitening is fitted on labelled scenes.

    Attributes:
        positives: which label pairs are matching pairs, 'criterion:threshold' (ct:0.2 | co:0.5 | mo:T).
        vectors: fit on each image's global descriptor, or on its 35 R-MAC regional vectors (mutual nearest
            regions of each positive pair): global | regional.
        dim: output dimension (0: the descriptors' own).
        pre_dim: PCA to this dimension first (0: none), so the pair-difference covariance is full rank.
        shrinkage: the pair-difference covariance is shrunk this far towards a multiple of the identity.
        extraction: how the descriptors are computed (the product defaults unless told).

    The defaults are the best of benchmarks/whitening_eval.py on the validation scenes (RESULTS.md §13): full
    dimension, regional vectors, CO >= 0.5 pairs. Reducing the dimension lowered validation AP@10 in every run.
    """

    positives: str = "co:0.5"
    vectors: str = "regional"
    dim: int = 0
    pre_dim: int = 0
    shrinkage: float = 0.1
    extraction: ExtractionOptions = field(default_factory=ExtractionOptions)

    def validate(self) -> None:
        parse_gt(self.positives)
        if self.vectors not in VECTORS:
            raise MirrorError(f"unknown fitting vectors {self.vectors!r}: choose {' or '.join(VECTORS)}")
        if self.dim < 0 or self.pre_dim < 0:
            raise MirrorError(f"whitening dim and pre_dim must be >= 0, got {self.dim} and {self.pre_dim}")
        if not 0.0 <= self.shrinkage < 1.0:
            raise MirrorError(f"shrinkage must be in [0, 1), got {self.shrinkage}")


@dataclass
class DescribedScene:
    """A labelled scene's described images: names (label order, unreadable ones dropped), global (N, D) and
    regional (N, R, D) descriptors, and the index pairs (i < j) of its positives."""

    labels: SceneLabels
    names: list[str]
    glob: np.ndarray
    regional: np.ndarray | None

    def positive_pairs(self, spec: str, t_sfm: float = 0.2) -> np.ndarray:
        """(P, 2) indices into `names` of the pairs `spec` (e.g. 'ct:0.2') calls positive, i < j."""
        crit, thr = parse_gt(spec)
        rel = self.labels.relevance(crit, thr, t_sfm).tocoo()
        index = {n: k for k, n in enumerate(self.labels.names)}
        keep = np.full(len(self.labels.names), -1, dtype=np.int64)
        for k, n in enumerate(self.names):
            keep[index[n]] = k
        i, j = keep[rel.row], keep[rel.col]
        ok = (i >= 0) & (j >= 0) & (i < j)
        return np.stack([i[ok], j[ok]], axis=1)


def load_label_folders(scene_dirs: list[str | Path | SceneLabels]) -> list[SceneLabels]:
    """Every scene's labels, read (and so checked) before any image is described; one MirrorError naming the
    folder when one is not a labelled scene. Labels already read are taken as they are."""
    if not scene_dirs:
        raise MirrorError("no labelled scene given (--labels DIR...)")
    scenes = []
    for d in scene_dirs:
        if isinstance(d, SceneLabels):
            scenes.append(d)
            continue
        try:
            scenes.append(load_scene_labels(d))
        except MirrorError as exc:
            raise MirrorError(f"not a labelled scene folder: {d} ({exc})") from None
    names = [s.name for s in scenes]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise MirrorError(f"scene {dup[0]} given twice (label folders are told apart by name)")
    return scenes


def describe_scene(
    labels: SceneLabels, features: Path, options: ExtractionOptions, model: RetrievalModel, regional: bool = True
) -> DescribedScene:
    """Describe the images of a labelled scene's image list into `features` (resumable) and read them back."""
    missing = [n for n in labels.names if not (labels.image_dir / n).is_file()]
    if missing:
        raise MirrorError(
            f"scene {labels.name}: {len(missing)} of its {len(labels.names)} labelled images are not in "
            f"{labels.image_dir} (e.g. {missing[0]})"
        )
    result = extract(labels.image_dir, features, options, image_names=labels.names, model=model)
    good = [n for n in labels.names if n not in result.skipped]
    names, glob, reg = read_descriptors(features, good, regional=regional)
    return DescribedScene(labels, names, glob, reg)


def mutual_region_pairs(regional: np.ndarray, image_pairs: np.ndarray, batch: int = 256) -> np.ndarray:
    """For each image pair (i, j) of `image_pairs` (P, 2), the regions of i and j (`regional` (N, R, D),
    L2-normalised) that are each other's most similar by cosine: (M, 2) flat indices i * R + a, j * R + b."""
    r = regional.shape[1]
    out = []
    for start in range(0, len(image_pairs), batch):
        chunk = image_pairs[start : start + batch]
        a = torch.from_numpy(regional[chunk[:, 0]].astype(np.float32))
        b = torch.from_numpy(regional[chunk[:, 1]].astype(np.float32))
        sims = torch.bmm(a, b.transpose(1, 2)).numpy()  # (B, R, R)
        best_b = sims.argmax(axis=2)  # (B, R): i's region a -> j's region
        best_a = sims.argmax(axis=1)  # (B, R): j's region b -> i's region
        mutual = np.take_along_axis(best_a, best_b, axis=1) == np.arange(r)
        k, ia = np.nonzero(mutual)
        out.append(np.stack([chunk[k, 0] * r + ia, chunk[k, 1] * r + best_b[k, ia]], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


def fitting_set(scenes: list[DescribedScene], options: LearnedWhiteningOptions) -> tuple[np.ndarray, np.ndarray]:
    """The vectors and matching pairs (indices into the vectors) that learned whitening is fitted on."""
    vectors, pairs, offset = [], [], 0
    for s in scenes:
        image_pairs = s.positive_pairs(options.positives)
        if options.vectors == "global":
            vectors.append(s.glob)
            pairs.append(image_pairs + offset)
            offset += len(s.glob)
            continue
        if s.regional is None:
            raise MirrorError(f"scene {s.labels.name}: no regional descriptors to fit on")
        vectors.append(s.regional.reshape(-1, s.regional.shape[-1]))
        pairs.append(mutual_region_pairs(s.regional, image_pairs) + offset)
        offset += s.regional.shape[0] * s.regional.shape[1]
    x = np.concatenate(vectors).astype(np.float32)
    p = np.concatenate(pairs).astype(np.int64) if pairs else np.zeros((0, 2), np.int64)
    return x, p


def fit_on_scenes(scenes: list[DescribedScene], options: LearnedWhiteningOptions) -> tuple[Whitening, dict]:
    """Learned whitening fitted on described scenes, and what it was fitted on (counts, for the weights' meta)."""
    options.validate()
    x, pairs = fitting_set(scenes, options)
    if len(pairs) == 0:
        raise MirrorError(
            f"no positive pair ({options.positives}) in the labelled scenes "
            f"{', '.join(s.labels.name for s in scenes)}: nothing to fit learned whitening on"
        )
    pre_dim = options.pre_dim if 0 < options.pre_dim < x.shape[1] else None
    dim = options.dim or x.shape[1]
    whitening = fit_learned_whitening(x, pairs, dim, pre_dim=pre_dim, shrinkage=options.shrinkage)
    info = {
        "method": "learned (Radenovic et al. whitenlearn)",
        "positives": options.positives,
        "vectors": options.vectors,
        "dim": whitening.dim,
        "pre_dim": pre_dim or 0,
        "shrinkage": options.shrinkage,
        "scenes": [s.labels.name for s in scenes],
        "images": int(sum(len(s.names) for s in scenes)),
        "fitting_vectors": int(len(x)),
        "pairs": int(len(pairs)),
    }
    logger.info(
        "learned whitening to %d-d fitted on %d %s vectors, %d matching pairs (%s), %d scenes",
        whitening.dim,
        len(x),
        options.vectors,
        len(pairs),
        options.positives,
        len(scenes),
    )
    return whitening, info


def whitening_from_labels(
    scene_dirs: list[str | Path | SceneLabels],
    options: LearnedWhiteningOptions | None = None,
    model: RetrievalModel | None = None,
    features_dir: str | Path | None = None,
) -> tuple[Whitening, dict]:
    """Fit learned whitening on labelled scenes (gtgen output folders, or their labels already read): (the
    whitening, what it was fitted on).

    Descriptors are kept in `features_dir`/<scene>-global-feats.h5 (resumable; required: describing a scene is
    the slow part). Every label folder is read before any image is described.
    """
    options = options or LearnedWhiteningOptions()
    options.validate()
    labels = load_label_folders(list(scene_dirs))
    if features_dir is None:
        raise MirrorError("whitening_from_labels needs a folder for the scenes' descriptor files")
    model = model or load_model(options.extraction.weights)
    features_dir = Path(features_dir)
    scenes = [
        describe_scene(lbl, features_dir / f"{lbl.name}-global-feats.h5", options.extraction, model) for lbl in labels
    ]
    return fit_on_scenes(scenes, options)
