"""Which mesh triangle each image sees, pixel by pixel: ray casting through the exact camera model.

For each registered image, rays go from the camera centre through the centres of a pixel grid whose
long side has ``resolution`` cells (default 256; the short side keeps the aspect ratio). Pixel
centres are unprojected by pycolmap (``Camera.cam_ray_from_img``: exact for distorted cameras, and
for fisheye models past 90 degrees); a ray whose unprojection fails or does not reproject to its
pixel (beyond a distortion fold) is dropped. The first triangle hit wins, so a triangle hidden behind
another is not seen (a z-buffer). Rays only exist inside the image, so the map is cut to its bounds.

The maps give each image's set of seen triangles -> a sparse image x triangle incidence matrix ->
mesh-overlap (MO) ratios for all pairs at once (``gtgen.ratios``). Ratios count triangles, so the
ray grid should be at least as dense as the mesh's triangles in the image; when it is not, each
image samples a different subset of the triangles and MO is underestimated (a warning says so):
raise ``resolution``, decimate the mesh, or group triangles into cells (``element_size``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from mirror_sfm.errors import MirrorError
from mirror_sfm.io_utils import atomic_path

from .engine import RasterEngine, RayEngine, grid_shape
from .ratios import directional_ratios, incidence_from_sets

logger = logging.getLogger(__name__)

REPROJECTION_TOLERANCE_PX = 0.05  # an unprojected ray must land back within this of its pixel centre
CACHE_VERSION = 1


@dataclasses.dataclass
class VisibilityOptions:
    """How triangle maps are cast. `resolution`: long side of the ray grid in cells (each cell's
    centre gets one ray). `engine`: 'auto' (embree when importable, else trimesh's pure-numpy
    intersector, ~100x slower), 'embree' or 'numpy', or 'pyrender' (OpenGL rasteriser, pinhole cameras
    only: ``gtgen.render``). `cache_dir`: one .npz per image, keyed by
    mesh, camera, pose and resolution, so an interrupted run resumes. `element_size`: group triangles
    into cubic cells of this size (world units, by triangle centroid) before counting overlap; None
    counts triangles themselves."""

    resolution: int = 256
    engine: str = "auto"
    cache_dir: Path | None = None
    element_size: float | None = None
    progress: bool = True


# ----------------------------------------------------------------------------- mesh


def read_trimesh(path: str | Path, force: str):
    """`trimesh.load(path, force=force)` unprocessed, with one clear error for a missing or unreadable file."""
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise MirrorError(f"mesh file not found: {path}")
    try:
        return trimesh.load(path, force=force, process=False)
    except Exception as exc:  # trimesh raises many types for unreadable files
        raise MirrorError(f"cannot read mesh {path}: {exc}") from None


def load_mesh(path: str | Path):
    """Triangle mesh from any file trimesh reads (PLY, OBJ, OFF, STL, GLB, ...), faces in file order."""
    import trimesh

    mesh = read_trimesh(path, "mesh")
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise MirrorError(f"{path}: no triangles in this mesh (a point cloud?)")
    return mesh


def mesh_fingerprint(mesh) -> str:
    """Hash of vertices and faces: cached triangle maps are only reused for the very same mesh."""
    h = hashlib.sha1()
    h.update(np.ascontiguousarray(mesh.vertices, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(mesh.faces, dtype=np.int64).tobytes())
    return h.hexdigest()


def embree_available() -> bool:
    try:
        import embreex  # noqa: F401
        from trimesh.ray import ray_pyembree  # noqa: F401
    except ImportError:
        return False
    return True


class MeshRayCaster:
    """Nearest-hit ray caster over a mesh; recentred so embree's float32 keeps georeferenced precision."""

    def __init__(self, mesh, engine: str = "auto"):
        import trimesh

        if engine not in ("auto", "embree", "numpy"):
            raise MirrorError(f"unknown ray engine {engine!r} (auto | embree | numpy | pyrender)")
        self.offset = np.asarray(mesh.bounds, dtype=np.float64).mean(axis=0)
        self.num_faces = len(mesh.faces)
        local = trimesh.Trimesh(np.asarray(mesh.vertices, np.float64) - self.offset, mesh.faces, process=False)
        use_embree = engine == "embree" or (engine == "auto" and embree_available())
        if use_embree:
            if not embree_available():
                raise MirrorError("engine 'embree' needs the embreex package: pip install embreex")
            from trimesh.ray.ray_pyembree import RayMeshIntersector

            self.engine = "embree"
        else:
            try:
                import rtree  # noqa: F401  (trimesh's numpy intersector needs it)
            except ImportError:
                raise MirrorError("no ray engine: pip install embreex (fast) or rtree (numpy fallback)") from None
            from trimesh.ray.ray_triangle import RayMeshIntersector

            self.engine = "numpy"
            logger.warning("ray casting without embree (pip install embreex): expect ~100x slower")
        self._intersector = RayMeshIntersector(local)

    def first_hits(self, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
        """Index of the first triangle each ray hits (-1: none); origins in world coordinates."""
        if len(directions) == 0:
            return np.zeros(0, np.int64)
        o = np.broadcast_to(np.asarray(origins, np.float64) - self.offset, directions.shape)
        return np.asarray(self._intersector.intersects_first(np.ascontiguousarray(o), directions), np.int64)


def make_engine(mesh, engine: str = "auto") -> RayEngine | RasterEngine:
    """A MeshRayCaster, or for engine 'pyrender' the rasteriser of ``gtgen.render``."""
    if engine == "pyrender":
        from .render import MeshRasterizer

        return MeshRasterizer(mesh)
    return MeshRayCaster(mesh, engine)


# ----------------------------------------------------------------------------- rays


def grid_pixel_centres(width: int, height: int, shape: tuple[int, int]) -> np.ndarray:
    """(rows*cols, 2) image coordinates (COLMAP: pixel (0, 0) spans [0, 1]^2) of the grid cell centres, row-major."""
    rows, cols = shape
    x = (np.arange(cols) + 0.5) * (width / cols)
    y = (np.arange(rows) + 0.5) * (height / rows)
    xx, yy = np.meshgrid(x, y)
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


def camera_rays(camera, shape: tuple[int, int]) -> np.ndarray:
    """(rows*cols, 3) unit bearing vectors in the camera frame; NaN where unprojection fails."""
    xy = grid_pixel_centres(camera.width, camera.height, shape)
    rays = np.asarray(camera.cam_ray_from_img(xy), np.float64)
    ok = np.all(np.isfinite(rays), axis=1)
    back = np.full_like(xy, np.nan)
    if ok.any():
        back[ok] = camera.img_from_cam(rays[ok], check_cheirality=False)
    err = np.linalg.norm(back - xy, axis=1)
    ok &= np.isfinite(err) & (err <= REPROJECTION_TOLERANCE_PX)
    if not (camera.is_perspective_fisheye() or camera.is_spherical()):
        ok &= rays[:, 2] > 0
    rays[~ok] = np.nan
    return rays


def triangle_map(
    caster: RayEngine | RasterEngine, camera, cam_from_world, resolution: int = 256, rays_cam: np.ndarray | None = None
) -> np.ndarray:
    """(rows, cols) int32 map of the first triangle seen through each grid cell centre (-1: none).

    `cam_from_world` is the image's world->camera ``Rigid3d`` (``Image.cam_from_world()``);
    `rays_cam` may pass precomputed ``camera_rays`` (shared by images of one camera).
    """
    if getattr(caster, "engine", None) == "pyrender":  # rasteriser: same grid, no rays
        return caster.triangle_map(camera, cam_from_world, resolution)
    shape = grid_shape(camera.width, camera.height, resolution)
    if rays_cam is None:
        rays_cam = camera_rays(camera, shape)
    m = cam_from_world.matrix()
    R, t = m[:, :3], m[:, 3]
    centre = -R.T @ t
    ok = np.all(np.isfinite(rays_cam), axis=1)
    hits = np.full(len(rays_cam), -1, np.int64)
    hits[ok] = caster.first_hits(centre, rays_cam[ok] @ R)  # rows: R^T d
    return hits.reshape(shape).astype(np.int32)


# ----------------------------------------------------------------------------- all images


def _cache_key(mesh_hash: str, camera, cam_from_world, resolution: int) -> str:
    h = hashlib.sha1()
    h.update(f"v{CACHE_VERSION}|{mesh_hash}|{camera.model_name}|{camera.width}|{camera.height}|{resolution}|".encode())
    h.update(np.asarray(camera.params, np.float64).tobytes())
    h.update(np.asarray(cam_from_world.matrix(), np.float64).tobytes())
    return h.hexdigest()


def _load_cached(path: Path) -> np.ndarray | None:
    try:
        with np.load(path) as z:
            return z["triangles"].astype(np.int32)
    except Exception:  # a damaged cache file is recomputed, not fatal
        logger.warning("ignoring unreadable cache file %s", path)
        return None


def _save_cached(path: Path, tri: np.ndarray, name: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, triangles=tri, name=np.array(name))


def triangle_maps(
    reconstruction,
    image_ids: list[int],
    mesh,
    options: VisibilityOptions | None = None,
    caster: RayEngine | RasterEngine | None = None,
) -> list[np.ndarray]:
    """Triangle map of every image in `image_ids` (in that order); cached per image when asked."""
    options = options or VisibilityOptions()
    if not image_ids:
        raise MirrorError("the reconstruction has no registered images")
    if options.resolution < 1:
        raise MirrorError(f"resolution must be >= 1, got {options.resolution}")
    mesh_hash = mesh_fingerprint(mesh) if options.cache_dir else ""
    caster = caster or make_engine(mesh, options.engine)
    raster = getattr(caster, "engine", None) == "pyrender"
    ray_cache: dict[tuple, np.ndarray] = {}
    maps = []
    hits = distinct = 0
    for image_id in tqdm(
        image_ids, desc="casting rays", unit="img", disable=not options.progress or len(image_ids) < 2
    ):
        image = reconstruction.image(image_id)
        camera = reconstruction.camera(image.camera_id)
        pose = image.cam_from_world()
        path = None
        if options.cache_dir:
            cache_key = _cache_key(mesh_hash, camera, pose, options.resolution)
            path = Path(options.cache_dir) / f"{'pyrender-' if raster else ''}{cache_key}.npz"
            if path.is_file():
                tri = _load_cached(path)
                if tri is not None:
                    maps.append(tri)
                    continue
        key = (camera.model_name, camera.width, camera.height, tuple(camera.params), options.resolution)
        if not raster and key not in ray_cache:
            ray_cache[key] = camera_rays(camera, grid_shape(camera.width, camera.height, options.resolution))
        tri = triangle_map(caster, camera, pose, options.resolution, ray_cache.get(key))
        valid = tri[tri >= 0]
        hits += len(valid)
        distinct += len(np.unique(valid))
        if path is not None:
            _save_cached(path, tri, image.name)
        maps.append(tri)
    if hits and options.element_size is None and distinct / hits > 0.5:
        logger.warning(
            "the mesh is finer than the ray grid (%.0f%% of hits land on distinct triangles): mesh-overlap "
            "ratios will be underestimated; raise the resolution, decimate the mesh or set an element size",
            100.0 * distinct / hits,
        )
    return maps


def element_ids(mesh, element_size: float | None) -> np.ndarray | None:
    """Per triangle, the id of the cubic cell of side `element_size` holding its centroid (None: triangles)."""
    if element_size is None:
        return None
    if element_size <= 0:
        raise MirrorError(f"element size must be > 0, got {element_size}")
    cells = np.floor((np.asarray(mesh.triangles_center) - np.asarray(mesh.bounds[0])) / element_size).astype(np.int64)
    _, inverse = np.unique(cells, axis=0, return_inverse=True)
    return inverse.ravel().astype(np.int64)


def element_map(tri_map: np.ndarray, elements: np.ndarray | None) -> np.ndarray:
    """Triangle map -> element map (same shape, -1 kept); identity when `elements` is None."""
    if elements is None:
        return tri_map
    out = np.full(tri_map.shape, -1, np.int64)
    hit = tri_map >= 0
    out[hit] = elements[tri_map[hit]]
    return out


def incidence_from_maps(maps: list[np.ndarray], num_elements: int) -> sp.csr_matrix:
    """Sparse (num_images, num_elements) matrix of which image sees which triangle (or element)."""
    return incidence_from_sets([np.unique(m[m >= 0]) for m in maps], num_elements)


def mesh_overlap(maps: list[np.ndarray], num_elements: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(incidence, MO): the image x element incidence and MO directional ratios |T_i & T_j| / |T_i|.

    Raises MirrorError when no image sees anything: the mesh is likely in another frame or scale.
    """
    incidence = incidence_from_maps(maps, num_elements)
    if incidence.nnz == 0:
        raise MirrorError(
            "no camera sees any triangle of the mesh: is the mesh in the reconstruction's frame "
            "(same coordinates and scale)?"
        )
    return incidence, directional_ratios(incidence).tocsr()
