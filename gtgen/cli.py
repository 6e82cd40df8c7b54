"""`gtgen` command line: GL3D-style overlap ground truth from a reconstruction and its mesh.

    gtgen overlap --sparse SPARSE_DIR --mesh MESH_FILE -o OUT_DIR [--images DIR] [--resolution N]
                  [--mask-size 32] [--t-sfm 0.2] ...
    gtgen triplets SCENE_DIR [-o MANIFEST] [--strong LO HI] [--weak LO HI] [--t-sfm T]
    gtgen synth (--mesh MESH_FILE | --procedural boxes|box) -o OUT_DIR [--views 24] [--size 640x480]
                [--focal F] [--path orbit|aerial|street] [--seed 0] [--up z] ...
    gtgen mesh --sparse SPARSE_DIR -o MESH.ply [--images DIR] [--method auto|sparse-poisson|dense]
    gtgen align --mesh MESH_IN --sparse SPARSE_DIR -o MESH_OUT [--transform-out T.json]

`--out` is accepted for `-o/--output` everywhere. The mesh commands need the `gtgen` extra
(trimesh, embreex, pyrender): pip install 'mirror_sfm[gtgen]'.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path

from mirror_sfm import __version__
from mirror_sfm.cli_options import command_parser, log_level, main_parser
from mirror_sfm.console import add_stderr_handler, run_command
from mirror_sfm.errors import MirrorError
from mirror_sfm.io_utils import check_writable

logger = logging.getLogger("gtgen")


# Packages of the `gtgen` extra each command needs (embreex is optional: ray casting falls back to numpy).
EXTRA = "pip install 'mirror_sfm[gtgen]'"
NEEDS = {"overlap": ("trimesh",), "synth": ("trimesh", "pyrender"), "mesh": ("trimesh",), "align": ("trimesh",)}


def require_extra(command: str, engine: str | None = None) -> None:
    """One MirrorError line naming the missing packages of the `gtgen` extra that `command` needs."""
    needed = NEEDS.get(command, ()) + (("pyrender",) if engine == "pyrender" else ())
    missing = [module for module in dict.fromkeys(needed) if not _installed(module)]
    if missing:
        raise MirrorError(f"gtgen {command} needs {', '.join(missing)} (not installed): {EXTRA}")


def _installed(module: str) -> bool:
    """Whether `module` can be found, without importing it (a failed import can leave a package half-loaded)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _output_arg(p: argparse.ArgumentParser, help: str) -> None:
    """-o/--output (and --out, the older spelling) into `args.out`."""
    p.add_argument("-o", "--output", "--out", dest="out", type=Path, required=True, metavar="OUT", help=help)


def _grid_size(text: str) -> tuple[int, int]:
    """'32' -> (32, 32); '24x32' -> (24 rows, 32 cols)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or ROWSxCOLS, got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected N or ROWSxCOLS with positive sizes, got {text!r}")
    return parts[0], parts[1]


def _add_triplet_args(p: argparse.ArgumentParser) -> None:
    from .triplets import TripletOptions

    d = TripletOptions()
    g = p.add_argument_group("positives (combined overlap ratio CO)")
    g.add_argument("--t-sfm", type=float, default=d.t_sfm, help="symmetric common-track ratio that makes CO = 1")
    g.add_argument(
        "--strong",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        default=list(d.strong),
        help="CO range of strong positives",
    )
    g.add_argument(
        "--weak", type=float, nargs=2, metavar=("LO", "HI"), default=list(d.weak), help="CO range of weak positives"
    )


def _triplet_options(args):
    from .triplets import TripletOptions

    return TripletOptions(strong=tuple(args.strong), weak=tuple(args.weak), t_sfm=args.t_sfm)


def cmd_overlap(args) -> None:
    from .overlap import OverlapOptions, compute_overlap

    options = OverlapOptions(
        resolution=args.resolution,
        mask_size=args.mask_size,
        png_size=args.png_size,
        write_pngs=not args.no_pngs,
        mask_min_fraction=args.mask_min_fraction,
        mask_min_ratio=args.mask_min_ratio,
        element_size=args.element_size,
        engine=args.engine,
        triplets=_triplet_options(args),
        cache=not args.no_cache,
        min_visible_fraction=args.min_visible_fraction,
    )
    result = compute_overlap(args.sparse, args.mesh, args.out, options, images_dir=args.images)
    print(
        f"{len(result.scene.registered)} images, {result.mo.nnz} MO ratios, {result.num_mask_pairs} mask pairs, "
        f"{len(result.anchors)} anchors -> {args.out}"
    )


def cmd_triplets(args) -> None:
    from .overlap import triplets_from_geolabel

    out = args.output or args.scene / "triplets.json"
    anchors = triplets_from_geolabel(args.scene, out, _triplet_options(args))
    print(f"{len(anchors)} anchors -> {out}")


def _image_size(text: str) -> tuple[int, int]:
    """'640x480' -> (640 wide, 480 high)."""
    try:
        w, h = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if min(w, h) < 1:
        raise argparse.ArgumentTypeError(f"expected positive WIDTHxHEIGHT, got {text!r}")
    return w, h


def cmd_synth(args) -> None:
    from .synthetic import SynthOptions, synthesize_file, synthesize_procedural

    options = SynthOptions(
        num_views=args.views,
        width=args.size[0],
        height=args.size[1],
        focal=args.focal,
        path=args.path,
        seed=args.seed,
        up=args.up,
        elevations=tuple(args.elevations),
        azimuth=args.azimuth,
        overlap=args.overlap,
        jitter=args.jitter,
        num_points=args.points,
        jpeg_quality=args.quality,
    )
    if args.procedural:
        result = synthesize_procedural(args.procedural, args.out, options, num_boxes=args.boxes)
    else:
        result = synthesize_file(args.mesh, args.out, options)
    print(
        f"{len(result.names)} views, {result.num_points} 3D points (mean track length "
        f"{result.mean_track_length:.1f}) -> {args.out}"
    )


def _add_synth_parser(sub) -> None:
    from .synthetic import PATHS, PROCEDURAL, UP_AXES, SynthOptions

    d = SynthOptions()
    p = command_parser(
        sub,
        "synth",
        "render views of a textured mesh + the true COLMAP model (images/, sparse/, mesh.ply)",
        "Photo-like renders (pyrender) along an orbit, aerial grid or street path, with the exact cameras and "
        "the 3D points\nthe renders see: a labelled scene with no reconstruction error.",
        "gtgen synth --procedural boxes -o outputs/synth_boxes --views 24\n"
        "gtgen synth --mesh statue.glb --up y --path orbit -o outputs/synth_statue",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--mesh", type=Path, help="textured mesh (OBJ, GLB, PLY with texture or vertex colours, ...)")
    src.add_argument("--procedural", choices=PROCEDURAL, help="a generated textured scene instead of a mesh file")
    _output_arg(p, "output folder")
    p.add_argument("--views", type=int, default=d.num_views, help="number of views")
    p.add_argument("--size", type=_image_size, default=f"{d.width}x{d.height}", metavar="WxH", help="image size")
    p.add_argument("--focal", type=float, default=None, help="focal length in pixels (None: 0.8 x the long side)")
    p.add_argument("--path", choices=PATHS, default=d.path, help="camera path")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the scene, jitter and samples")
    p.add_argument("--up", choices=UP_AXES, default=d.up, help="the mesh's vertical axis (glTF files are usually y)")
    p.add_argument(
        "--elevations",
        type=float,
        nargs="+",
        default=list(d.elevations),
        metavar="DEG",
        help="orbit rings, degrees above the horizon",
    )
    p.add_argument("--azimuth", type=float, default=d.azimuth, help="orbit start azimuth, degrees")
    p.add_argument("--overlap", type=float, default=d.overlap, help="aerial footprint overlap of grid neighbours")
    p.add_argument(
        "--jitter", type=float, default=d.jitter, help="random pose perturbation, share of the spacing (0: exact path)"
    )
    p.add_argument("--points", type=int, default=d.num_points, help="surface samples for tracks")
    p.add_argument("--boxes", type=int, default=5, help="boxes in the procedural 'boxes' scene (1-7)")
    p.add_argument("--quality", type=int, default=d.jpeg_quality, help="JPEG quality")
    p.set_defaults(func=cmd_synth)


def cmd_mesh(args) -> None:
    from .meshing import MeshingOptions, mesh_reconstruction_file

    options = MeshingOptions(
        method=args.method,
        min_track_length=args.min_track_length,
        max_reprojection_error=args.max_error,
        depth=args.depth,
        trim_distance=args.trim,
        max_image_size=args.max_image_size,
        workspace=args.workspace,
    )
    check_writable(args.out)
    stats = mesh_reconstruction_file(args.sparse, args.out, options, image_dir=args.images)
    print(
        f"{stats.method}: {stats.points_used} points -> {stats.faces} faces ({stats.time_s['total']:.1f} s) "
        f"-> {args.out}"
    )


def cmd_align(args) -> None:
    from .align import AlignOptions, align_mesh_file

    options = AlignOptions(
        tolerance=args.tolerance,
        min_inlier_fraction=args.min_inliers,
        seed=args.seed,
        random_starts=args.starts,
        num_samples=args.samples,
        check_visibility=not args.no_visibility_check,
    )
    for out in (args.out, args.transform_out):
        if out is not None:
            check_writable(out)
    report = align_mesh_file(args.mesh, args.sparse, args.out, options, transform_out=args.transform_out)
    print(
        f"scale {report.similarity.scale:.6g}, {100 * report.inlier_fraction:.1f}% of {report.points} points within "
        f"{100 * args.tolerance:g}% of the scene scale, median distance "
        f"{100 * report.median_distance / report.scene_scale:.2f}% -> {args.out}"
    )


def _add_mesh_parsers(sub) -> None:
    from .align import AlignOptions
    from .meshing import METHODS, MeshingOptions

    d = MeshingOptions()
    p = command_parser(
        sub,
        "mesh",
        "a triangle mesh in the reconstruction's frame (sparse points + Poisson on CPU, dense MVS with CUDA)",
        "The mesh 'gtgen overlap' needs when the scene has none.",
        "gtgen mesh --sparse scene/sparse/0 -o scene/mesh.ply\n"
        "gtgen overlap --sparse scene/sparse/0 --mesh scene/mesh.ply -o outputs/labels/scene",
    )
    p.add_argument("--sparse", type=Path, required=True, help="COLMAP sparse model folder")
    _output_arg(p, "output mesh (PLY)")
    p.add_argument("--images", type=Path, help="image folder (needed by --method dense)")
    p.add_argument(
        "--method", choices=METHODS, default=d.method, help="auto: dense when pycolmap has CUDA, else sparse-poisson"
    )
    p.add_argument(
        "--min-track-length",
        type=int,
        default=d.min_track_length,
        help="sparse points seen by fewer images are ignored",
    )
    p.add_argument(
        "--max-error",
        type=float,
        default=d.max_reprojection_error,
        help="sparse points with a larger mean reprojection error (px) are ignored",
    )
    p.add_argument("--depth", type=int, default=None, help="Poisson octree depth (None: from the point spacing)")
    p.add_argument(
        "--trim",
        type=float,
        default=d.trim_distance,
        help="cut faces farther than this x the point spacing from every point (0: off)",
    )
    p.add_argument(
        "--max-image-size", type=int, default=d.max_image_size, help="dense: long side of the undistorted images"
    )
    p.add_argument("--workspace", type=Path, help="dense: keep the MVS workspace here (None: a temporary folder)")
    p.set_defaults(func=cmd_mesh)

    a = AlignOptions()
    p = command_parser(
        sub,
        "align",
        "fit a mesh given in its own frame to the reconstruction (scaled ICP) and "
        "write it in the reconstruction's frame",
        "For a scanned or downloaded model of the scene; the fit is refused when too few points agree.",
        "gtgen align --mesh scan.obj --sparse scene/sparse/0 -o scene/mesh.ply --transform-out fit.json",
    )
    p.add_argument("--mesh", type=Path, required=True, help="mesh in its own frame (OBJ, PLY, GLB, ...)")
    p.add_argument("--sparse", type=Path, required=True, help="COLMAP sparse model folder")
    p.add_argument(
        "-o",
        "--output",
        "--out",
        dest="out",
        type=Path,
        required=True,
        metavar="OUT",
        help="aligned mesh (.ply: geometry; .obj: with material and texture where trimesh keeps them)",
    )
    p.add_argument(
        "--transform-out", type=Path, help="JSON with the similarity (scale, rotation, translation) and the fit report"
    )
    p.add_argument("--tolerance", type=float, default=a.tolerance, help="inlier distance, share of the scene scale")
    p.add_argument(
        "--min-inliers",
        type=float,
        default=a.min_inlier_fraction,
        help="refuse the fit below this share of inlier points",
    )
    p.add_argument("--seed", type=int, default=a.seed, help="seed of the samples and random starts")
    p.add_argument(
        "--starts",
        type=int,
        default=a.random_starts,
        help="random initial rotations besides the 24 principal-axis ones",
    )
    p.add_argument("--samples", type=int, default=a.num_samples, help="mesh surface samples")
    p.add_argument("--no-visibility-check", action="store_true", help="skip the check that cameras see the mesh")
    p.set_defaults(func=cmd_align)


def build_parser() -> argparse.ArgumentParser:
    from .overlap import OverlapOptions

    d = OverlapOptions()
    parser, sub = main_parser(
        "gtgen",
        f"gtgen (mirror_sfm) {__version__}",
        "GL3D-style overlap ground truth (MIRorR) from a reconstruction and its mesh.",
        "gtgen overlap --sparse scene/sparse/0 --mesh scene/mesh.ply -o outputs/labels/scene",
    )

    p = command_parser(
        sub,
        "overlap",
        "mesh overlap, common tracks, masks and positives -> GL3D files + manifest",
        "Casts a ray grid per image onto the mesh: mesh overlap (MO) and common-track (CT) ratios of every "
        "pair,\noverlap masks, and strong/weak positives per anchor (triplets.json).",
        "gtgen overlap --sparse scene/sparse/0 --mesh scene/mesh.ply -o outputs/labels/scene --images scene/images",
    )
    p.add_argument(
        "--sparse",
        type=Path,
        required=True,
        help="COLMAP sparse model folder, or a GL3D scene folder (geolabel/cameras.txt)",
    )
    p.add_argument(
        "--mesh", type=Path, required=True, help="triangle mesh in the model's frame (PLY, OBJ, OFF, GLB, ...)"
    )
    _output_arg(p, "output folder (GL3D layout)")
    p.add_argument("--images", type=Path, help="image folder: only checked, and recorded in the manifest")
    p.add_argument("--resolution", type=int, default=d.resolution, help="long side of the ray grid per image, in cells")
    p.add_argument("--mask-size", type=int, default=d.mask_size, help="mask.bin grid side (GL3D's)")
    p.add_argument(
        "--png-size",
        type=_grid_size,
        default=None,
        metavar="N|ROWSxCOLS",
        help="grid of the per-pair PNG masks, e.g. the backbone's feature map (None: --mask-size)",
    )
    p.add_argument("--no-pngs", action="store_true", help="write mask.bin only, no per-pair PNG masks")
    p.add_argument(
        "--mask-min-fraction",
        type=float,
        default=d.mask_min_fraction,
        help="share of a mask cell's pixels that must overlap (0: any)",
    )
    p.add_argument(
        "--mask-min-ratio",
        type=float,
        default=d.mask_min_ratio,
        help="mask.bin holds pairs whose MO exceeds this in some direction",
    )
    p.add_argument(
        "--element-size",
        type=float,
        default=None,
        help="group triangles into cells of this size (model units) before counting overlap",
    )
    p.add_argument(
        "--engine",
        choices=["auto", "embree", "numpy", "pyrender"],
        default=d.engine,
        help="visibility engine: ray casting (auto|embree|numpy, exact under distortion) or pyrender rasterising",
    )
    p.add_argument("--no-cache", action="store_true", help="do not keep per-image triangle maps under OUT/cache")
    p.add_argument(
        "--min-visible-fraction",
        type=float,
        default=d.min_visible_fraction,
        metavar="F",
        help="stop when fewer of the registered cameras see the mesh: it is then likely not aligned "
        "with the model (0: accept)",
    )
    _add_triplet_args(p)
    p.set_defaults(func=cmd_overlap)

    p = command_parser(
        sub,
        "triplets",
        "re-select positives from an existing geolabel folder (ours or GL3D's)",
        "Rewrites the manifest with other CO ranges; no ray casting.",
        "gtgen triplets outputs/labels/scene --strong 0.4 1 --weak 0.1 0.4",
    )
    p.add_argument(
        "scene", type=Path, help="folder with geolabel/mesh_overlap.txt (and common_track.txt, image_list.txt)"
    )
    p.add_argument("-o", "--output", type=Path, help="manifest path (None: SCENE/triplets.json)")
    _add_triplet_args(p)
    p.set_defaults(func=cmd_triplets)
    _add_synth_parser(sub)
    _add_mesh_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    add_stderr_handler(logger)  # propagation stays on: with no root handler it prints nothing twice
    loggers = (logger, logging.getLogger("mirror_sfm"))
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(log_level(args))

    def run() -> None:
        require_extra(args.command, getattr(args, "engine", None))
        args.func(args)

    try:
        return run_command("gtgen", run, "cached triangle maps are kept; re-run to resume")
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
