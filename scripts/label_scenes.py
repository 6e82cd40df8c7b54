"""Label every training scene with gtgen: synthetic renders and the real scenes, GL3D layout, one command.

    python scripts/label_scenes.py                      # everything -> outputs/labels/
    python scripts/label_scenes.py --only synthetic     # the synthetic set only (a few minutes on 2 cores)
    python scripts/label_scenes.py --only real --sparse alexander=path/to/sparse/0 --force

Per scene ROOT/<scene>/ (GL3D layout, see ``gtgen.overlap``): image_list.txt, geolabel/{cameras.txt,
common_track.txt, mesh_overlap.txt, mask.bin}, masks/*.png (per positive pair, --png-size grid), triplets.json
(image_dir: the images the labels refer to), mesh.ply, label_stats.json. Synthetic scenes also hold their renders
(images/) and true model (sparse/); real scenes their model (reconstruction/, when reconstructed here).

- **Synthetic** (``synth_NN_<path>``): ``gtgen.synthetic`` procedural box scenes along aerial, street and orbit
  paths (seeds, box counts, overlaps, jitter, focal lengths and image sizes vary), labelled with the true model
  and mesh. Aerial and street paths give strong and weak positives; orbits see the whole scene from every view,
  so they give strong positives only (viewpoint variety).
- **Real**: every folder under ``--data`` (default ../shared/data/scenes), each with images/; ``--scenes`` picks
  some and sets their order (smallest first finishes the most scenes in a given time). The sparse model is, in
  order, ``--sparse SCENE=DIR``, the
  scene's own ``sparse/``, the largest exhaustive model under ``--models-from`` (the reconstruction benchmark's
  outputs), else a reconstruction made here (exhaustive pairs, 2,048 SIFT, incremental mapping; global mapping on
  the same SIFT when that registers under half the images). Mesh: ``gtgen mesh`` of the sparse
  model, or for mold_gold_cape its photogrammetry mesh aligned by ``gtgen align``.

Resumable: a scene whose triplets.json exists is skipped (its row comes from label_stats.json) unless --force.
A scene that fails (any error: no images, no model, meshing, ...) gets a row with its error and the run goes on to
the next one. ROOT/summary.md and ROOT/summary.json are rewritten after every scene (so a run that is still going
shows what is done); the table is printed at the end. Exit status 1 if a scene failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import scipy.sparse as sp  # noqa: E402
from tqdm import tqdm  # noqa: E402
from tqdm.contrib.logging import logging_redirect_tqdm  # noqa: E402

from mirror_sfm.console import add_stderr_handler  # noqa: E402
from mirror_sfm.errors import MirrorError  # noqa: E402
from mirror_sfm.io_utils import write_text_atomic  # noqa: E402

logger = logging.getLogger("label_scenes")

STATS_NAME = "label_stats.json"
ALIGNED_MESHES = {"mold_gold_cape": "mesh/moldCape.obj"}  # provided meshes in their own frame: aligned, not made


# ----------------------------------------------------------------------------- synthetic scene list


@dataclasses.dataclass
class SynthSpec:
    """One synthetic scene: a procedural scene kind, its box count and the ``SynthOptions`` fields that vary."""

    path: str
    seed: int
    boxes: int
    views: int
    size: tuple[int, int]
    overlap: float = 0.7
    jitter: float = 0.05
    elevations: tuple[float, ...] = (15.0, 35.0)
    focal_scale: float = 0.8  # focal = focal_scale x the long side
    kind: str = "boxes"

    def name(self, k: int) -> str:
        return f"synth_{k:02d}_{self.path}"


# aerial: lawnmower grids with 50-70 % neighbour overlap -> strong (neighbours) and weak (diagonals, next-but-one);
# street: walks along the scene -> overlap falls off with distance; orbit: whole scene in every view (strong only).
_AERIAL = [  # overlap, jitter, views, boxes, size, focal scale
    (0.6, 0.2, 30, 5, (480, 360), 0.8),
    (0.5, 0.2, 30, 7, (640, 480), 0.8),
    (0.7, 0.1, 36, 3, (320, 240), 0.8),
    (0.6, 0.3, 36, 6, (480, 360), 0.6),
    (0.55, 0.25, 25, 4, (640, 480), 1.0),
    (0.7, 0.2, 40, 7, (480, 360), 0.8),
    (0.65, 0.15, 30, 2, (320, 240), 0.8),
    (0.55, 0.3, 32, 5, (640, 480), 0.7),
    (0.6, 0.1, 28, 6, (400, 300), 0.9),
    (0.7, 0.3, 36, 4, (480, 360), 0.8),
    (0.5, 0.15, 36, 3, (640, 360), 0.8),
    (0.6, 0.25, 30, 7, (320, 240), 1.0),
    (0.65, 0.2, 34, 1, (480, 360), 0.8),
]
_STREET = [  # views, jitter, boxes, size, focal scale
    (30, 0.1, 5, (480, 360), 0.8),
    (40, 0.05, 7, (640, 480), 0.8),
    (32, 0.15, 3, (320, 240), 0.7),
    (36, 0.1, 6, (480, 360), 0.9),
    (30, 0.2, 4, (640, 360), 0.8),
    (40, 0.1, 2, (400, 300), 0.6),
    (34, 0.05, 5, (320, 240), 1.0),
    (30, 0.15, 7, (480, 360), 0.8),
]
_ORBIT = [  # views, elevations, boxes, size
    (30, (5.0,), 7, (480, 360)),
    (24, (5.0, 30.0), 6, (640, 480)),
    (24, (10.0, 45.0), 4, (320, 240)),
]


def synthetic_specs() -> list[SynthSpec]:
    """The synthetic set in order (aerial and street interleaved first, so any prefix has both strong and weak)."""
    aerial = [SynthSpec("aerial", 0, b, v, s, overlap=o, jitter=j, focal_scale=f) for o, j, v, b, s, f in _AERIAL]
    street = [SynthSpec("street", 0, b, v, s, jitter=j, focal_scale=f) for v, j, b, s, f in _STREET]
    orbit = [SynthSpec("orbit", 0, b, v, s, elevations=e) for v, e, b, s in _ORBIT]
    specs = []
    for k in range(max(len(aerial), len(street))):
        specs += aerial[k : k + 1] + street[k : k + 1]
    specs += orbit
    for k, spec in enumerate(specs):
        spec.seed = 100 + k
    return specs


# ----------------------------------------------------------------------------- shared steps


@dataclasses.dataclass
class LabelOptions:
    """`resolution` / `real_resolution`: ray grid long side for synthetic / real scenes (real meshes are finer in the
    image: photos where the object is small, Poisson meshes of 20-60k triangles); `png_size`: per-pair PNG masks
    (rows, cols); `engine`: visibility engine."""

    resolution: int = 256
    real_resolution: int = 512
    png_size: tuple[int, int] = (32, 32)
    engine: str = "auto"
    force: bool = False


def overlap_options(options: LabelOptions, real: bool):
    from gtgen.overlap import OverlapOptions

    return OverlapOptions(
        resolution=options.real_resolution if real else options.resolution,
        png_size=options.png_size,
        engine=options.engine,
        cache=real,
        progress=False,
    )  # synthetic: quick, no map cache


def clear_masks(out: Path) -> None:
    """Drop PNG masks of an earlier or interrupted labelling: they may be of pairs that are no longer positive."""
    shutil.rmtree(out / "masks", ignore_errors=True)


def count_faces(mesh_path: Path) -> int:
    from gtgen.visibility import load_mesh

    return int(len(load_mesh(mesh_path).faces))


def label_row(scene: str, kind: str, images: int, result, faces: int, seconds: float) -> dict:
    """Summary numbers of one labelled scene (also written to its label_stats.json)."""
    from gtgen.ratios import symmetric_ratios

    co_pairs = sp.triu(result.co, k=1).tocsr()
    ct_pairs = sp.triu(symmetric_ratios(result.scene.ct), k=1).tocsr()
    return {
        "scene": scene,
        "kind": kind,
        "images": images,
        "registered": len(result.scene.registered),
        "triangles": faces,
        "pairs_ct_ge_0.2": int((ct_pairs.data >= 0.2).sum()),
        "pairs_co_ge_0.5": int((co_pairs.data >= 0.5).sum()),
        "anchors": len(result.anchors),
        "anchors_strong": sum(1 for a in result.anchors if a.strong),
        "anchors_weak": sum(1 for a in result.anchors if a.weak),
        "anchors_both": sum(1 for a in result.anchors if a.strong and a.weak),
        "strong_pairs": sum(len(a.strong) for a in result.anchors),
        "weak_pairs": sum(len(a.weak) for a in result.anchors),
        "mask_pairs": result.num_mask_pairs,
        "time_s": round(seconds, 1),
    }


def finish(out: Path, row: dict, **extra) -> dict:
    row = {**row, **extra}
    write_text_atomic(out / STATS_NAME, json.dumps(row, indent=2) + "\n")
    return row


def done_row(scene: str, out: Path) -> dict | None:
    """The stored row of a scene labelled before (None: not done); rebuilt from triplets.json if stats are missing."""
    if not (out / "triplets.json").is_file():
        return None
    if (out / STATS_NAME).is_file():
        return {**json.loads((out / STATS_NAME).read_text()), "resumed": True}
    manifest = json.loads((out / "triplets.json").read_text())
    anchors = manifest["anchors"]
    return {
        "scene": scene,
        "images": len(manifest["images"]),
        "anchors": len(anchors),
        "anchors_strong": sum(1 for a in anchors if a["strong"]),
        "anchors_weak": sum(1 for a in anchors if a["weak"]),
        "anchors_both": sum(1 for a in anchors if a["strong"] and a["weak"]),
        "resumed": True,
    }


# ----------------------------------------------------------------------------- synthetic scenes


def label_synthetic(
    name: str,
    spec: SynthSpec,
    out: Path,
    options: LabelOptions,
    views: int | None = None,
    size: tuple[int, int] | None = None,
) -> dict:
    """Render the scene (skipped when synth.json exists), then label it with its true model and mesh."""
    from gtgen.overlap import compute_overlap
    from gtgen.synthetic import SynthOptions, synthesize_procedural

    t0 = time.perf_counter()
    width, height = size or spec.size
    synth = SynthOptions(
        num_views=views or spec.views,
        width=width,
        height=height,
        focal=spec.focal_scale * max(width, height),
        path=spec.path,
        seed=spec.seed,
        elevations=spec.elevations,
        overlap=spec.overlap,
        jitter=spec.jitter,
        progress=False,
    )
    if options.force or not (out / "synth.json").is_file():
        logger.info(
            "[%s] rendering %d %s views of %d boxes (%dx%d, seed %d)",
            name,
            synth.num_views,
            spec.path,
            spec.boxes,
            width,
            height,
            spec.seed,
        )
        synthesize_procedural(spec.kind, out, synth, num_boxes=spec.boxes)
    clear_masks(out)
    result = compute_overlap(
        out / "sparse", out / "mesh.ply", out, overlap_options(options, real=False), images_dir=out / "images"
    )
    row = label_row(name, "synthetic", synth.num_views, result, count_faces(out / "mesh.ply"), time.perf_counter() - t0)
    return finish(out, row, path=spec.path, seed=spec.seed, boxes=spec.boxes, size=[width, height])


# ----------------------------------------------------------------------------- real scenes


def real_scenes(data: Path) -> list[str]:
    """Every scene folder under `data` (not hidden), by name; one without images/ is kept (it fails, reported)."""
    if not data.is_dir():
        return []
    return sorted(d.name for d in data.iterdir() if d.is_dir() and not d.name.startswith("."))


RECONSTRUCTIONS = ("reconstruction", "reconstruction-global")  # made here: incremental, then the global fallback
MIN_REGISTERED_FRACTION = 0.5  # below this share of the images, the incremental model is retried with global mapping


def _recorded_stats(folder: Path) -> dict:
    path = folder / "stats.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _best_recorded(out: Path, with_model: bool = False) -> tuple[Path, dict] | None:
    """(folder, stats.json) of the reconstruction made here that registered most (the first on a tie); with
    `with_model`, only among those whose model folder exists. None: no such reconstruction."""
    recorded = [(out / name, _recorded_stats(out / name)) for name in RECONSTRUCTIONS]
    recorded = [
        (f, st) for f, st in recorded if st and (not with_model or (st.get("model") and (f / st["model"]).is_dir()))
    ]
    return max(recorded, key=lambda item: item[1].get("registered") or 0, default=None)


def reconstruction_stats(out: Path) -> dict:
    """Numbers of the reconstruction made here that registered most (empty if the model came from elsewhere)."""
    best = _best_recorded(out)
    if best is None:
        return {}
    stats = best[1]
    return {
        "recon_mapper": stats.get("mapper"),
        "recon_registered": stats.get("registered"),
        "recon_registered_any_model": stats.get("registered_any_model"),
        "recon_models": stats.get("num_models"),
        "recon_verified_pairs": stats.get("verified_pairs"),
        "recon_points": stats.get("sparse_points"),
        "recon_time_s": (stats.get("time_s") or {}).get("total"),
    }


def _is_model(path: Path) -> bool:
    return all((path / f"{n}.bin").is_file() or (path / f"{n}.txt").is_file() for n in ("cameras", "images"))


def largest_model_dir(path: Path) -> Path | None:
    """`path` if it is a COLMAP model, else its numbered sub-model with the most registered images (None: none)."""
    import pycolmap

    if _is_model(path):
        return path
    candidates = [d for d in sorted(path.iterdir()) if d.is_dir() and _is_model(d)] if path.is_dir() else []
    if not candidates:
        return None
    sizes = {d: pycolmap.Reconstruction(d).num_reg_images() for d in candidates}
    return max(candidates, key=lambda d: (sizes[d], -candidates.index(d)))


def find_sparse(
    scene: str, scene_dir: Path, out: Path, given: dict[str, Path], models_from: Path | None, force: bool
) -> tuple[Path, str]:
    """(model folder, where it came from): --sparse, the scene's sparse/, the benchmark's model, or a new one."""
    if scene in given:
        model = largest_model_dir(given[scene])
        if model is None:
            raise MirrorError(f"--sparse {scene}={given[scene]}: no COLMAP model there")
        return model, "given"
    for source, folder in (
        ("scene", scene_dir / "sparse"),
        ("benchmark", models_from / scene / "exhaustive" / "sparse" if models_from else None),
    ):
        if folder is not None and folder.is_dir():
            model = largest_model_dir(folder)
            if model is not None:
                return model, source
    return reconstruct_here(scene, scene_dir, out, force), "reconstructed"


def _made_here(out: Path) -> Path | None:
    """The model of a finished reconstruction made here before (the one that registered most), else None."""
    best = _best_recorded(out, with_model=True)
    return None if best is None else best[0] / best[1]["model"]


def reconstruct_here(scene: str, scene_dir: Path, out: Path, force: bool = False) -> Path:
    """Exhaustive pairs, 2,048 SIFT, incremental mapping; if that registers under half the images, global mapping
    (GLOMAP's) on the same SIFT, kept if it registers more. lund_street, a forward-moving street sequence, is the case:
    incremental mapping registers 2 of 29 (every initial pair is rejected), global mapping 29."""
    from mirror_sfm.colmap import ReconstructionOptions, reconstruct

    incremental, fallback = (out / name for name in RECONSTRUCTIONS)
    stats = {} if force else _recorded_stats(incremental)  # a finished run is reused (stats.json is written last)
    if not stats:
        logger.info("[%s] no sparse model: reconstructing (exhaustive pairs, 2048 SIFT)", scene)
        options = ReconstructionOptions(pairs="exhaustive", max_num_features=2048)
        stats = reconstruct(scene_dir / "images", incremental, options)
    if stats["registered"] < MIN_REGISTERED_FRACTION * stats["images"] and (force or not _recorded_stats(fallback)):
        logger.warning(
            "[%s] incremental mapping registered %d of %d images; trying global mapping on the same SIFT",
            scene,
            stats["registered"],
            stats["images"],
        )
        options = ReconstructionOptions(
            pairs="exhaustive", max_num_features=2048, mapper="global", database_template=incremental / "database.db"
        )
        reconstruct(scene_dir / "images", out / RECONSTRUCTIONS[1], options)
    made = _made_here(out)
    if made is None:
        raise MirrorError(f"{scene}: the reconstruction produced no model")
    return made


def _gtgen_cli(*args: str) -> None:
    """Run `python -m gtgen ARGS` (used when a gtgen step has no library function in this checkout)."""
    cmd = [sys.executable, "-m", "gtgen", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise MirrorError(f"{' '.join(cmd)} failed (exit {proc.returncode}): {' | '.join(tail)}")


def make_mesh(scene: str, scene_dir: Path, sparse: Path, mesh_path: Path, force: bool) -> str:
    """Write `mesh_path` in the model's frame (skipped when it exists); return how it was made."""
    if scene in ALIGNED_MESHES:
        source = scene_dir / ALIGNED_MESHES[scene]
        how = f"aligned {source.name}"
        if mesh_path.is_file() and not force:
            return how
        logger.info("[%s] aligning %s to the model", scene, source)
        try:
            from gtgen.align import align_mesh_file
        except ImportError:
            _gtgen_cli("align", "--mesh", str(source), "--sparse", str(sparse), "--out", str(mesh_path))
        else:
            align_mesh_file(source, sparse, mesh_path, transform_out=mesh_path.with_name("align.json"))
        return how
    how = "gtgen mesh"
    if mesh_path.is_file() and not force:
        return how
    logger.info("[%s] meshing %s", scene, sparse)
    try:
        from gtgen.meshing import mesh_reconstruction_file
    except ImportError:
        _gtgen_cli("mesh", "--sparse", str(sparse), "--out", str(mesh_path))
    else:
        mesh_reconstruction_file(sparse, mesh_path, image_dir=scene_dir / "images")
    return how


def label_real(
    scene: str, scene_dir: Path, out: Path, options: LabelOptions, given: dict[str, Path], models_from: Path | None
) -> dict:
    from gtgen.overlap import compute_overlap
    from mirror_sfm.images import list_images

    t0 = time.perf_counter()
    images = scene_dir / "images"
    if not images.is_dir():
        raise MirrorError(f"image folder not found: {images}")
    sparse, source = find_sparse(scene, scene_dir, out, given, models_from, options.force)
    logger.info("[%s] sparse model %s (%s)", scene, sparse, source)
    mesh_path = out / "mesh.ply"
    how = make_mesh(scene, scene_dir, sparse, mesh_path, options.force)
    clear_masks(out)
    result = compute_overlap(sparse, mesh_path, out, overlap_options(options, real=True), images_dir=images)
    row = label_row(scene, "real", len(list_images(images)), result, count_faces(mesh_path), time.perf_counter() - t0)
    extra = reconstruction_stats(out) if source == "reconstructed" else {}
    return finish(out, row, sparse=str(sparse), sparse_source=source, mesh=how, **extra)


# ----------------------------------------------------------------------------- driver


def summary_table(rows: list[dict]) -> str:
    lines = [
        "| scene | images | registered | triangles | pairs CT≥0.2 | pairs CO≥0.5 | anchors (strong / weak / both) "
        "| time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        g = lambda k, r=r: "–" if r.get(k) is None else r[k]  # noqa: E731
        t = f"{r['time_s']:.1f}" if isinstance(r.get("time_s"), (int, float)) else "–"
        if "error" in r:
            error = " ".join(str(r["error"]).split()).replace("|", "/")
            lines.append(f"| {r['scene']} | {g('images')} | failed: {error} | | | | | {t} |")
            continue
        lines.append(
            f"| {r['scene']} | {g('images')} | {g('registered')} | {g('triangles')} | {g('pairs_ct_ge_0.2')} "
            f"| {g('pairs_co_ge_0.5')} | {g('anchors')} ({g('anchors_strong')} / {g('anchors_weak')} / "
            f"{g('anchors_both')}) | {t} |"
        )
    return "\n".join(lines)


def merged_summary(path: Path, rows: list[dict]) -> list[dict]:
    """Rows of earlier runs (other scenes) and this run's, synthetic scenes first, then by name."""
    old = json.loads(path.read_text()) if path.is_file() else []
    by_scene = {r["scene"]: r for r in old}
    by_scene.update({r["scene"]: r for r in rows})
    return sorted(by_scene.values(), key=lambda r: (not r["scene"].startswith("synth_"), r["scene"]))


def write_summary(root: Path, rows: list[dict]) -> None:
    everything = merged_summary(root / "summary.json", rows)
    write_text_atomic(root / "summary.json", json.dumps(everything, indent=2) + "\n")
    write_text_atomic(root / "summary.md", summary_table(everything) + "\n")


def count_images(images: Path) -> int | None:
    try:
        from mirror_sfm.images import list_images

        return len(list_images(images))
    except Exception:  # noqa: BLE001 - only for the row of a failed scene
        return None


def unknown_scene(scene: str, data: Path) -> dict:
    raise MirrorError(f"no such scene (not a synthetic scene of this run, no folder {data / scene})")


def _sparse_arg(text: str) -> tuple[str, Path]:
    scene, sep, path = text.partition("=")
    if not sep or not scene or not path:
        raise argparse.ArgumentTypeError(f"expected SCENE=DIR, got {text!r}")
    return scene, Path(path)


def _size_arg(text: str) -> tuple[int, int]:
    try:
        w, h = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    return w, h


def _grid_arg(text: str) -> tuple[int, int]:
    parts = [int(p) for p in text.lower().split("x")]
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--root", type=Path, default=REPO / "outputs" / "labels", help="output root (default outputs/labels)"
    )
    p.add_argument("--only", choices=["all", "synthetic", "real"], default="all")
    p.add_argument(
        "--scenes",
        nargs="+",
        metavar="NAME",
        help="only these scenes, in this order (names as in the summary); an unknown name is a failed row",
    )
    p.add_argument("--force", action="store_true", help="redo scenes whose triplets.json exists (and their meshes)")
    p.add_argument(
        "--synthetic",
        type=int,
        default=len(synthetic_specs()),
        metavar="N",
        help="number of synthetic scenes (default all %(default)s)",
    )
    p.add_argument("--views", type=int, help="override the views per synthetic scene (e.g. tiny test runs)")
    p.add_argument("--size", type=_size_arg, metavar="WxH", help="override the synthetic image size")
    p.add_argument(
        "--data",
        type=Path,
        default=REPO.parent / "shared" / "data" / "scenes",
        help="real scenes: every folder here, each with images/ (default ../shared/data/scenes)",
    )
    p.add_argument(
        "--sparse",
        type=_sparse_arg,
        action="append",
        default=[],
        metavar="SCENE=DIR",
        help="use this COLMAP model for a real scene (a model folder, or one of numbered models)",
    )
    p.add_argument(
        "--models-from",
        type=Path,
        default=REPO / "outputs" / "bench_reconstruct",
        help="reuse <DIR>/<scene>/exhaustive/sparse models when present (default outputs/bench_reconstruct)",
    )
    p.add_argument(
        "--resolution",
        type=int,
        default=LabelOptions.resolution,
        help="ray grid long side, synthetic scenes (default %(default)s)",
    )
    p.add_argument(
        "--real-resolution",
        type=int,
        default=LabelOptions.real_resolution,
        help="ray grid long side, real scenes (default %(default)s)",
    )
    p.add_argument(
        "--png-size",
        type=_grid_arg,
        default=LabelOptions.png_size,
        metavar="N|ROWSxCOLS",
        help="per-pair PNG mask grid (default 32)",
    )
    p.add_argument("--engine", default="auto", choices=["auto", "embree", "numpy", "pyrender"])
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name in ("label_scenes", "gtgen", "mirror_sfm"):
        add_stderr_handler(logging.getLogger(name))
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.INFO)
    options = LabelOptions(args.resolution, args.real_resolution, args.png_size, args.engine, args.force)
    given = dict(args.sparse)

    jobs = []  # (scene name, function producing its row)
    if args.only in ("all", "synthetic"):
        for k, spec in enumerate(synthetic_specs()[: args.synthetic]):
            name = spec.name(k)
            jobs.append(
                (
                    name,
                    lambda name=name, spec=spec: label_synthetic(
                        name, spec, args.root / name, options, args.views, args.size
                    ),
                )
            )
    if args.only in ("all", "real"):
        found = real_scenes(args.data)
        if not found:
            logger.error("no scene folder under %s", args.data)
        for scene in found:
            jobs.append(
                (
                    scene,
                    lambda scene=scene: label_real(
                        scene, args.data / scene, args.root / scene, options, given, args.models_from
                    ),
                )
            )
    if args.scenes:
        by_name = dict(jobs)
        jobs = [(s, by_name.get(s, lambda s=s: unknown_scene(s, args.data))) for s in dict.fromkeys(args.scenes)]
    if not jobs:
        print("label_scenes: error: no scene to label", file=sys.stderr)
        return 2

    rows, failed = [], 0
    with logging_redirect_tqdm(loggers=[logging.getLogger(n) for n in ("label_scenes", "gtgen", "mirror_sfm")]):
        for name, run in tqdm(jobs, desc="scenes", unit="scene", disable=None):  # no bar when not a terminal
            out = args.root / name
            row = None if args.force else done_row(name, out)
            if row is not None:
                logger.info("[%s] done before (triplets.json exists): skipped", name)
                rows.append(row)
                continue
            logger.info("[%s] labelling (%d/%d)", name, len(rows) + 1, len(jobs))
            t0 = time.perf_counter()
            try:
                row = run()
            except Exception as exc:  # noqa: BLE001 - one scene's failure must not stop the others
                expected = isinstance(exc, MirrorError)
                message = str(exc) if expected else f"{type(exc).__name__}: {exc}"
                logger.error("[%s] failed: %s", name, message, exc_info=not expected)
                kind = "synthetic" if name.startswith("synth_") else "real"
                rows.append(
                    {
                        "scene": name,
                        "kind": kind,
                        "error": message,
                        "images": None if kind == "synthetic" else count_images(args.data / name / "images"),
                        "time_s": round(time.perf_counter() - t0, 1),
                        **({} if kind == "synthetic" else reconstruction_stats(out)),
                    }
                )
                failed += 1
                write_summary(args.root, rows)
                continue
            logger.info(
                "[%s] %d/%d images registered, %d triangles, %d pairs CT>=0.2, %d pairs CO>=0.5, %d anchors "
                "(%d with strong, %d with weak, %d both) in %.1f s",
                name,
                row["registered"],
                row["images"],
                row["triangles"],
                row["pairs_ct_ge_0.2"],
                row["pairs_co_ge_0.5"],
                row["anchors"],
                row["anchors_strong"],
                row["anchors_weak"],
                row["anchors_both"],
                row["time_s"],
            )
            rows.append(row)
            write_summary(args.root, rows)
    write_summary(args.root, rows)
    print(summary_table(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
