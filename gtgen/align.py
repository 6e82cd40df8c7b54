"""`gtgen align`: bring a mesh given in its own frame (a photogrammetry model, ...) into a reconstruction's frame.

The similarity x_rec = s R x_mesh + t is fitted to the reconstruction's sparse 3D points (filtered as
for meshing) by scaled ICP:

1. the mesh surface is sampled densely (area-weighted); initial guesses put the centroids together,
   scale by the ratio of RMS radii, and turn the mesh's principal axes onto the points' in each of
   the 24 proper axis permutations/sign flips, plus `random_starts` random rotations;
2. every guess runs a short trimmed ICP on a subset of the points (nearest mesh sample per point,
   the closest `trim` share of pairs, Umeyama with scale); the best few by trimmed RMS are refined on
   all points, the last iterations against exact closest points on the triangles;
3. the fit is accepted when at least `min_inlier_fraction` of the points lie within `tolerance` x
   the scene scale (median distance of the points from their median) of the surface, and the
   cameras see the aligned mesh (ray casting: share of cameras with any hit, and share of observed
   points that the surface does not hide), and the aligned mesh is of the point cloud's size (within
   `max_size_ratio`). Otherwise a MirrorError says why.

Symmetric shapes may align in a mirrored-by-rotation pose that fits the points as well as the true
one; the visibility check catches most such cases (points would be hidden behind the surface).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree
from tqdm import tqdm

from mirror_sfm.errors import MirrorError
from mirror_sfm.io_utils import atomic_path, write_text_atomic

from .meshing import MeshingOptions, read_reconstruction, sparse_points, statistical_inliers

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Similarity:
    """x_rec = scale * rotation @ x_mesh + translation."""

    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    @property
    def matrix(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = self.scale * self.rotation
        m[:3, 3] = self.translation
        return m

    def apply(self, points: np.ndarray) -> np.ndarray:
        return self.scale * np.asarray(points, np.float64) @ self.rotation.T + self.translation

    def inverse_apply(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points, np.float64) - self.translation) @ self.rotation / self.scale

    def to_dict(self) -> dict:
        return {
            "scale": float(self.scale),
            "rotation": self.rotation.tolist(),
            "translation": self.translation.tolist(),
            "matrix": self.matrix.tolist(),
        }


@dataclasses.dataclass
class AlignOptions:
    """`num_samples`: mesh surface samples. `min_track_length`, `max_reprojection_error`: sparse point
    filters (as for meshing). `trim`: share of closest pairs used by each ICP step. `random_starts`:
    random initial rotations besides the 24 principal-axis ones. `coarse_samples`, `coarse_points`,
    `coarse_iterations`: mesh samples, point subset and steps for screening the starts; the
    `refine_starts` best get `iterations` steps on all points. `tolerance`: inlier distance as a share of
    the scene scale; `min_inlier_fraction`: below it the fit is refused, and so is a fit whose mesh ends up
    more than `max_size_ratio` times larger (or smaller) than the point cloud (a huge surface can pass near
    many points: a degenerate fit). `check_visibility`: cast rays from the cameras (`visibility_resolution` grid) and
    refuse when fewer than `min_camera_share` of the cameras see the mesh."""

    num_samples: int = 200_000
    min_track_length: int = 3
    max_reprojection_error: float | None = 4.0
    trim: float = 0.8
    random_starts: int = 100
    coarse_samples: int = 20_000
    coarse_points: int = 400
    coarse_iterations: int = 15
    refine_starts: int = 5
    iterations: int = 60
    exact_iterations: int = 5
    tolerance: float = 0.03
    min_inlier_fraction: float = 0.5
    max_size_ratio: float = 10.0
    check_visibility: bool = True
    visibility_resolution: int = 48
    min_camera_share: float = 0.5
    seed: int = 0
    progress: bool = True

    def check(self) -> None:
        if not 0 < self.trim <= 1:
            raise MirrorError(f"trim must be in (0, 1], got {self.trim}")
        if self.num_samples < 100 or self.tolerance <= 0 or not 0 <= self.min_inlier_fraction <= 1:
            raise MirrorError("need num_samples >= 100, tolerance > 0 and min_inlier_fraction in [0, 1]")


@dataclasses.dataclass
class AlignReport:
    """Fit quality: distances in reconstruction units and as shares of the scene scale."""

    similarity: Similarity
    points: int
    scene_scale: float
    inlier_fraction: float
    median_distance: float
    trimmed_rms: float
    cameras: int = 0
    cameras_seeing_mesh: int = 0
    observations_checked: int = 0
    observations_visible: float = float("nan")
    observations_hidden: float = float("nan")
    time_s: float = 0.0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["similarity"] = self.similarity.to_dict()
        d["median_distance_rel"] = self.median_distance / self.scene_scale
        d["trimmed_rms_rel"] = self.trimmed_rms / self.scene_scale
        return d


# ----------------------------------------------------------------------------- maths


def umeyama(src: np.ndarray, dst: np.ndarray) -> Similarity:
    """Least-squares similarity dst ~ s R src + t (Umeyama 1991), proper rotation."""
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - mu_s, dst - mu_d
    cov = b.T @ a / len(src)
    U, S, Vt = np.linalg.svd(cov)
    D = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        D[2, 2] = -1
    R = U @ D @ Vt
    var = (a**2).sum() / len(src)
    s = float(np.trace(np.diag(S) @ D) / var) if var > 0 else 1.0
    return Similarity(s, R, mu_d - s * R @ mu_s)


def principal_axes(points: np.ndarray) -> np.ndarray:
    """Columns: principal axes, largest variance first."""
    centred = points - points.mean(axis=0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    return vectors[:, ::-1]


def axis_rotations() -> list[np.ndarray]:
    """The 24 signed permutation matrices with determinant +1."""
    import itertools

    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3))
            m[range(3), perm] = signs
            if np.linalg.det(m) > 0:
                out.append(m)
    return out


def random_rotations(count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Uniform random rotations (unit quaternions)."""
    from scipy.spatial.transform import Rotation

    if count <= 0:
        return []
    return list(Rotation.random(count, random_state=int(rng.integers(2**31))).as_matrix())


class SurfaceDistance:
    """Closest points on a mesh: nearest dense samples (fast), or exact point-to-triangle over the
    triangles of the nearest samples (no rtree needed); each with the normal of its triangle."""

    def __init__(self, mesh, num_samples: int, seed: int):
        import trimesh

        self.mesh = mesh
        samples, faces = trimesh.sample.sample_surface(mesh, num_samples, seed=seed)
        self.samples = np.asarray(samples, np.float64)
        self.sample_faces = np.asarray(faces, np.int64)
        self.tree = cKDTree(self.samples)
        self.triangles = np.asarray(mesh.triangles, np.float64)
        self.normals = np.asarray(mesh.face_normals, np.float64)

    def nearest_samples(self, points: np.ndarray, eps: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(nearest samples, distances, normals); `eps` > 0 allows (1 + eps)-approximate ones: far faster for
        points far from a flat surface (many samples nearly equidistant), fine while ICP is far from converged."""
        d, i = self.tree.query(points, k=1, eps=eps)
        return self.samples[i], d, self.normals[self.sample_faces[i]]

    def closest_points(self, points: np.ndarray, candidates: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(closest points on the triangles near each point's nearest samples, distances, normals)."""
        import trimesh

        _, idx = self.tree.query(points, k=candidates)
        faces = self.sample_faces[idx]  # (n, k)
        rep = np.repeat(points, faces.shape[1], axis=0)
        cp = trimesh.triangles.closest_point(self.triangles[faces.ravel()], rep).reshape(len(points), -1, 3)
        d = np.linalg.norm(cp - points[:, None], axis=2)
        best = d.argmin(axis=1)
        rows = np.arange(len(points))
        return cp[rows, best], d[rows, best], self.normals[faces[rows, best]]


def rotation_from_vector(w: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(w).as_matrix()


def point_to_plane_step(sim: Similarity, points: np.ndarray, target: np.ndarray, normals: np.ndarray) -> Similarity:
    """One Gauss-Newton step of sum (n . (s R q + t - p))^2 over scale, rotation and translation.

    `target` / `normals`: closest surface points and their normals in the mesh frame. The update acts in
    the reconstruction frame about the points' centroid, coordinates divided by their RMS radius."""
    y = sim.apply(target)
    n = normals @ sim.rotation.T
    c = points.mean(axis=0)
    L = max(float(np.sqrt(((points - c) ** 2).sum(axis=1).mean())), 1e-12)
    yl, pl = (y - c) / L, (points - c) / L
    A = np.concatenate([np.einsum("ij,ij->i", n, yl)[:, None], np.cross(yl, n), n], axis=1)  # d/d(log s, w, t)
    b = np.einsum("ij,ij->i", n, yl - pl)
    x = np.linalg.solve(A.T @ A + 1e-9 * np.eye(7), -A.T @ b)
    ds, G = float(np.exp(np.clip(x[0], -0.5, 0.5))), rotation_from_vector(x[1:4])
    return Similarity(ds * sim.scale, G @ sim.rotation, c + ds * G @ (sim.translation - c) + L * x[4:])


def icp(
    points: np.ndarray,
    surface: SurfaceDistance,
    start: Similarity,
    iterations: int,
    trim: float,
    exact_iterations: int = 0,
    eps: float = 0.0,
) -> tuple[Similarity, float]:
    """Trimmed scaled point-to-plane ICP of `points` (reconstruction frame) against the mesh: steps against
    the nearest samples until converged (at most `iterations`), then `exact_iterations` against exact
    closest points on the triangles. Returns (similarity, trimmed RMS distance in reconstruction units)."""
    sim = start
    keep = max(7, int(round(trim * len(points))))

    def correspond(sim: Similarity, exact: bool):
        local = sim.inverse_apply(points)
        target, d, normals = surface.closest_points(local) if exact else surface.nearest_samples(local, eps)
        order = np.argsort(d)[:keep]
        return target[order], normals[order], order, d[order] * sim.scale

    rms = np.inf
    for it in range(iterations + exact_iterations):
        exact = it >= iterations
        target, normals, order, d = correspond(sim, exact)
        new_rms = float(np.sqrt(np.mean(d**2)))
        if not exact and abs(rms - new_rms) <= 1e-5 * new_rms:
            if exact_iterations == 0:
                break
            continue
        rms = new_rms
        new = point_to_plane_step(sim, points[order], target, normals)
        if np.all(np.isfinite(new.matrix)) and new.scale > 0:
            sim = new
    _, _, _, d = correspond(sim, exact_iterations > 0)
    return sim, float(np.sqrt(np.mean(d**2)))


def scene_scale(points: np.ndarray) -> float:
    """Median distance of the points from their median: a robust size of the reconstructed scene."""
    return float(np.median(np.linalg.norm(points - np.median(points, axis=0), axis=1)))


# ----------------------------------------------------------------------------- visibility check


def visibility_check(
    mesh, reconstruction, resolution: int, tolerance: float, max_points_per_image: int = 200, seed: int = 0
) -> dict:
    """Do the cameras see the (aligned) mesh? Per camera, a coarse ray grid hits it or not; per observation
    (up to `max_points_per_image` per image), the ray to the 3D point hits the surface near the point
    (visible), well before it (hidden behind the surface), or misses."""
    from .visibility import MeshRayCaster, camera_rays, grid_shape

    caster = MeshRayCaster(mesh)
    normals = np.asarray(mesh.face_normals, np.float64)
    v0 = np.asarray(mesh.triangles, np.float64)[:, 0]
    rng = np.random.default_rng(seed)
    seeing = checked = visible = hidden = 0
    ids = list(reconstruction.reg_image_ids())
    for image_id in ids:
        image = reconstruction.image(image_id)
        camera = reconstruction.camera(image.camera_id)
        m = image.cam_from_world().matrix()
        R, t = m[:, :3], m[:, 3]
        centre = -R.T @ t
        rays = camera_rays(camera, grid_shape(camera.width, camera.height, resolution))
        ok = np.all(np.isfinite(rays), axis=1)
        if (caster.first_hits(centre, rays[ok] @ R) >= 0).any():
            seeing += 1
        pts = np.array([reconstruction.point3D(p.point3D_id).xyz for p in image.points2D if p.has_point3D()])
        if len(pts) == 0:
            continue
        if len(pts) > max_points_per_image:
            pts = pts[rng.choice(len(pts), max_points_per_image, replace=False)]
        vec = pts - centre
        dist = np.linalg.norm(vec, axis=1)
        dirs = vec / np.maximum(dist[:, None], 1e-12)
        tri = caster.first_hits(centre, dirs)
        hit = tri >= 0
        depth = np.full(len(pts), np.inf)
        n = normals[tri[hit]]
        denom = np.einsum("ij,ij->i", n, dirs[hit])
        with np.errstate(divide="ignore", invalid="ignore"):
            depth[hit] = np.einsum("ij,ij->i", n, v0[tri[hit]] - centre) / denom
        checked += len(pts)
        visible += int((np.abs(depth - dist) <= tolerance).sum())
        hidden += int((depth < dist - tolerance).sum())
    return {
        "cameras": len(ids),
        "cameras_seeing_mesh": seeing,
        "observations_checked": checked,
        "observations_visible": visible / checked if checked else float("nan"),
        "observations_hidden": hidden / checked if checked else float("nan"),
    }


# ----------------------------------------------------------------------------- alignment


def alignment_points(reconstruction, options: AlignOptions) -> np.ndarray:
    """The filtered sparse points the mesh is fitted to."""
    if reconstruction.num_reg_images() == 0:
        raise MirrorError("the reconstruction has no registered images")
    if reconstruction.num_points3D() == 0:
        raise MirrorError("the reconstruction has no 3D points to align the mesh to")
    xyz, _, _ = sparse_points(
        reconstruction,
        MeshingOptions(
            min_track_length=options.min_track_length, max_reprojection_error=options.max_reprojection_error
        ),
    )
    xyz = xyz[statistical_inliers(xyz, 12, 2.0)]
    if len(xyz) < 10:
        raise MirrorError(
            f"only {len(xyz)} 3D points pass the filters (track length >= {options.min_track_length}): "
            "too few to align a mesh"
        )
    return xyz


def initial_guesses(
    points: np.ndarray, samples: np.ndarray, options: AlignOptions, rng: np.random.Generator
) -> list[Similarity]:
    """Centroids together, scale from the RMS radii, principal axes matched in all 24 proper ways, plus
    `random_starts` random rotations (principal axes are unstable for near-isotropic shapes)."""
    c_p, c_q = points.mean(axis=0), samples.mean(axis=0)
    r_p = np.sqrt(((points - c_p) ** 2).sum(axis=1).mean())
    r_q = np.sqrt(((samples - c_q) ** 2).sum(axis=1).mean())
    s0 = r_p / max(r_q, 1e-12)
    A_p, A_q = principal_axes(points), principal_axes(samples)
    if np.linalg.det(A_p) < 0:
        A_p[:, 2] *= -1
    if np.linalg.det(A_q) < 0:
        A_q[:, 2] *= -1
    rotations = [A_p @ D @ A_q.T for D in axis_rotations()] + random_rotations(options.random_starts, rng)
    return [Similarity(s0, R, c_p - s0 * R @ c_q) for R in rotations]


def fit_similarity(points: np.ndarray, mesh, options: AlignOptions) -> tuple[Similarity, float, SurfaceDistance]:
    """Best similarity over all starts (see the module docstring), its trimmed RMS, and the fine surface."""
    rng = np.random.default_rng(options.seed)
    coarse_surface = SurfaceDistance(mesh, min(options.coarse_samples, options.num_samples), options.seed)
    subset = (
        points
        if len(points) <= options.coarse_points
        else points[rng.choice(len(points), options.coarse_points, replace=False)]
    )
    coarse = []
    starts = initial_guesses(points, coarse_surface.samples, options, rng)
    for start in tqdm(starts, desc="alignment starts", unit="start", disable=not options.progress):
        sim, rms = icp(subset, coarse_surface, start, options.coarse_iterations, options.trim, eps=1.0)
        coarse.append((rms, sim))
    coarse.sort(key=lambda x: x[0])
    surface = SurfaceDistance(mesh, options.num_samples, options.seed + 1)
    best = None
    for rms0, start in coarse[: max(1, options.refine_starts)]:
        sim, rms = icp(points, surface, start, options.iterations, options.trim, options.exact_iterations)
        logger.debug("start rms %.4g -> refined scale %.6g rms %.4g", rms0, sim.scale, rms)
        if best is None or rms < best[1]:
            best = (sim, rms)
    return best[0], best[1], surface


def align_mesh_to_reconstruction(mesh, reconstruction, options: AlignOptions | None = None):
    """(aligned copy of `mesh`, AlignReport): the mesh moved into the reconstruction's frame.

    Raises MirrorError when the fit is poor (too few points near the surface) or no camera sees the result."""
    t0 = time.perf_counter()
    options = options or AlignOptions()
    options.check()
    if len(getattr(mesh, "faces", [])) == 0:
        raise MirrorError("the mesh has no triangles")
    points = alignment_points(reconstruction, options)
    scale = scene_scale(points)
    logger.info(
        "fitting the mesh (%d faces) to %d sparse points (scene scale %.4g)", len(mesh.faces), len(points), scale
    )
    sim, rms, surface = fit_similarity(points, mesh, options)
    _, d, _ = surface.closest_points(sim.inverse_apply(points))
    d = d * sim.scale
    tol = options.tolerance * scale
    report = AlignReport(sim, len(points), scale, float((d <= tol).mean()), float(np.median(d)), rms)
    logger.info(
        "scale %.6g, %.1f%% of points within %.3g (%.1f%% of the scene scale), median distance %.3g%% of "
        "the scene scale",
        sim.scale,
        100 * report.inlier_fraction,
        tol,
        100 * options.tolerance,
        100 * report.median_distance / scale,
    )
    if report.inlier_fraction < options.min_inlier_fraction:
        raise MirrorError(
            f"the mesh does not fit the reconstruction: only {100 * report.inlier_fraction:.0f}% of the "
            f"sparse points lie within {100 * options.tolerance:g}% of the scene scale of the aligned "
            f"surface (need {100 * options.min_inlier_fraction:.0f}%); median distance "
            f"{100 * report.median_distance / scale:.1f}% of the scene scale. Is it the same scene?"
        )
    aligned = mesh.copy()
    aligned.apply_transform(sim.matrix)
    lo, hi = np.percentile(points, [1, 99], axis=0)
    size_ratio = float(np.linalg.norm(np.ptp(aligned.vertices, axis=0)) / max(np.linalg.norm(hi - lo), 1e-12))
    if not 1 / options.max_size_ratio <= size_ratio <= options.max_size_ratio:
        raise MirrorError(
            f"the mesh does not fit the reconstruction: aligned, it is {size_ratio:.3g} times the size of "
            f"the sparse point cloud (allowed 1/{options.max_size_ratio:g} to {options.max_size_ratio:g}): "
            "a degenerate fit. Is it the same scene?"
        )
    if options.check_visibility:
        vis = visibility_check(aligned, reconstruction, options.visibility_resolution, tol, seed=options.seed)
        for k, v in vis.items():
            setattr(report, k, v)
        logger.info(
            "%d of %d cameras see the aligned mesh; of %d observed points, %.1f%% visible on the surface, "
            "%.1f%% hidden behind it",
            report.cameras_seeing_mesh,
            report.cameras,
            report.observations_checked,
            100 * report.observations_visible,
            100 * report.observations_hidden,
        )
        if report.cameras_seeing_mesh < options.min_camera_share * report.cameras:
            raise MirrorError(
                f"only {report.cameras_seeing_mesh} of {report.cameras} cameras see the aligned mesh: "
                "the alignment is likely wrong"
            )
    report.time_s = round(time.perf_counter() - t0, 3)
    return aligned, report


# ----------------------------------------------------------------------------- files


def load_mesh_keep_visuals(path: str | Path):
    """One Trimesh from a file, texture / colours kept where trimesh can (several parts are concatenated)."""
    import trimesh

    from .synthetic import load_textured

    parts = load_textured(path)
    return parts[0] if len(parts) == 1 else trimesh.util.concatenate(parts)


def write_mesh(mesh, path: str | Path) -> None:
    """Write atomically by suffix; OBJ keeps its material and texture files beside it."""
    path = Path(path)
    suffix = path.suffix.lstrip(".").lower() or "ply"
    if suffix != "obj":
        with atomic_path(path) as tmp:
            mesh.export(tmp, file_type=suffix)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        mesh.export(tmp_dir / path.name, file_type="obj", mtl_name=f"{path.stem}.mtl")
        for extra in sorted(tmp_dir.iterdir()):  # material and texture first, the OBJ last
            if extra.name != path.name:
                extra.replace(path.parent / extra.name)
        (tmp_dir / path.name).replace(path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def align_mesh_file(
    mesh_path: str | Path,
    sparse_dir: str | Path,
    out_path: str | Path,
    options: AlignOptions | None = None,
    transform_out: str | Path | None = None,
) -> AlignReport:
    """Read a mesh and a model folder, align, write the moved mesh (and the transform + report as JSON)."""
    mesh = load_mesh_keep_visuals(mesh_path)
    reconstruction = read_reconstruction(sparse_dir)
    aligned, report = align_mesh_to_reconstruction(mesh, reconstruction, options)
    write_mesh(aligned, out_path)
    if transform_out is not None:
        info = {
            "mesh": str(mesh_path),
            "sparse": str(sparse_dir),
            "output": str(out_path),
            "convention": "x_reconstruction = scale * rotation @ x_mesh + translation",
            **report.to_dict(),
        }
        write_text_atomic(transform_out, json.dumps(info, indent=2) + "\n")
    logger.info("aligned mesh -> %s", out_path)
    return report
