"""`gtgen mesh`: a triangle mesh in a reconstruction's own frame, for ``gtgen overlap``.

Two paths (``MeshingOptions.method``):

- ``sparse-poisson`` (CPU; what ``auto`` picks without CUDA): the model's 3D points, filtered (track
  length, reprojection error, statistical outliers), a normal per point by PCA over its k nearest
  neighbours, oriented toward the cameras of its track, then screened Poisson surface reconstruction
  (``pycolmap.poisson_meshing``). Poisson closes every surface into a watertight blob, so the result is
  trimmed: faces farther than ``trim_distance`` x the point spacing from every input point are cut (they
  would occlude real surfaces when rays are cast), then pieces much smaller than the largest are dropped.
  Quality: a coarse, smoothed surface where the sparse points are (holes where texture was poor): good
  enough to decide which image sees which part of the scene (mesh-overlap ratios), not for pixel-exact
  masks at fine resolution.
- ``dense`` (needs pycolmap built with CUDA; ``auto`` picks it when ``pycolmap.has_cuda``): undistorted
  images, PatchMatch stereo depth maps (geometric consistency), fused dense points, Poisson, the same trim.
  A far finer surface. It needs the image folder; it cannot run on a CPU-only pycolmap (clear error).

``mesh_from_reconstruction`` returns a ``trimesh.Trimesh``; ``mesh_reconstruction_file`` reads a model
folder and writes the PLY atomically.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from mirror_sfm.errors import MirrorError
from mirror_sfm.io_utils import atomic_path

logger = logging.getLogger(__name__)

METHODS = ("auto", "sparse-poisson", "dense")
MIN_POINTS = 20  # fewer points than this give no meaningful surface


@dataclasses.dataclass
class MeshingOptions:
    """`method`: auto | sparse-poisson | dense. Point filters: `min_track_length`, `max_reprojection_error`
    (pixels; None: no limit), statistical outliers (mean distance to `outlier_neighbours` neighbours more
    than `outlier_std` standard deviations above the mean; 0 disables). `normal_neighbours`: PCA
    neighbourhood. Poisson: `depth` (octree depth; None: from the point spacing, clamped to
    [`min_depth`, `max_depth`]), `point_weight` (screening), `num_threads` (-1: all; 1 by default: PoissonRecon's
    threads spin, and on a busy 2-core machine one thread was 5-10x faster). Trim:
    `trim_distance` (faces whose centroid is farther than this x the point spacing from every point
    are cut; 0 disables), `min_component_share` (pieces with fewer faces than this share of the largest
    are dropped). Dense path: `max_image_size` (undistorted images, pixels), `workspace` (kept dense
    workspace; None: a temporary folder)."""

    method: str = "auto"
    min_track_length: int = 3
    max_reprojection_error: float | None = 4.0
    outlier_neighbours: int = 12
    outlier_std: float = 2.0
    normal_neighbours: int = 16
    depth: int | None = None
    min_depth: int = 6
    max_depth: int = 10
    point_weight: float = 1.0
    trim_distance: float = 3.0
    min_component_share: float = 0.05
    num_threads: int = 1
    max_image_size: int = 2000
    workspace: Path | None = None

    def check(self) -> None:
        if self.method not in METHODS:
            raise MirrorError(f"unknown meshing method {self.method!r} ({' | '.join(METHODS)})")
        if self.normal_neighbours < 3:
            raise MirrorError(f"normal estimation needs >= 3 neighbours, got {self.normal_neighbours}")
        if self.depth is not None and not 1 <= self.depth <= 16:
            raise MirrorError(f"Poisson depth must be in [1, 16], got {self.depth}")
        if self.trim_distance < 0 or not 0 <= self.min_component_share <= 1:
            raise MirrorError("need trim_distance >= 0 and min_component_share in [0, 1]")


@dataclasses.dataclass
class MeshStats:
    """What a meshing run did: points kept, the spacing and depth used, faces before and after trimming."""

    method: str
    points_in: int = 0
    points_used: int = 0
    spacing: float = 0.0
    depth: int = 0
    faces_poisson: int = 0
    faces: int = 0
    vertices: int = 0
    components_dropped: int = 0
    time_s: dict = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------- input


def is_colmap_model(path: Path) -> bool:
    return all((path / f"{n}.bin").is_file() or (path / f"{n}.txt").is_file() for n in ("cameras", "images"))


def read_reconstruction(path: str | Path):
    """A pycolmap Reconstruction from a model folder, with one clear error naming what is wrong."""
    import pycolmap

    path = Path(path)
    if not path.is_dir():
        raise MirrorError(f"sparse model folder not found: {path}")
    if not is_colmap_model(path):
        subs = sorted(p for p in path.iterdir() if p.is_dir() and is_colmap_model(p)) if path.is_dir() else []
        hint = f" (did you mean {subs[0]}?)" if subs else ""
        raise MirrorError(f"{path}: no COLMAP model (cameras + images .bin/.txt){hint}")
    try:
        return pycolmap.Reconstruction(path)
    except Exception as exc:
        raise MirrorError(f"cannot read COLMAP model {path}: {exc}") from None


def resolve_method(method: str) -> str:
    """'auto' -> 'dense' with a CUDA pycolmap, else 'sparse-poisson'; 'dense' without CUDA is an error."""
    import pycolmap

    cuda = bool(getattr(pycolmap, "has_cuda", False))
    if method == "auto":
        return "dense" if cuda else "sparse-poisson"
    if method == "dense" and not cuda:
        raise MirrorError(
            "method 'dense' needs pycolmap built with CUDA (pycolmap.has_cuda is False here): "
            "use --method sparse-poisson, or install a CUDA build of pycolmap on a GPU machine"
        )
    return method


# ----------------------------------------------------------------------------- points and normals


def sparse_points(reconstruction, options: MeshingOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xyz, rgb, view direction) of the 3D points that pass the track-length and error filters.

    The view direction is the mean unit vector from the point to the centres of the cameras observing it."""
    centres = {
        i: np.asarray(reconstruction.image(i).projection_center(), np.float64) for i in reconstruction.reg_image_ids()
    }
    xyz, rgb, view = [], [], []
    for point in reconstruction.points3D.values():
        track = [e.image_id for e in point.track.elements if e.image_id in centres]
        if len(track) < max(options.min_track_length, 1):
            continue
        if options.max_reprojection_error is not None and point.error > options.max_reprojection_error:
            continue
        p = np.asarray(point.xyz, np.float64)
        rays = np.stack([centres[i] for i in track]) - p
        rays /= np.maximum(np.linalg.norm(rays, axis=1, keepdims=True), 1e-12)
        xyz.append(p)
        rgb.append(np.asarray(point.color, np.uint8))
        view.append(rays.mean(axis=0))
    if not xyz:
        return np.zeros((0, 3)), np.zeros((0, 3), np.uint8), np.zeros((0, 3))
    return np.array(xyz), np.array(rgb, np.uint8), np.array(view)


def statistical_inliers(points: np.ndarray, neighbours: int, std_ratio: float) -> np.ndarray:
    """Boolean mask: points whose mean distance to their `neighbours` nearest is within mean + std_ratio x std."""
    from scipy.spatial import cKDTree

    if std_ratio <= 0 or neighbours < 1 or len(points) <= neighbours:
        return np.ones(len(points), bool)
    d, _ = cKDTree(points).query(points, k=neighbours + 1)
    mean = d[:, 1:].mean(axis=1)
    return mean <= mean.mean() + std_ratio * mean.std()


def point_spacing(points: np.ndarray, neighbours: int = 4) -> float:
    """Median distance from a point to its `neighbours`-th nearest neighbour: the sampling scale of the cloud."""
    from scipy.spatial import cKDTree

    k = min(neighbours, len(points) - 1)
    if k < 1:
        return 0.0
    d, _ = cKDTree(points).query(points, k=k + 1)
    return float(np.median(d[:, k]))


def estimate_normals(points: np.ndarray, neighbours: int = 16) -> np.ndarray:
    """(n, 3) unit normals: the least-variance axis of each point's `neighbours` nearest (PCA), unoriented."""
    from scipy.spatial import cKDTree

    k = min(neighbours, len(points))
    _, idx = cKDTree(points).query(points, k=k)
    nb = points[idx.reshape(len(points), -1)]  # (n, k, 3)
    centred = nb - nb.mean(axis=1, keepdims=True)
    cov = np.einsum("nki,nkj->nij", centred, centred)
    _, vectors = np.linalg.eigh(cov)  # ascending eigenvalues
    return vectors[:, :, 0]


def orient_normals(normals: np.ndarray, view: np.ndarray) -> np.ndarray:
    """Normals flipped to face the cameras that saw each point (`view`: point -> cameras direction)."""
    sign = np.where(np.einsum("ij,ij->i", normals, view) < 0, -1.0, 1.0)
    return normals * sign[:, None]


def write_point_ply(path: str | Path, points: np.ndarray, normals: np.ndarray, colours: np.ndarray) -> None:
    """Binary PLY of oriented points (x y z nx ny nz red green blue), the input pycolmap's Poisson reads."""
    dtype = np.dtype(
        [
            ("x", "<f4"),
            ("y", "<f4"),
            ("z", "<f4"),
            ("nx", "<f4"),
            ("ny", "<f4"),
            ("nz", "<f4"),
            ("red", "u1"),
            ("green", "u1"),
            ("blue", "u1"),
        ]
    )
    rows = np.zeros(len(points), dtype)
    for k, name in enumerate("xyz"):
        rows[name] = points[:, k]
        rows["n" + name] = normals[:, k]
    for k, name in enumerate(("red", "green", "blue")):
        rows[name] = colours[:, k]
    header = (
        f"ply\nformat binary_little_endian 1.0\nelement vertex {len(points)}\n"
        + "".join(f"property float {n}\n" for n in ("x", "y", "z", "nx", "ny", "nz"))
        + "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(rows.tobytes())


# ----------------------------------------------------------------------------- surface


def auto_depth(points: np.ndarray, spacing: float, options: MeshingOptions) -> int:
    """Octree depth whose voxels are about the point spacing over the cloud's extent, clamped."""
    if options.depth is not None:
        return options.depth
    extent = float(np.max(np.ptp(points, axis=0)))
    if spacing <= 0 or extent <= 0:
        return options.min_depth
    return int(np.clip(math.ceil(math.log2(extent / spacing)), options.min_depth, options.max_depth))


def poisson_surface(points: np.ndarray, normals: np.ndarray, colours: np.ndarray, depth: int, options: MeshingOptions):
    """Screened Poisson surface (pycolmap) of oriented points, as an untrimmed trimesh."""
    import pycolmap
    import trimesh

    with tempfile.TemporaryDirectory(prefix="gtgen-poisson-") as tmp:
        src, dst = Path(tmp) / "points.ply", Path(tmp) / "mesh.ply"
        write_point_ply(src, points, normals, colours)
        # trim=0: keep pycolmap's full surface; our own distance trim below is scale-aware
        popts = pycolmap.PoissonMeshingOptions(
            depth=depth, point_weight=options.point_weight, trim=0.0, num_threads=options.num_threads
        )
        try:
            pycolmap.poisson_meshing(src, dst, popts)
        except Exception as exc:
            raise MirrorError(f"Poisson meshing failed: {exc}") from None
        if not dst.is_file():
            raise MirrorError("Poisson meshing wrote no mesh (too few or degenerate points?)")
        mesh = trimesh.load(dst, force="mesh", process=False)
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise MirrorError("Poisson meshing produced no triangles (too few or degenerate points?)")
    return mesh


def face_components(mesh) -> np.ndarray:
    """Connected-component label of every face (faces sharing an edge are connected)."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    n = len(mesh.faces)
    adj = np.asarray(mesh.face_adjacency, np.int64).reshape(-1, 2)
    graph = sp.coo_matrix((np.ones(len(adj)), (adj[:, 0], adj[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def trim_surface(mesh, points: np.ndarray, spacing: float, options: MeshingOptions) -> tuple[object, int]:
    """(mesh, pieces dropped): faces far from every input point cut, then small pieces removed."""
    from scipy.spatial import cKDTree

    keep = np.ones(len(mesh.faces), bool)
    if options.trim_distance > 0 and spacing > 0:
        d, _ = cKDTree(points).query(np.asarray(mesh.triangles_center), k=1)
        keep &= d <= options.trim_distance * spacing
    mesh = mesh.submesh([np.flatnonzero(keep)], append=True, repair=False) if not keep.all() else mesh
    dropped = 0
    if len(mesh.faces) and options.min_component_share > 0:
        labels = face_components(mesh)
        counts = np.bincount(labels)
        big = counts >= options.min_component_share * counts.max()
        dropped = int((~big).sum())
        if dropped:
            mesh = mesh.submesh([np.flatnonzero(big[labels])], append=True, repair=False)
    mesh.remove_unreferenced_vertices()
    return mesh, dropped


def mesh_from_points(
    points: np.ndarray, normals: np.ndarray, colours: np.ndarray, options: MeshingOptions, stats: MeshStats
):
    """Poisson + trim of an oriented point cloud; fills `stats`."""
    t0 = time.perf_counter()
    spacing = point_spacing(points)
    depth = auto_depth(points, spacing, options)
    logger.info("Poisson surface of %d points (spacing %.4g, depth %d)", len(points), spacing, depth)
    raw = poisson_surface(points, normals, colours, depth, options)
    t1 = time.perf_counter()
    mesh, dropped = trim_surface(raw, points, spacing, options)
    if len(mesh.faces) == 0:
        raise MirrorError("no triangle of the Poisson surface lies near the points (trim too strict?)")
    stats.spacing, stats.depth, stats.faces_poisson = spacing, depth, len(raw.faces)
    stats.faces, stats.vertices, stats.components_dropped = len(mesh.faces), len(mesh.vertices), dropped
    stats.time_s.update(poisson=round(t1 - t0, 3), trim=round(time.perf_counter() - t1, 3))
    logger.info("trimmed %d -> %d faces (%d small pieces dropped)", len(raw.faces), len(mesh.faces), dropped)
    return mesh


def oriented_sparse_points(reconstruction, options: MeshingOptions, stats: MeshStats):
    """(points, normals, colours) of the filtered sparse cloud, normals facing their cameras."""
    if reconstruction.num_reg_images() == 0:
        raise MirrorError("the reconstruction has no registered images")
    if reconstruction.num_points3D() == 0:
        raise MirrorError("the reconstruction has no 3D points to mesh")
    xyz, rgb, view = sparse_points(reconstruction, options)
    stats.points_in = reconstruction.num_points3D()
    inliers = statistical_inliers(xyz, options.outlier_neighbours, options.outlier_std)
    xyz, rgb, view = xyz[inliers], rgb[inliers], view[inliers]
    if len(xyz) < MIN_POINTS:
        raise MirrorError(
            f"only {len(xyz)} of {stats.points_in} 3D points pass the filters (track length >= "
            f"{options.min_track_length}, reprojection error, outliers): need >= {MIN_POINTS}"
        )
    stats.points_used = len(xyz)
    normals = orient_normals(estimate_normals(xyz, options.normal_neighbours), view)
    return xyz, normals, rgb


# ----------------------------------------------------------------------------- paths


def sparse_poisson_mesh(reconstruction, options: MeshingOptions, stats: MeshStats):
    t0 = time.perf_counter()
    points, normals, colours = oriented_sparse_points(reconstruction, options, stats)
    stats.time_s["points"] = round(time.perf_counter() - t0, 3)
    logger.info("%d of %d 3D points kept for meshing", stats.points_used, stats.points_in)
    return mesh_from_points(points, normals, colours, options, stats)


def dense_points(reconstruction, image_dir: str | Path, workspace: Path, options: MeshingOptions):
    """(points, normals, colours) fused from PatchMatch depth maps (CUDA only): undistort, stereo, fusion."""
    import pycolmap
    import trimesh

    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise MirrorError(f"image folder not found: {image_dir}")
    sparse_dir = workspace / "input_sparse"
    sparse_dir.mkdir(parents=True, exist_ok=True)
    reconstruction.write(sparse_dir)
    dense = workspace / "dense"
    logger.info("undistorting images into %s", dense)
    pycolmap.undistort_images(
        dense,
        sparse_dir,
        image_dir,
        undistort_options=pycolmap.UndistortCameraOptions(max_image_size=options.max_image_size),
    )
    logger.info("PatchMatch stereo (CUDA)")
    pycolmap.patch_match_stereo(
        dense, options=pycolmap.PatchMatchOptions(max_image_size=options.max_image_size, geom_consistency=True)
    )
    fused = dense / "fused.ply"
    logger.info("fusing depth maps -> %s", fused)
    pycolmap.stereo_fusion(
        fused, dense, input_type="geometric", output_type="ply", options=pycolmap.StereoFusionOptions(num_threads=-1)
    )
    cloud = trimesh.load(fused, process=False)
    raw = cloud.metadata.get("_ply_raw", {}).get("vertex", {}).get("data") if hasattr(cloud, "metadata") else None
    points = np.asarray(cloud.vertices, np.float64)
    if raw is None or "nx" not in raw.dtype.names:
        raise MirrorError(f"{fused}: fused points without normals")
    normals = np.stack([raw["nx"], raw["ny"], raw["nz"]], axis=1).astype(np.float64)
    colours = (
        np.stack([raw["red"], raw["green"], raw["blue"]], axis=1).astype(np.uint8)
        if "red" in raw.dtype.names
        else np.full((len(points), 3), 128, np.uint8)
    )
    return points, normals, colours


def dense_mesh(reconstruction, image_dir: str | Path | None, options: MeshingOptions, stats: MeshStats):
    """Dense MVS path (pycolmap with CUDA): fused PatchMatch points -> Poisson -> trim."""
    resolve_method("dense")
    if image_dir is None:
        raise MirrorError("method 'dense' needs the images: pass --images DIR")
    t0 = time.perf_counter()
    if options.workspace is not None:
        points, normals, colours = dense_points(reconstruction, image_dir, Path(options.workspace), options)
    else:
        with tempfile.TemporaryDirectory(prefix="gtgen-dense-") as tmp:
            points, normals, colours = dense_points(reconstruction, image_dir, Path(tmp), options)
    if len(points) < MIN_POINTS:
        raise MirrorError(f"stereo fusion gave only {len(points)} points")
    stats.points_in = stats.points_used = len(points)
    stats.time_s["dense"] = round(time.perf_counter() - t0, 3)
    return mesh_from_points(points, normals, colours, options, stats)


def mesh_from_reconstruction(
    reconstruction,
    options: MeshingOptions | None = None,
    image_dir: str | Path | None = None,
    stats: MeshStats | None = None,
):
    """A trimmed triangle mesh (``trimesh.Trimesh``) of the scene, in the reconstruction's frame."""
    options = options or MeshingOptions()
    options.check()
    method = resolve_method(options.method)
    stats = stats if stats is not None else MeshStats(method)
    stats.method = method
    if method == "dense":
        return dense_mesh(reconstruction, image_dir, options, stats)
    return sparse_poisson_mesh(reconstruction, options, stats)


def mesh_reconstruction_file(
    sparse_dir: str | Path,
    out_path: str | Path,
    options: MeshingOptions | None = None,
    image_dir: str | Path | None = None,
) -> MeshStats:
    """Read a model folder, mesh it, write the mesh (PLY, or any format trimesh writes by suffix) atomically."""
    t0 = time.perf_counter()
    options = options or MeshingOptions()
    options.check()
    resolve_method(options.method)  # a CUDA-less 'dense' fails before any reading
    out_path = Path(out_path)
    reconstruction = read_reconstruction(sparse_dir)
    stats = MeshStats(options.method)
    mesh = mesh_from_reconstruction(reconstruction, options, image_dir, stats)
    file_type = out_path.suffix.lstrip(".").lower() or "ply"
    with atomic_path(out_path) as tmp:
        mesh.export(tmp, file_type=file_type)
    stats.time_s["total"] = round(time.perf_counter() - t0, 3)
    logger.info("%d faces, %d vertices -> %s (%.1f s)", stats.faces, stats.vertices, out_path, stats.time_s["total"])
    return stats
