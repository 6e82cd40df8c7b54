"""pycolmap glue: SIFT extraction, pair matching and mapping, with comparable stats per pair method.

`reconstruct` runs the whole COLMAP pipeline for one image folder with a chosen pair set
(CNN retrieval, vocabulary tree, exhaustive, sequential) and writes `stats.json`, so that the
methods can be compared on the number of pairs matched, registered images, points and time.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pycolmap
from tqdm import tqdm

from .errors import MirrorError
from .images import check_names, list_images
from .io_utils import atomic_path, check_writable, write_text_atomic
from .pairs_io import read_pairs

logger = logging.getLogger(__name__)

PAIR_METHODS = ("retrieval", "vocabtree", "exhaustive", "sequential")
CAMERA_MODES = {
    "auto": pycolmap.CameraMode.AUTO,
    "single": pycolmap.CameraMode.SINGLE,
    "per_image": pycolmap.CameraMode.PER_IMAGE,
}
DEVICES = {"auto": pycolmap.Device.auto, "cpu": pycolmap.Device.cpu, "cuda": pycolmap.Device.cuda}
MAPPERS = ("incremental", "global")

DATABASE_NAME = "database.db"
FEATURES_SIDECAR = "features.json"  # SIFT settings of database.db, to detect stale features on resume
STATS_NAME = "stats.json"


@dataclass
class ReconstructionOptions:
    """Settings of one `reconstruct` run (SIFT, pair method, matcher device, mapper)."""

    pairs: str = "retrieval"  # retrieval | vocabtree | exhaustive | sequential
    num_matched: int = 20  # K: neighbours per image for retrieval and vocab tree
    vocab_tree: Path | None = None  # local tree file, required for pairs == "vocabtree"
    vocab_tree_verify: int = 0  # spatially verify this many vocab-tree candidates, keep the best K (0 = off)
    sequential_overlap: int = 10
    max_image_size: int = 1600  # SIFT
    max_num_features: int = 8192  # SIFT
    camera_mode: str = "auto"  # single | per_image | auto
    device: str = "auto"  # auto | cpu | cuda (GPU SIFT/matching when pycolmap has CUDA)
    num_threads: int = -1
    mapper: str = "incremental"  # incremental | global
    mapper_seed: int = -1  # the mapper's random seed (-1: COLMAP's default, not reproducible)
    retrieval_kwargs: dict = field(default_factory=dict)  # extra arguments to pairs.generate_pairs
    database_template: Path | None = None  # start from a copy of this database (shared SIFT features)
    image_names: list[str] | None = None  # reconstruct only these images of the folder (default: all)

    def validate(self) -> None:
        """Raise MirrorError for a bad choice or a missing input file, before any work is done."""
        _check_choice("pairs", self.pairs, PAIR_METHODS)
        _check_choice("camera_mode", self.camera_mode, CAMERA_MODES)
        _check_choice("device", self.device, DEVICES)
        _check_choice("mapper", self.mapper, MAPPERS)
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
            f"cannot read vocabulary tree {path} ({_first_line(exc)}): it needs COLMAP >= 3.12's format; "
            "build one with 'mirror_sfm vocabtree build' (or COLMAP >= 3.12's vocab_tree_builder)"
        ) from None


def _check_choice(name: str, value: str, choices: Iterable[str]) -> None:
    choices = list(choices)
    if value not in choices:
        raise MirrorError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


# --------------------------------------------------------------------------------------------
# pycolmap option builders
# --------------------------------------------------------------------------------------------


def device_name(options: ReconstructionOptions) -> str:
    """The device SIFT and matching actually run on: 'cuda' or 'cpu'."""
    return "cuda" if pycolmap.has_cuda and options.device in ("auto", "cuda") else "cpu"


def _extraction_options(options: ReconstructionOptions) -> pycolmap.FeatureExtractionOptions:
    opts = pycolmap.FeatureExtractionOptions()
    opts.max_image_size = options.max_image_size
    opts.num_threads = options.num_threads
    opts.sift.max_num_features = options.max_num_features
    return opts


def _matching_options(options: ReconstructionOptions) -> pycolmap.FeatureMatchingOptions:
    opts = pycolmap.FeatureMatchingOptions()
    opts.num_threads = options.num_threads
    return opts


def _features_key(options: ReconstructionOptions) -> dict:
    """The settings that change SIFT features: a database made with others is stale."""
    return {
        "max_image_size": options.max_image_size,
        "max_num_features": options.max_num_features,
        "camera_mode": options.camera_mode,
    }


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def check_readable(image_dir: Path, names: list[str]) -> tuple[list[str], list[str]]:
    """Split `names` into (readable, skipped): zero-byte or undecodable files are skipped.

    The check is `mirror_sfm.images.unreadable_reason`, the one every step shares (a full decode at
    reduced size: a truncated JPEG is skipped here, not left to fail in COLMAP or extraction). Files are
    checked on a few threads (Pillow decodes without the GIL); each skipped file is logged once as a warning.
    """
    from concurrent.futures import ThreadPoolExecutor

    paths = [Path(image_dir) / name for name in names]
    readable, skipped = [], []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        reasons = pool.map(_unreadable_reason, paths)
        for name, path, reason in zip(names, paths, tqdm(reasons, total=len(names), desc="checking images",
                                                         unit="img", leave=False, disable=len(names) < 100)):
            if reason is None:
                readable.append(name)
            else:
                logger.warning("skipping unreadable image %s: %s", path, reason)
                skipped.append(name)
    return readable, skipped


def _unreadable_reason(path: Path) -> str | None:
    """Why `path` is no usable image (None: it is); see `mirror_sfm.images.unreadable_reason`."""
    from .images import unreadable_reason

    return unreadable_reason(path)


# --------------------------------------------------------------------------------------------
# Database helpers
# --------------------------------------------------------------------------------------------


def database_images(database: Path) -> dict[str, int]:
    """Map image name -> image id for the images in a COLMAP database (read-only: an older COLMAP's database is
    not migrated by looking at it)."""
    from .database_reader import FeatureDatabase

    with FeatureDatabase(database) as db:
        return {name: image_id for name, (image_id, _) in db.image_ids.items()}


def images_with_features(database: Path) -> set[str]:
    """Names of the database images that have both keypoints and descriptors."""
    with pycolmap.Database.open(str(database)) as db:
        return {
            img.name
            for img in db.read_all_images()
            if db.exists_keypoints(img.image_id) and db.exists_descriptors(img.image_id)
        }


def merge_databases(parts: list[tuple[str, Path]], output: Path) -> Path:
    """Write one database holding the images (cameras, keypoints, descriptors) of every `(prefix, database)`,
    each image renamed `<prefix>/<name>` so that names from different databases cannot clash."""
    with tempfile.TemporaryDirectory(dir=output.parent) as work:
        merged = None
        for i, (prefix, database) in enumerate(parts):
            renamed = Path(work) / f"part{i}.db"
            shutil.copyfile(database, renamed)
            with pycolmap.Database.open(str(renamed)) as db:
                for img in db.read_all_images():
                    img.name = f"{prefix}/{img.name}"
                    db.update_image(img)
            if merged is None:
                merged = renamed
                continue
            target = Path(work) / f"merged{i}.db"
            with pycolmap.Database.open(str(merged)) as a, pycolmap.Database.open(str(renamed)) as b, \
                    pycolmap.Database.open(str(target)) as m:
                pycolmap.Database.merge(a, b, m)
            merged = target
        if merged is None:
            raise MirrorError("no databases to merge")
        with atomic_path(output) as tmp:
            shutil.copyfile(merged, tmp)
    return output


def count_pairs(database: Path) -> tuple[int, int]:
    """Return (matched, verified) distinct unordered image pairs in a database.

    matched: rows of the `matches` table, i.e. every pair the matcher processed, even those
    that got zero matches; verified: two-view geometries with at least one inlier match.
    """
    with pycolmap.Database.open(str(database)) as db:
        matched = db.num_matched_image_pairs()
        _, num_inliers = db.read_two_view_geometry_num_inliers()
        verified = sum(1 for n in num_inliers if n > 0)
    return matched, verified


def clear_matches(database: Path) -> None:
    """Drop matches and two-view geometries so a new pair method starts from features alone."""
    with pycolmap.Database.open(str(database)) as db:
        db.clear_matches()
        db.clear_two_view_geometries()


# --------------------------------------------------------------------------------------------
# Features and matching
# --------------------------------------------------------------------------------------------


def extract_sift(
    database: Path, image_dir: Path, image_names: list[str], options: ReconstructionOptions | None = None
) -> None:
    """Extract SIFT for `image_names` (relative to `image_dir`) into `database`.

    Images already in the database are skipped by COLMAP, so an interrupted run resumes.
    """
    options = options or ReconstructionOptions()
    if not image_names:
        raise MirrorError(f"no images to extract features from in {image_dir}")
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    pycolmap.extract_features(
        database_path=str(database),
        image_path=str(image_dir),
        image_names=list(image_names),
        camera_mode=CAMERA_MODES[options.camera_mode],
        extraction_options=_extraction_options(options),
        device=DEVICES[options.device],
    )


def match_pairs(database: Path, pairs_path: Path, options: ReconstructionOptions | None = None) -> None:
    """Match and verify the pairs listed in a COLMAP/hloc pair file; every name must be in `database`."""
    options = options or ReconstructionOptions()
    database, pairs_path = Path(database), Path(pairs_path)
    if not database.is_file():
        raise MirrorError(f"COLMAP database not found: {database}")
    pairs = read_pairs(pairs_path)  # MirrorError when missing
    if not pairs:
        raise MirrorError(f"pair file holds no pairs: {pairs_path}")
    known = database_images(database)
    unknown = sorted({n for pair in pairs for n in pair if n not in known})
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise MirrorError(f"{len(unknown)} image name(s) in {pairs_path} are not in database {database}: {shown}")
    pairing = pycolmap.ImportedPairingOptions()
    pairing.match_list_path = str(pairs_path)
    pycolmap.match_image_pairs(
        str(database),
        matching_options=_matching_options(options),
        pairing_options=pairing,
        device=DEVICES[options.device],
    )


def match_vocabtree(database: Path, options: ReconstructionOptions) -> None:
    """Match each image with its vocab-tree neighbours (K others: the query itself is ranked first).

    With `vocab_tree_verify` = N, COLMAP spatially verifies the top N candidates and keeps the best K.
    """
    pairing = pycolmap.VocabTreePairingOptions()
    pairing.vocab_tree_path = str(options.vocab_tree)
    pairing.num_images = options.num_matched + 1
    if options.vocab_tree_verify > 0:
        pairing.num_images = max(options.vocab_tree_verify, options.num_matched + 1)
        pairing.num_images_after_verification = options.num_matched + 1
    pairing.num_threads = options.num_threads
    try:
        pycolmap.match_vocabtree(
            str(database),
            matching_options=_matching_options(options),
            pairing_options=pairing,
            device=DEVICES[options.device],
        )
    except (ValueError, RuntimeError) as exc:
        raise MirrorError(f"cannot use vocabulary tree {options.vocab_tree}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def match_exhaustive(database: Path, options: ReconstructionOptions) -> None:
    """Match every image pair."""
    pycolmap.match_exhaustive(str(database), matching_options=_matching_options(options), device=DEVICES[options.device])


def match_sequential(database: Path, options: ReconstructionOptions) -> None:
    """Match each image with the next `sequential_overlap` images in name order."""
    pairing = pycolmap.SequentialPairingOptions()
    pairing.overlap = options.sequential_overlap
    pairing.num_threads = options.num_threads
    pycolmap.match_sequential(
        str(database),
        matching_options=_matching_options(options),
        pairing_options=pairing,
        device=DEVICES[options.device],
    )


def retrieval_pairs(image_dir: Path, out_dir: Path, names: list[str], options: ReconstructionOptions,
                    database: Path | None = None) -> Path:
    """Write the CNN retrieval pair file (global features cached beside it) and return its path.

    With `database` (the run's SIFT database) each image's shortlist is verified with its first SIFT features
    (read-only) unless the retrieval options say `verify: none`; no SIFT is extracted twice.
    """
    from .pairs import generate_pairs  # heavy (torch); only needed for this method

    pairs_path = Path(out_dir) / "pairs-retrieval.txt"
    generate_pairs(
        image_dir,
        pairs_path,
        num_matched=options.num_matched,
        image_names=names,
        features=Path(out_dir) / "global-feats.h5",
        database=database,
        **options.retrieval_kwargs,
    )
    return pairs_path


def run_matching(
    database: Path, image_dir: Path, out_dir: Path, names: list[str], options: ReconstructionOptions
) -> tuple[float, float]:
    """Build the pair set of `options.pairs` and match it; return (pair generation s, matching s)."""
    clear_matches(database)
    t_pairs = 0.0
    t0 = time.perf_counter()
    if options.pairs == "retrieval":
        pairs_path = retrieval_pairs(image_dir, out_dir, names, options, database)
        t_pairs = time.perf_counter() - t0
        logger.info("retrieval pairs (K=%d) in %.1f s", options.num_matched, t_pairs)
        t0 = time.perf_counter()
        match_pairs(database, pairs_path, options)
    elif options.pairs == "vocabtree":
        match_vocabtree(database, options)
    elif options.pairs == "exhaustive":
        match_exhaustive(database, options)
    else:
        match_sequential(database, options)
    t_match = time.perf_counter() - t0
    logger.info("%s matching in %.1f s", options.pairs, t_match)
    return t_pairs, t_match


# --------------------------------------------------------------------------------------------
# Mapping
# --------------------------------------------------------------------------------------------


def run_mapping(database: Path, image_dir: Path, out_dir: Path, options: ReconstructionOptions) -> dict[int, Any]:
    """Map into `out_dir/sparse/<k>`; the previous `sparse` folder is replaced only on success."""
    out_dir = Path(out_dir)
    tmp = out_dir / f".sparse.{os.getpid()}.tmp"  # not mkdtemp: keep the umask's permissions
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        if options.mapper == "global":
            opts = pycolmap.GlobalPipelineOptions()
            opts.num_threads = options.num_threads
            opts.random_seed = options.mapper_seed
            models = pycolmap.global_mapping(str(database), str(image_dir), str(tmp), options=opts)
        else:
            opts = pycolmap.IncrementalPipelineOptions()
            opts.num_threads = options.num_threads
            opts.random_seed = options.mapper_seed
            models = pycolmap.incremental_mapping(str(database), str(image_dir), str(tmp), options=opts)
        final = out_dir / "sparse"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dict(models)


def largest_model(models: dict[int, Any]) -> int | None:
    """Index of the model with the most registered images (then most points), None if there is none."""
    if not models:
        return None
    return max(models, key=lambda k: (models[k].num_reg_images(), models[k].num_points3D()))


def registered_any_model(models: Iterable[Any]) -> int:
    """Images registered in at least one model. COLMAP lets models share up to 20 images, so the sum of the
    model sizes over-counts; on a scene that falls apart this is steadier than the largest model alone."""
    return len({rec.images[i].name for rec in models for i in rec.reg_image_ids()})


def model_stats(models: dict[int, Any]) -> dict:
    """Registered images (largest model, and any model), points and quality of the largest model."""
    best = largest_model(models)
    if best is None:
        return {
            "model": None, "registered": 0, "registered_any_model": 0, "num_models": 0, "sparse_points": 0,
            "observations": 0,
            "mean_track_length": None, "mean_reprojection_error": None,
        }
    rec = models[best]
    return {
        "model": f"sparse/{best}",
        "registered": int(rec.num_reg_images()),
        "registered_any_model": registered_any_model(models.values()),
        "num_models": len(models),
        "sparse_points": int(rec.num_points3D()),
        "observations": int(rec.compute_num_observations()),
        "mean_track_length": float(rec.compute_mean_track_length()),
        "mean_reprojection_error": float(rec.compute_mean_reprojection_error()),
    }


# --------------------------------------------------------------------------------------------
# Pipeline
# --------------------------------------------------------------------------------------------


def prepare_database(
    out_dir: Path, image_dir: Path, names: list[str], options: ReconstructionOptions
) -> tuple[Path, float, bool]:
    """Make `out_dir/database.db` hold SIFT for `names`; return (path, seconds, reused).

    Starts from `options.database_template` when given; otherwise reuses an existing database
    whose SIFT settings match and whose images are a subset of `names` (resume).
    """
    database = Path(out_dir) / DATABASE_NAME
    sidecar = Path(out_dir) / FEATURES_SIDECAR
    key = _features_key(options)
    t0 = time.perf_counter()
    if options.database_template is not None:
        extra = set(database_images(options.database_template)) - set(names)
        if extra:
            raise MirrorError(
                f"database template {options.database_template} holds {len(extra)} image(s) that are not "
                f"readable images of this run, e.g. {sorted(extra)[0]}"
            )
        with atomic_path(database) as tmp:
            shutil.copyfile(options.database_template, tmp)
        logger.info("copied SIFT database from %s", options.database_template)
    elif database.exists() and not _reusable(database, sidecar, names, key):
        database.unlink()
    write_text_atomic(sidecar, json.dumps(key, indent=2) + "\n")  # before extracting: a crash resumes
    present = images_with_features(database) if database.exists() else set()
    missing = [n for n in names if n not in present]
    reused = not missing
    if missing:
        logger.info("extracting SIFT for %d image(s) (%d already in the database)", len(missing), len(present))
        extract_sift(database, image_dir, missing, options)
    seconds = time.perf_counter() - t0
    logger.info("SIFT features ready in %.1f s%s", seconds, " (reused)" if reused else "")
    return database, seconds, reused


def _reusable(database: Path, sidecar: Path, names: list[str], key: dict) -> bool:
    """An existing database can be resumed if made with the same SIFT settings and no extra images."""
    if sidecar.exists():
        try:
            if json.loads(sidecar.read_text()) != key:
                logger.info("SIFT settings changed since %s was made; extracting again", database)
                return False
        except (OSError, ValueError):
            return False
    extra = set(database_images(database)) - set(names)
    if extra:
        logger.info("%s holds %d image(s) not in this run (e.g. %s); extracting again",
                    database, len(extra), sorted(extra)[0])
        return False
    return True


def list_usable_images(image_dir: Path, names: list[str] | None = None) -> tuple[list[str], list[str], list[str]]:
    """Return (found, readable, skipped) image names (all of `image_dir`, or `names`); MirrorError when none can be read."""
    if names is not None:
        check_names(names, image_dir)
    found = list(names) if names is not None else list_images(image_dir)
    readable, skipped = check_readable(image_dir, found)
    if not readable:
        raise MirrorError(f"no readable image in {image_dir} ({len(skipped)} skipped as unreadable)")
    return found, readable, skipped


def reconstruct(image_dir: Path, out_dir: Path, options: ReconstructionOptions | None = None) -> dict:
    """Run SIFT, the chosen pair method, matching and mapping; write and return `out_dir/stats.json`.

    Unreadable images are skipped (and listed in the stats); stats.json is written only when
    the whole run succeeds, so an older one survives a failed run.
    """
    options = options or ReconstructionOptions()
    image_dir, out_dir = Path(image_dir), Path(out_dir)
    options.validate()
    check_writable(out_dir / "stats.json")
    t_start = time.perf_counter()
    found, names, skipped = list_usable_images(image_dir, options.image_names)
    out_dir.mkdir(parents=True, exist_ok=True)
    logger.info("reconstructing %d image(s) of %s with %s pairs", len(names), image_dir, options.pairs)

    database, t_feat, reused = prepare_database(out_dir, image_dir, names, options)
    names, skipped = _drop_failed_extractions(database, image_dir, names, skipped)
    t_pairs, t_match = run_matching(database, image_dir, out_dir, names, options)
    matched, verified = count_pairs(database)
    logger.info("%d pairs matched, %d verified", matched, verified)

    t0 = time.perf_counter()
    models = run_mapping(database, image_dir, out_dir, options)
    t_map = time.perf_counter() - t0
    mstats = model_stats(models)
    logger.info("mapping in %.1f s: %d/%d images registered, %d points",
                t_map, mstats["registered"], len(found), mstats["sparse_points"])
    if not models:
        logger.warning("mapping produced no model for %s", image_dir)

    stats = {
        "method": options.pairs,
        "image_dir": str(image_dir),
        "images": len(found),
        "images_skipped": skipped,
        "registered": mstats.pop("registered"),
        "pairs_to_match": matched,
        "verified_pairs": verified,
        **mstats,
        "num_matched": options.num_matched if options.pairs in ("retrieval", "vocabtree") else None,
        **({"verify": _verify_record(options)} if options.pairs == "retrieval" else {}),
        "mapper": options.mapper,
        "features_reused": reused,
        "time_s": {
            "features": round(t_feat, 3),
            "pairs": round(t_pairs, 3),
            "matching": round(t_match, 3),
            "mapping": round(t_map, 3),
            "total": round(time.perf_counter() - t_start, 3),
        },
        "pycolmap_version": pycolmap.__version__,
        "device": device_name(options),
    }
    write_text_atomic(out_dir / STATS_NAME, json.dumps(stats, indent=2) + "\n")
    logger.info("wrote %s (total %.1f s)", out_dir / STATS_NAME, stats["time_s"]["total"])
    return stats


def _verify_record(options: ReconstructionOptions) -> dict:
    """How the retrieval pairs were verified (stats.json): method, shortlist and SIFT features used."""
    from .verify import VerifyOptions

    pairs_options = options.retrieval_kwargs.get("options")
    verify = getattr(pairs_options, "verify", None) or VerifyOptions()
    return {"method": verify.method, "shortlist": verify.shortlist, "features": verify.num_features}


def _drop_failed_extractions(
    database: Path, image_dir: Path, names: list[str], skipped: list[str]
) -> tuple[list[str], list[str]]:
    """Move images COLMAP could not read (no features in the database) to the skipped list."""
    present = images_with_features(database)
    failed = [n for n in names if n not in present]
    for name in failed:
        logger.warning("skipping image %s: COLMAP could not extract features from it", Path(image_dir) / name)
    if failed and len(failed) == len(names):
        raise MirrorError(f"COLMAP could not read any image in {image_dir}")
    return [n for n in names if n in present], sorted(skipped + failed)
