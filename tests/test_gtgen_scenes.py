"""Synthetic scenes with known answers for the gtgen tests (builders + checks of the builders).

A plane z = 0 triangulated on a regular grid, and cameras looking straight down at it: a pinhole
camera with focal f, size W x H at height h sees the rectangle of half-sizes h W / (2 f), h H / (2 f)
under its centre, so footprint overlaps are rectangle intersections.
"""

from __future__ import annotations

import numpy as np
import pycolmap
import trimesh

PLANE_HALF = 15.0
PLANE_CELL = 0.25


def plane_mesh(half: float = PLANE_HALF, cell: float = PLANE_CELL) -> trimesh.Trimesh:
    """Square [-half, half]^2 at z = 0; cell (r, c) (x from c, y from r) holds triangles 2k and 2k+1,
    k = r * n + c: 2k = (v00, v10, v11) below the diagonal (y - y0 < x - x0), 2k+1 = (v00, v11, v01)."""
    n = int(round(2 * half / cell))
    xs = -half + cell * np.arange(n + 1)
    xx, yy = np.meshgrid(xs, xs)  # vertex (r, c) at index r * (n + 1) + c
    vertices = np.stack([xx.ravel(), yy.ravel(), np.zeros(xx.size)], axis=1)
    r, c = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    v00 = (r * (n + 1) + c).ravel()
    v10, v01, v11 = v00 + 1, v00 + n + 1, v00 + n + 2  # v10: x + 1, v01: y + 1
    faces = np.empty((2 * n * n, 3), np.int64)
    faces[0::2] = np.stack([v00, v10, v11], axis=1)
    faces[1::2] = np.stack([v00, v11, v01], axis=1)
    return trimesh.Trimesh(vertices, faces, process=False)


def plane_triangle_at(x: np.ndarray, y: np.ndarray, half: float = PLANE_HALF, cell: float = PLANE_CELL) -> np.ndarray:
    """Index of the plane_mesh triangle holding each point (x, y)."""
    n = int(round(2 * half / cell))
    fx, fy = (np.asarray(x) + half) / cell, (np.asarray(y) + half) / cell
    c, r = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
    upper = (fy - r) > (fx - c)
    return 2 * (r * n + c) + upper


def look_down(centre) -> tuple[np.ndarray, np.ndarray]:
    """(R, t) world->camera of a camera at `centre` looking along -z, image x along +x, image y along -y."""
    R = np.array([[1.0, 0, 0], [0, -1, 0], [0, 0, -1]])
    return R, -R @ np.asarray(centre, float)


def make_reconstruction(
    cameras: list[tuple[str, list[float], int, int]],
    poses: list[tuple[np.ndarray, np.ndarray]],
    names: list[str] | None = None,
    num_keypoints: int = 0,
) -> pycolmap.Reconstruction:
    """One camera per image: cameras[k] = (model, params, W, H), poses[k] = (R, t) world->camera;
    image k gets id k + 1 and `num_keypoints` dummy keypoints (for tracks added later)."""
    rec = pycolmap.Reconstruction()
    for k, ((model, params, w, h), (R, t)) in enumerate(zip(cameras, poses)):
        rec.add_camera_with_trivial_rig(pycolmap.Camera(camera_id=k + 1, model=model, width=w, height=h, params=params))
        image = pycolmap.Image(
            name=names[k] if names else f"img{k:02d}.jpg",
            keypoints=np.ones((num_keypoints, 2)),
            camera_id=k + 1,
            image_id=k + 1,
        )
        rec.add_image_with_trivial_frame(
            image, pycolmap.Rigid3d(pycolmap.Rotation3d(np.asarray(R, float)), np.asarray(t, float))
        )
    return rec


def plane_scene(centres, f: float = 100.0, size: tuple[int, int] = (200, 200), **kw) -> pycolmap.Reconstruction:
    """Pinhole cameras (focal f, W x H) looking down at the plane from the given centres."""
    w, h = size
    return make_reconstruction(
        [("PINHOLE", [f, f, w / 2, h / 2], w, h)] * len(centres), [look_down(c) for c in centres], **kw
    )


def add_tracks(rec: pycolmap.Reconstruction, image_ids: list[int], first_keypoint: int, count: int) -> None:
    """`count` 3D points each seen by all of `image_ids` (keypoints first_keypoint, ... of each image)."""
    for n in range(count):
        track = pycolmap.Track()
        for image_id in image_ids:
            track.add_element(image_id, first_keypoint + n)
        rec.add_point3D(np.zeros(3), track)


def footprint(centre, f: float = 100.0, size: tuple[int, int] = (200, 200)) -> tuple[float, float, float, float]:
    """(x0, x1, y0, y1) of the plane rectangle a plane_scene camera sees."""
    hx, hy = centre[2] * size[0] / (2 * f), centre[2] * size[1] / (2 * f)
    return centre[0] - hx, centre[0] + hx, centre[1] - hy, centre[1] + hy


def rect_overlap(a, b) -> float:
    """|a & b| / |a| for rectangles (x0, x1, y0, y1)."""
    w = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[2], b[2]))
    return w * h / ((a[1] - a[0]) * (a[3] - a[2]))


def test_plane_triangle_lookup_matches_mesh():
    mesh = plane_mesh()
    rng = np.random.default_rng(0)
    pts = rng.uniform(-14.9, 14.9, size=(500, 2))
    tri = plane_triangle_at(pts[:, 0], pts[:, 1])
    bary = trimesh.triangles.points_to_barycentric(mesh.triangles[tri], np.c_[pts, np.zeros(len(pts))])
    assert (bary > -1e-9).all()


def test_look_down_projects_centre_to_principal_point():
    rec = plane_scene([(1.0, 2.0, 5.0)])
    image = rec.image(1)
    xy = image.project_point(np.array([1.0, 2.0, 0.0]))
    assert np.allclose(xy, [100, 100])
    # +x in the world is +x in the image, +y in the world is -y in the image
    assert image.project_point(np.array([2.0, 2.0, 0.0]))[0] > 100
    assert image.project_point(np.array([1.0, 3.0, 0.0]))[1] < 100


def require_offscreen_rendering():
    """Skip (with the reason) where pyrender or an offscreen OpenGL context is missing."""
    import pytest

    pytest.importorskip("pyrender")
    from gtgen import render
    from mirror_sfm.errors import MirrorError

    try:
        render.offscreen_renderer(8, 8).delete()
    except MirrorError as exc:
        pytest.skip(str(exc))
