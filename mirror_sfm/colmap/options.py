"""The settings of a COLMAP run (`ReconstructionOptions`) and the pycolmap option objects built from them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pycolmap

from ..errors import MirrorError

PAIR_METHODS = ("retrieval", "vocabtree", "exhaustive", "sequential")
CAMERA_MODES = {
    "auto": pycolmap.CameraMode.AUTO,
    "single": pycolmap.CameraMode.SINGLE,
    "per_image": pycolmap.CameraMode.PER_IMAGE,
}
DEVICES = {"auto": pycolmap.Device.auto, "cpu": pycolmap.Device.cpu, "cuda": pycolmap.Device.cuda}
MAPPERS = ("incremental", "global")


@dataclass
class ReconstructionOptions:
    """Settings of one `reconstruct` run: SIFT, the pair method, the matcher's device and the mapper.

    Attributes:
        pairs: which image pairs are matched. "retrieval": each image with its `num_matched` best CNN neighbours
            (geometrically verified shortlist, `mirror_sfm.pairs`); "vocabtree": COLMAP's vocabulary-tree
            retrieval with the local tree `vocab_tree`; "exhaustive": every pair; "sequential": each image with
            the next `sequential_overlap` images in name order (video, drone strips).
        num_matched: K, neighbours per image for "retrieval" and "vocabtree" (hloc advises 20-50; too small a K
            breaks a scene into several models).
        vocab_tree: a vocabulary tree file in COLMAP >= 3.12's format, required for pairs "vocabtree" (build one
            offline with `mirror_sfm vocabtree build`; COLMAP's default tree is a download).
        vocab_tree_verify: with N > 0, COLMAP spatially verifies its top N vocab-tree candidates and keeps the best
            K (slower, better pairs); 0 ranks by tf-idf alone.
        sequential_overlap: W, how many following images (name order) each image is matched with for
            pairs "sequential".
        max_image_size: SIFT works on images resized so the long side is at most this many pixels.
        max_num_features: SIFT keeps at most this many features per image (the largest scales).
        camera_mode: how images share cameras. "auto": COLMAP decides (an image reuses the previous image's camera
            when its size and EXIF focal length match); "single": one camera for all; "per_image": one each.
        device: where SIFT and matching run: "cuda" (needs a pycolmap built with CUDA), "cpu", or "auto"
            (CUDA when available).
        num_threads: CPU threads for SIFT, matching and mapping (-1: all cores).
        mapper: "incremental" (COLMAP's incremental SfM) or "global" (GLOMAP's global SfM).
        mapper_seed: the mapper's random seed, for reproducible models (-1: COLMAP's default, not reproducible).
        retrieval_kwargs: extra keyword arguments passed to `mirror_sfm.pairs.generate_pairs` for pairs
            "retrieval", e.g. {"options": PairsOptions(...)}.
        database_template: start from a copy of this COLMAP database (its SIFT features are shared between runs;
            it must hold no image outside this run's).
        image_names: reconstruct only these images of the folder (relative names); None takes every image.
    """

    pairs: str = "retrieval"
    num_matched: int = 20
    vocab_tree: Path | None = None
    vocab_tree_verify: int = 0
    sequential_overlap: int = 10
    max_image_size: int = 1600
    max_num_features: int = 8192
    camera_mode: str = "auto"
    device: str = "auto"
    num_threads: int = -1
    mapper: str = "incremental"
    mapper_seed: int = -1
    retrieval_kwargs: dict = field(default_factory=dict)
    database_template: Path | None = None
    image_names: list[str] | None = None

    def validate(self) -> None:
        """Raise MirrorError for a bad choice or a missing input file, before any work is done."""
        check_choice("pairs", self.pairs, PAIR_METHODS)
        check_choice("camera_mode", self.camera_mode, CAMERA_MODES)
        check_choice("device", self.device, DEVICES)
        check_choice("mapper", self.mapper, MAPPERS)
        if self.num_matched < 1:
            raise MirrorError(f"num_matched must be >= 1, got {self.num_matched}")
        if self.vocab_tree_verify < 0:
            raise MirrorError(f"vocab_tree_verify must be >= 0, got {self.vocab_tree_verify}")
        if self.sequential_overlap < 1:
            raise MirrorError(f"sequential_overlap must be >= 1, got {self.sequential_overlap}")
        if self.device == "cuda" and not pycolmap.has_cuda:
            raise MirrorError("device 'cuda' requested but this pycolmap was built without CUDA (use auto or cpu)")
        if self.pairs == "vocabtree":
            if self.vocab_tree is None:
                raise MirrorError("pairs 'vocabtree' needs a vocabulary tree file (build one with build_vocab_tree)")
            check_vocab_tree(Path(self.vocab_tree))
        if self.database_template is not None and not Path(self.database_template).is_file():
            raise MirrorError(f"database template not found: {self.database_template}")


def check_vocab_tree(path: Path) -> None:
    """MirrorError before any work when `path` is missing or not a tree pycolmap can read (e.g. COLMAP < 3.12's
    format, which COLMAP's own reader aborts on)."""
    if not path.is_file():
        raise MirrorError(f"vocabulary tree not found: {path}")
    try:
        pycolmap.VisualIndex.read(str(path))
    except Exception as exc:  # pycolmap raises RuntimeError / ValueError for unreadable or old-format files
        raise MirrorError(
            f"cannot read vocabulary tree {path} ({first_line(exc)}): it needs COLMAP >= 3.12's format; "
            "build one with 'mirror_sfm vocabtree build' (or COLMAP >= 3.12's vocab_tree_builder)"
        ) from None


def check_choice(name: str, value: str, choices: Iterable[str]) -> None:
    """MirrorError naming the choices when `value` is not one of them."""
    choices = list(choices)
    if value not in choices:
        raise MirrorError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (pycolmap's are multi-line), else its class name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


# --------------------------------------------------------------------------------------------
# pycolmap option builders
# --------------------------------------------------------------------------------------------


def device_name(options: ReconstructionOptions) -> str:
    """The device SIFT and matching actually run on: 'cuda' or 'cpu'."""
    return "cuda" if pycolmap.has_cuda and options.device in ("auto", "cuda") else "cpu"


def extraction_options(options: ReconstructionOptions) -> pycolmap.FeatureExtractionOptions:
    """pycolmap SIFT extraction options of a run."""
    opts = pycolmap.FeatureExtractionOptions()
    opts.max_image_size = options.max_image_size
    opts.num_threads = options.num_threads
    opts.sift.max_num_features = options.max_num_features
    return opts


def matching_options(options: ReconstructionOptions) -> pycolmap.FeatureMatchingOptions:
    """pycolmap matching options of a run."""
    opts = pycolmap.FeatureMatchingOptions()
    opts.num_threads = options.num_threads
    return opts


def features_key(options: ReconstructionOptions) -> dict:
    """The settings that change SIFT features: a database made with others is stale."""
    return {
        "max_image_size": options.max_image_size,
        "max_num_features": options.max_num_features,
        "camera_mode": options.camera_mode,
    }
