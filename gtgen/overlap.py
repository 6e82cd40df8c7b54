"""`gtgen overlap`: a reconstruction + its mesh -> GL3D-style geolabel files and a triplet manifest.

Steps: load the scene (a COLMAP model, or a GL3D scene folder), cast rays per image
(``gtgen.visibility``), MO from the seen triangles and CT from the tracks (``gtgen.ratios``), CO and
positives (``gtgen.triplets``), overlap masks (``gtgen.masks``), then write (each file atomically)::

    OUT/image_list.txt                  line k = name of image k
    OUT/geolabel/cameras.txt            registered images, indexed by k
    OUT/geolabel/common_track.txt       CT, directional, r > 0
    OUT/geolabel/mesh_overlap.txt       MO, directional, r > 0
    OUT/geolabel/mask.bin               32x32 masks of every pair with MO > 0 (either direction)
    OUT/masks/<i>_<j>.png               masks of positive pairs at the training grid size
    OUT/triplets.json                   strong / weak positives per anchor
    OUT/cache/triangles/*.npz           per-image triangle maps (a re-run resumes from them)

Image order: COLMAP models by image name; GL3D scenes keep their indices.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from mirror_sfm.errors import MirrorError
from mirror_sfm.io_utils import check_writable
from mirror_sfm.labels import MASK_SIZE, combined_ratios, read_image_list, read_ratios

from . import gl3d
from .masks import MaskOptions, mask_png_name, overlapping_pairs, pair_masks, write_mask_png
from .ratios import directional_ratios, incidence_from_sets, track_sets
from .triplets import Anchor, TripletOptions, build_manifest, positive_pairs, select_positives, write_manifest
from .visibility import VisibilityOptions, element_ids, element_map, load_mesh, mesh_overlap, triangle_maps

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class OverlapOptions:
    """`resolution`: long side of the ray grid per image (cells). `mask_size`: GL3D mask.bin grid
    (square). `png_size`: (rows, cols) of the per-pair PNG masks for training (None: mask_size
    square; write_pngs=False: none). `mask_min_fraction`: share of a cell's pixels that must overlap
    (0: any). `mask_min_ratio`: only pairs whose MO exceeds this in some direction get mask.bin
    records. `element_size`: group triangles into cells of this size (world units) before counting.
    `triplets`: positive ranges and t_sfm. `cache`: keep per-image triangle maps under OUT/cache.
    `min_visible_fraction`: refuse (MirrorError) when a smaller share of the registered cameras sees any
    of the mesh, which means the mesh is not aligned with the model (0: accept any)."""

    resolution: int = 256
    mask_size: int = MASK_SIZE
    png_size: tuple[int, int] | None = None
    write_pngs: bool = True
    mask_min_fraction: float = 0.0
    mask_min_ratio: float = 0.0
    element_size: float | None = None
    engine: str = "auto"
    triplets: TripletOptions = dataclasses.field(default_factory=TripletOptions)
    cache: bool = True
    progress: bool = True
    min_visible_fraction: float = 0.5


@dataclasses.dataclass
class Scene:
    """Images by index k: `names[k]`, and `image_ids[k]` (reconstruction id, None if unregistered)."""

    reconstruction: object
    names: list[str]
    image_ids: list[int | None]
    ct: sp.csr_matrix  # directional common-track ratios, (N, N)

    @property
    def registered(self) -> list[int]:
        return [k for k, i in enumerate(self.image_ids) if i is not None]


@dataclasses.dataclass
class OverlapResult:
    scene: Scene
    mo: sp.csr_matrix
    co: sp.csr_matrix
    anchors: list[Anchor]
    num_mask_pairs: int
    out_dir: Path


# ----------------------------------------------------------------------------- input


def _is_colmap_model(path: Path) -> bool:
    return all((path / f"{n}.bin").is_file() or (path / f"{n}.txt").is_file() for n in ("cameras", "images"))


def load_scene(path: str | Path) -> Scene:
    """A COLMAP sparse model folder, or a GL3D scene folder (geolabel/cameras.txt, image_list.txt)."""
    import pycolmap

    path = Path(path)
    if not path.is_dir():
        raise MirrorError(f"sparse model folder not found: {path}")
    if (path / "geolabel" / "cameras.txt").is_file() and not _is_colmap_model(path):
        return _load_gl3d_scene(path)
    if not _is_colmap_model(path):
        hint = f" (did you mean {path / '0'}?)" if _is_colmap_model(path / "0") else ""
        raise MirrorError(f"{path}: no COLMAP model (cameras + images .bin/.txt) or GL3D geolabel/cameras.txt{hint}")
    try:
        rec = pycolmap.Reconstruction(path)
    except Exception as exc:
        raise MirrorError(f"cannot read COLMAP model {path}: {exc}") from None
    ids = sorted(rec.reg_image_ids(), key=lambda i: rec.image(i).name)
    if not ids:
        raise MirrorError(f"{path}: the reconstruction has no registered images")
    names = [rec.image(i).name for i in ids]
    track_names, sets = track_sets(rec)
    by_name = dict(zip(track_names, sets))
    ct = directional_ratios(incidence_from_sets([by_name[n] for n in names])).tocsr()
    return Scene(rec, names, list(ids), ct)


def _load_gl3d_scene(path: Path) -> Scene:
    cams_path = path / "geolabel" / "cameras.txt"
    cams = gl3d.read_cameras(cams_path)
    if not cams:
        raise MirrorError(f"{cams_path}: no cameras")
    list_path = path / "image_list.txt"
    n = max(c.idx for c in cams) + 1
    names = read_image_list(list_path) if list_path.is_file() else [f"{k:08d}.jpg" for k in range(n)]
    if len(names) < n:
        raise MirrorError(f"{list_path}: {len(names)} names but {cams_path} has image index {n - 1}")
    rec = gl3d.reconstruction_from_gl3d(cams, names, where=str(cams_path))
    image_ids: list[int | None] = [None] * len(names)
    for c in cams:
        image_ids[c.idx] = c.idx + 1
    ct_path = path / "geolabel" / "common_track.txt"
    ct = read_ratios(ct_path, len(names)) if ct_path.is_file() else sp.csr_matrix((len(names), len(names)))
    return Scene(rec, names, image_ids, ct)


def check_images(images_dir: str | Path, scene: Scene) -> None:
    """Warn about images missing from `images_dir`, or whose aspect differs from their camera's."""
    from PIL import Image

    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise MirrorError(f"image folder not found: {images_dir}")
    missing = []
    for k in scene.registered:
        p = images_dir / scene.names[k]
        if not p.is_file():
            missing.append(scene.names[k])
            continue
        cam = scene.reconstruction.camera(scene.reconstruction.image(scene.image_ids[k]).camera_id)
        with Image.open(p) as im:
            w, h = im.size
        if abs(w / h - cam.width / cam.height) > 0.01 * cam.width / cam.height:
            logger.warning("%s is %dx%d but its camera is %dx%d (other aspect ratio)", p, w, h, cam.width, cam.height)
    if missing:
        logger.warning(
            "%d of %d registered images are not in %s (e.g. %s)",
            len(missing),
            len(scene.registered),
            images_dir,
            ", ".join(missing[:3]),
        )


# ----------------------------------------------------------------------------- pipeline


def compute_overlap(
    sparse: str | Path,
    mesh_path: str | Path,
    out_dir: str | Path,
    options: OverlapOptions | None = None,
    images_dir: str | Path | None = None,
) -> OverlapResult:
    """Run the whole pipeline and write every output file (see the module docstring)."""
    options = options or OverlapOptions()
    options.triplets.check()
    if options.mask_size < 1:
        raise MirrorError(f"mask size must be >= 1, got {options.mask_size}")
    if not 0.0 <= options.mask_min_fraction <= 1.0:
        raise MirrorError(f"mask cell fraction must be in [0, 1], got {options.mask_min_fraction}")
    if not 0.0 <= options.min_visible_fraction <= 1.0:
        raise MirrorError(f"minimum visible fraction must be in [0, 1], got {options.min_visible_fraction}")
    finest = max([options.mask_size, *(options.png_size or ())])
    if options.resolution < finest:
        logger.warning(
            "ray grid (%d) coarser than the mask grid (%d): some mask cells get no pixel and stay off",
            options.resolution,
            finest,
        )
    out_dir = Path(out_dir)
    check_writable(out_dir / "image_list.txt")  # an unwritable OUT, or a file named OUT: before casting any ray
    scene = load_scene(sparse)
    mesh = load_mesh(mesh_path)
    if images_dir is not None:
        check_images(images_dir, scene)
    n = len(scene.names)
    logger.info("%d registered images, mesh with %d triangles", len(scene.registered), len(mesh.faces))

    vis = VisibilityOptions(
        resolution=options.resolution,
        engine=options.engine,
        element_size=options.element_size,
        cache_dir=out_dir / "cache" / "triangles" if options.cache else None,
        progress=options.progress,
    )
    reg = scene.registered
    tri = triangle_maps(scene.reconstruction, [scene.image_ids[k] for k in reg], mesh, vis)
    elements = element_ids(mesh, options.element_size)
    num_elements = len(mesh.faces) if elements is None else int(elements.max()) + 1
    maps: list[np.ndarray] = [np.full((1, 1), -1, np.int32)] * n
    for k, m in zip(reg, tri):
        maps[k] = element_map(m, elements)
    incidence, mo = mesh_overlap(maps, num_elements)
    check_visible_fraction(incidence, reg, mesh_path, options.min_visible_fraction)
    co = combined_ratios(scene.ct, mo, t_sfm=options.triplets.t_sfm)
    anchors = select_positives(co, options.triplets)
    logger.info(
        "%d images see the mesh; %d anchors with positives (%d strong, %d weak pairs)",
        int((np.diff(incidence.indptr) > 0).sum()),
        len(anchors),
        sum(len(a.strong) for a in anchors),
        sum(len(a.weak) for a in anchors),
    )

    geo = out_dir / "geolabel"
    gl3d.write_image_list(out_dir / "image_list.txt", scene.names)
    gl3d.write_cameras(
        geo / "cameras.txt",
        [
            gl3d.gl3d_from_pycolmap(
                scene.reconstruction.camera(scene.reconstruction.image(scene.image_ids[k]).camera_id),
                scene.reconstruction.image(scene.image_ids[k]).cam_from_world(),
                k,
            )
            for k in reg
        ],
    )
    gl3d.write_ratios(geo / "common_track.txt", scene.ct)
    gl3d.write_ratios(geo / "mesh_overlap.txt", mo)

    pairs = overlapping_pairs(mo, options.mask_min_ratio)
    size = options.mask_size
    bin_masks = pair_masks(maps, incidence, pairs, MaskOptions((size, size), options.mask_min_fraction))
    gl3d.write_mask_bin(geo / "mask.bin", bin_masks, size)

    png_size = tuple(options.png_size) if options.png_size else (size, size)
    mask_path = None
    if options.write_pngs:
        pos = positive_pairs(anchors)
        for (i, j), (mi, mj) in pair_masks(
            maps, incidence, pos, MaskOptions(png_size, options.mask_min_fraction)
        ).items():
            write_mask_png(out_dir / "masks" / mask_png_name(i, j), mi)
            write_mask_png(out_dir / "masks" / mask_png_name(j, i), mj)
        mask_path = lambda i, j: f"masks/{mask_png_name(i, j)}"  # noqa: E731
    manifest = build_manifest(
        scene.names,
        anchors,
        options.triplets,
        mask_path,
        image_dir=str(Path(images_dir).resolve()) if images_dir is not None else None,
        mask_bin="geolabel/mask.bin",
        mask_bin_size=size,
        png_dir="masks" if options.write_pngs else None,
        png_size=png_size if options.write_pngs else None,
    )
    write_manifest(out_dir / "triplets.json", manifest)
    return OverlapResult(scene, mo, co, anchors, len(pairs), out_dir)


def check_visible_fraction(
    incidence: sp.csr_matrix, registered: list[int], mesh_path: str | Path, min_fraction: float
) -> None:
    """MirrorError when fewer than `min_fraction` of the registered images see any of the mesh.

    A mesh in another frame or scale is often still seen by a camera or two; without this check the run
    ends with exit 0 and almost no mesh-overlap labels.
    """
    seen = int((np.diff(incidence.indptr)[registered] > 0).sum())
    total = len(registered)
    if total and seen < min_fraction * total:
        raise MirrorError(
            f"mesh {mesh_path} is seen by {seen} of {total} cameras ({100 * seen / total:.0f}%); is it "
            f"aligned with the model (same frame and scale)? --min-visible-fraction 0 to accept"
        )


def _resized(m: sp.spmatrix | None, n: int) -> sp.csr_matrix:
    """`m` as an (n, n) matrix (an absent matrix is empty); ratio files only say N up to the last index."""
    if m is None:
        return sp.csr_matrix((n, n))
    coo = sp.coo_matrix(m)
    return sp.csr_matrix((coo.data, (coo.row, coo.col)), shape=(n, n))


def triplets_from_geolabel(
    scene_dir: str | Path, out_path: str | Path | None = None, options: TripletOptions | None = None
) -> list[Anchor]:
    """Re-select positives from existing GL3D files and write a manifest (default SCENE/triplets.json).

    Reads image_list.txt (optional), geolabel/mesh_overlap.txt and geolabel/common_track.txt
    (optional), so thresholds can be re-tuned without casting rays again; works on original GL3D
    scenes too. Mask entries point at masks/ PNGs when both directions exist, and at mask.bin if present.
    """
    options = options or TripletOptions()
    options.check()
    scene_dir = Path(scene_dir)
    geo = scene_dir / "geolabel"
    mo_path, ct_path, list_path = geo / "mesh_overlap.txt", geo / "common_track.txt", scene_dir / "image_list.txt"
    if not mo_path.is_file():
        raise MirrorError(f"mesh overlap file not found: {mo_path}")
    names = read_image_list(list_path) if list_path.is_file() else None
    mo = read_ratios(mo_path, len(names) if names is not None else None)
    ct = read_ratios(ct_path, len(names) if names is not None else None) if ct_path.is_file() else None
    n = max(mo.shape[0], ct.shape[0] if ct is not None else 0)
    if names is None:
        names = [f"{k:08d}.jpg" for k in range(n)]
    co = combined_ratios(_resized(ct, n), _resized(mo, n), t_sfm=options.t_sfm)
    anchors = select_positives(co, options)

    out_path = Path(out_path) if out_path is not None else scene_dir / "triplets.json"
    check_writable(out_path)
    base = out_path.resolve().parent
    rel = lambda p: os.path.relpath(p.resolve(), base)  # noqa: E731
    png_dir = scene_dir / "masks"
    mask_path = None
    if png_dir.is_dir():

        def mask_path(i: int, j: int) -> str | None:
            p = png_dir / mask_png_name(i, j)
            return rel(p) if p.is_file() else None

    bin_path = geo / "mask.bin"
    manifest = build_manifest(
        names,
        anchors,
        options,
        mask_path,
        mask_bin=rel(bin_path) if bin_path.is_file() else None,
        mask_bin_size=MASK_SIZE if bin_path.is_file() else None,
        png_dir=rel(png_dir) if png_dir.is_dir() else None,
    )
    write_manifest(out_path, manifest)
    return anchors
