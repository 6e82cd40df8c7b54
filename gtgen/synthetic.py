"""`gtgen synth`: photo-like renders of a textured mesh from known cameras, with a COLMAP model of the truth.

    OUT/images/<00000>.jpg     one render per view (pyrender, textured, lit by an ambient light and a sun)
    OUT/sparse/                the TRUE cameras (one PINHOLE camera, exact poses) and tracks: points sampled on
                               the surface, kept in every image where they project inside and their depth
                               matches the rendered depth (visible), a 3D point when >= 2 images see it
    OUT/mesh.ply               the mesh geometry in the model's frame (for ``gtgen overlap``)
    OUT/synth.json             the options and counts

Camera paths (``SynthOptions.path``), built in a frame whose vertical is ``up``:
- ``orbit``: rings around the bounding-box centre at the given elevations, far enough to see the whole box;
- ``aerial``: a downward-looking lawnmower grid over the box, high enough for ``overlap`` between neighbours;
- ``street``: a walk along the box's long side, outside it, at mid height, looking sideways at it.
Everything (procedural scene, jitter, surface samples) follows ``seed``. ``procedural_mesh`` makes textured
test scenes (a box, or boxes on a ground plane) with no data at all.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mirror_sfm.errors import MirrorError
from mirror_sfm.io_utils import atomic_path, write_text_atomic

from .render import depth_range, gl_camera_pose, import_pyrender, offscreen_renderer, set_multisampling

logger = logging.getLogger(__name__)

PATHS = ("orbit", "aerial", "street")
PROCEDURAL = ("boxes", "box")
UP_AXES = ("x", "y", "z", "-x", "-y", "-z")
SKY = (0.62, 0.74, 0.90)


@dataclasses.dataclass
class SynthOptions:
    """`focal`: pixels (None: 0.8 x the long side). `up`: the mesh's vertical axis. `elevations`: orbit rings,
    degrees above the horizon (views split evenly). `azimuth`: orbit start, degrees. `overlap`: aerial
    footprint overlap of grid neighbours. `jitter`: random perturbation of positions (share of the spacing)
    and angles (x 30 degrees); 0 gives the exact path. `num_points`: surface samples for tracks.
    `depth_tolerance`: relative depth difference that still counts as visible."""

    num_views: int = 24
    width: int = 640
    height: int = 480
    focal: float | None = None
    path: str = "orbit"
    seed: int = 0
    up: str = "z"
    elevations: tuple[float, ...] = (15.0, 35.0)
    azimuth: float = 0.0
    overlap: float = 0.7
    jitter: float = 0.05
    num_points: int = 20000
    depth_tolerance: float = 0.01
    jpeg_quality: int = 92
    progress: bool = True

    @property
    def focal_px(self) -> float:
        return float(self.focal) if self.focal is not None else 0.8 * max(self.width, self.height)

    def check(self) -> None:
        if self.path not in PATHS:
            raise MirrorError(f"unknown camera path {self.path!r} ({' | '.join(PATHS)})")
        if self.up not in UP_AXES:
            raise MirrorError(f"unknown up axis {self.up!r} ({' | '.join(UP_AXES)})")
        if self.num_views < 1 or self.width < 1 or self.height < 1:
            raise MirrorError(
                f"need >= 1 view of >= 1x1 pixels, got {self.num_views} views of {self.width}x{self.height}"
            )
        if self.focal is not None and self.focal <= 0:
            raise MirrorError(f"focal length must be > 0 pixels, got {self.focal}")
        if not 0.0 <= self.overlap < 1.0:
            raise MirrorError(f"aerial overlap must be in [0, 1), got {self.overlap}")
        if not self.elevations or any(abs(e) >= 90 for e in self.elevations):
            raise MirrorError(f"orbit elevations must be in (-90, 90) degrees, got {list(self.elevations)}")
        if self.num_points < 0 or self.depth_tolerance <= 0:
            raise MirrorError("need num_points >= 0 and depth_tolerance > 0")


@dataclasses.dataclass
class SynthResult:
    out_dir: Path
    names: list[str]
    poses: list[tuple[np.ndarray, np.ndarray]]  # (R, t) world -> camera per image
    num_points: int
    mean_track_length: float


# ----------------------------------------------------------------------------- procedural scenes


def _noise_texture(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) uint8 multi-octave value noise in a random palette, with random shapes for corners."""
    from PIL import Image, ImageDraw

    w, h = size
    field = np.zeros((h, w, 3), np.float32)
    for octave, cells in enumerate((3, 6, 12, 24, 48, 96)):
        grid = rng.random((cells, cells, 3)).astype(np.float32)
        up = np.stack([np.asarray(Image.fromarray(grid[..., c]).resize((w, h), Image.BICUBIC)) for c in range(3)], -1)
        field += up * 0.6**octave
    field = (field - field.min()) / max(float(np.ptp(field)), 1e-6)
    base, accent = rng.random(3), rng.random(3)
    img = ((base * (1 - field) + accent * field) * 255).clip(0, 255).astype(np.uint8)
    im = Image.fromarray(img)
    draw = ImageDraw.Draw(im)
    for _ in range(int(w * h / 2500)):
        x, y = rng.integers(0, w), rng.integers(0, h)
        s = int(rng.integers(3, max(4, min(w, h) // 8)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.rectangle if rng.random() < 0.6 else draw.ellipse)(
            [x, y, x + s, y + int(s * rng.uniform(0.5, 2))], fill=colour
        )
    return np.asarray(im)


def _quad(origin, a, b, cell: float, tile: tuple[float, float, float, float]):
    """Vertices, faces, uvs of the parallelogram origin + s a + t b (s, t in [0, 1]) on a grid of about
    `cell`-sized squares, facing a x b, textured with the atlas rectangle `tile` = (u0, v0, u1, v1)."""
    origin, a, b = (np.asarray(x, np.float64) for x in (origin, a, b))
    na, nb = max(1, math.ceil(np.linalg.norm(a) / cell)), max(1, math.ceil(np.linalg.norm(b) / cell))
    s, t = np.meshgrid(np.linspace(0, 1, na + 1), np.linspace(0, 1, nb + 1))  # vertex (j, i) at j * (na + 1) + i
    s, t = s.ravel(), t.ravel()
    vertices = origin + s[:, None] * a + t[:, None] * b
    u0, v0, u1, v1 = tile
    uv = np.stack([u0 + s * (u1 - u0), v0 + t * (v1 - v0)], axis=1)
    j, i = np.meshgrid(np.arange(nb), np.arange(na), indexing="ij")
    v00 = (j * (na + 1) + i).ravel()
    v10, v01, v11 = v00 + 1, v00 + na + 1, v00 + na + 2
    faces = np.concatenate([np.stack([v00, v10, v11], 1), np.stack([v00, v11, v01], 1)])
    return vertices, faces, uv


def _box_quads(centre, size, yaw: float, bottom: bool):
    """(origin, a, b) of a box's faces, each facing outwards (a x b along the outer normal)."""
    c, (sx, sy, sz) = np.asarray(centre, np.float64), size
    ex = np.array([math.cos(yaw), math.sin(yaw), 0.0]) * sx
    ey = np.array([-math.sin(yaw), math.cos(yaw), 0.0]) * sy
    ez = np.array([0.0, 0.0, sz])
    o = c - (ex + ey + ez) / 2  # min corner
    quads = [
        (o, ey, ex) if bottom else None,  # bottom (-z)
        (o + ez, ex, ey),  # top (+z)
        (o, ex, ez),  # -y side
        (o + ey, ez, ex),  # +y side
        (o, ez, ey),  # -x side
        (o + ex, ey, ez),
    ]  # +x side
    return [q for q in quads if q is not None]


def procedural_mesh(kind: str = "boxes", seed: int = 0, num_boxes: int = 5, cell: float | None = None):
    """A textured trimesh (z up): 'box', a 2-unit cube at the origin; 'boxes', `num_boxes` (<= 7) boxes of
    random size and heading on a 20 x 20 ground plane. Faces are split into squares of about `cell`
    (default 0.25 for 'box', 0.5 for 'boxes') so mesh-overlap ratios have triangles to count."""
    import trimesh
    from PIL import Image

    if kind not in PROCEDURAL:
        raise MirrorError(f"unknown procedural scene {kind!r} ({' | '.join(PROCEDURAL)})")
    rng = np.random.default_rng(seed)
    quads = []
    if kind == "box":
        cell = cell or 0.25
        quads += _box_quads((0.0, 0.0, 0.0), (2.0, 2.0, 2.0), 0.0, bottom=True)
    else:
        if not 1 <= num_boxes <= 7:
            raise MirrorError(f"the boxes scene holds 1 to 7 boxes, got {num_boxes}")
        cell = cell or 0.5
        quads.append(((-10.0, -10.0, 0.0), (20.0, 0.0, 0.0), (0.0, 20.0, 0.0)))  # ground, facing +z
        placed: list[tuple[float, float, float]] = []
        while len(placed) < num_boxes:
            sx, sy, sz = rng.uniform(1.5, 3.5), rng.uniform(1.5, 3.5), rng.uniform(1.5, 5.0)
            x, y, r = *rng.uniform(-6.5, 6.5, 2), 0.5 * math.hypot(sx, sy)
            if all(math.hypot(x - px, y - py) > r + pr + 0.5 for px, py, pr in placed):
                placed.append((x, y, r))
                quads += _box_quads((x, y, sz / 2), (sx, sy, sz), rng.uniform(0, math.pi / 2), bottom=False)
    # texture atlas: the left half for the first quad (the ground or a face), 6 x 6 tiles on the right
    atlas_h = 1024
    atlas = np.zeros((atlas_h, 2 * atlas_h, 3), np.uint8)
    atlas[:, :atlas_h] = _noise_texture(rng, (atlas_h, atlas_h))
    tiles, tile_px = 6, atlas_h // 6
    pad = 2 / (2 * atlas_h)
    vertices, faces, uvs, offset = [], [], [], 0
    for k, (o, a, b) in enumerate(quads):
        if k == 0:
            rect = (pad, 2 * pad, 0.5 - pad, 1 - 2 * pad)
        else:
            r, c = divmod(k - 1, tiles)
            y0, x0 = r * tile_px, atlas_h + c * tile_px
            atlas[y0 : y0 + tile_px, x0 : x0 + tile_px] = _noise_texture(rng, (tile_px, tile_px))
            u0, v0 = x0 / (2 * atlas_h), 1 - (y0 + tile_px) / atlas_h  # uv origin at the bottom left
            rect = (u0 + pad, v0 + 2 * pad, u0 + tile_px / (2 * atlas_h) - pad, v0 + tile_px / atlas_h - 2 * pad)
        v, f, uv = _quad(o, a, b, cell, rect)
        vertices.append(v)
        faces.append(f + offset)
        uvs.append(uv)
        offset += len(v)
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=Image.fromarray(atlas), metallicFactor=0.0, roughnessFactor=0.9, doubleSided=True
    )
    visual = trimesh.visual.TextureVisuals(uv=np.concatenate(uvs), material=material)
    return trimesh.Trimesh(np.concatenate(vertices), np.concatenate(faces), visual=visual, process=False)


# ----------------------------------------------------------------------------- mesh input


def load_textured(path: str | Path) -> list:
    """Triangle meshes of a file (OBJ, GLB, PLY, ...), transforms applied, textures and colours kept."""
    import trimesh

    from .visibility import read_trimesh

    path = Path(path)
    scene = read_trimesh(path, "scene")
    meshes = []
    for node in scene.graph.nodes_geometry:
        transform, name = scene.graph[node]
        geom = scene.geometry[name]
        if isinstance(geom, trimesh.Trimesh) and len(geom.faces):
            geom = geom.copy()
            geom.apply_transform(transform)
            meshes.append(geom)
    if not meshes:
        raise MirrorError(f"{path}: no triangles in this mesh (empty, or a point cloud?)")
    return meshes


def merged_geometry(meshes: list):
    """One plain Trimesh (no visuals) of all meshes, in order: the geometry ``gtgen overlap`` reads back."""
    import trimesh

    vertices, faces, offset = [], [], 0
    for m in meshes:
        vertices.append(np.asarray(m.vertices, np.float64))
        faces.append(np.asarray(m.faces, np.int64) + offset)
        offset += len(m.vertices)
    return trimesh.Trimesh(np.concatenate(vertices), np.concatenate(faces), process=False)


# ----------------------------------------------------------------------------- camera paths


def up_basis(up: str) -> np.ndarray:
    """3x3 matrix whose columns are two horizontal axes and the vertical (right-handed)."""
    axis = "xyz".index(up[-1])
    sign = -1.0 if up.startswith("-") else 1.0
    e3 = np.eye(3)[axis] * sign
    e1 = np.eye(3)[(axis + 1) % 3]
    return np.stack([e1, np.cross(e3, e1), e3], axis=1)


def look_at(centre, target, up) -> tuple[np.ndarray, np.ndarray]:
    """(R, t) world -> camera (COLMAP: x right, y down, z forward) of a camera at `centre` facing `target`."""
    centre, up = np.asarray(centre, np.float64), np.asarray(up, np.float64)
    forward = np.asarray(target, np.float64) - centre
    forward /= np.linalg.norm(forward)
    if abs(forward @ up) > 0.999:  # looking straight up or down: any horizontal axis is "right"
        helper = np.eye(3)[int(np.argmin(np.abs(up)))]
        up = helper - (helper @ forward) * forward
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    R = np.stack([right, np.cross(forward, right), forward])
    return R, -R @ centre


def _rotate_about(R: np.ndarray, axis_cam: int, angle: float) -> np.ndarray:
    """R turned by `angle` about one of the camera's own axes."""
    c, s = math.cos(angle), math.sin(angle)
    i, j = [k for k in range(3) if k != axis_cam]
    G = np.eye(3)
    G[i, i], G[i, j], G[j, i], G[j, j] = c, -s, s, c
    return G @ R


def _fit_distance(
    centre: np.ndarray,
    direction: np.ndarray,
    corners: np.ndarray,
    up: np.ndarray,
    options: SynthOptions,
    far: float,
    margin: float = 0.92,
) -> float:
    """Smallest distance along `direction` (<= `far`, where the bounding sphere fits) from which a camera
    looking at `centre` sees all box `corners` within `margin` of the image (bisection)."""
    f, half = options.focal_px, margin * np.array([options.width, options.height]) / 2

    def fits(d: float) -> bool:
        R, t = look_at(centre + d * direction, centre, up)
        cam = corners @ R.T + t
        return bool((cam[:, 2] > 0).all() and (np.abs(f * cam[:, :2] / cam[:, 2:]) <= half).all())

    near = 0.0
    for _ in range(40):
        mid = (near + far) / 2
        near, far = (near, mid) if fits(mid) else (mid, far)
    return far


def camera_path(
    bounds: np.ndarray, options: SynthOptions, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(R, t) world -> camera of every view along the requested path."""
    B = up_basis(options.up)
    corners = np.array([[x, y, z] for x in bounds[:, 0] for y in bounds[:, 1] for z in bounds[:, 2]]) @ B
    lo, hi = corners.min(axis=0), corners.max(axis=0)  # the box in (horizontal 1, horizontal 2, up) coordinates
    to_world = lambda p: np.asarray(p, np.float64) @ B.T  # noqa: E731  (rows of local coordinates)
    f, w, h, n, jit = options.focal_px, options.width, options.height, options.num_views, options.jitter
    up = B[:, 2]
    poses = []
    if options.path == "orbit":
        centre = (lo + hi) / 2
        radius = 0.5 * float(np.linalg.norm(hi - lo))
        distance = 1.05 * radius / math.sin(math.atan(min(w, h) / (2 * f)))  # the bounding sphere fits
        corners_local = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        rings = list(options.elevations)
        counts = [n // len(rings) + (k < n % len(rings)) for k in range(len(rings))]
        for ring, (elevation, count) in enumerate(zip(rings, counts)):
            step = 2 * math.pi / max(count, 1)
            for k in range(count):
                az = math.radians(options.azimuth) + step * (k + 0.5 * ring) + jit * step * rng.uniform(-1, 1)
                el = math.radians(elevation) + jit * math.radians(10) * rng.uniform(-1, 1)
                direction = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
                d = _fit_distance(to_world(centre), B @ direction, to_world(corners_local), up, options, distance)
                pos = centre + d * (1 + jit * rng.uniform(-1, 1)) * direction
                target = centre + jit * radius * 0.2 * rng.uniform(-1, 1, 3)
                poses.append(look_at(to_world(pos), to_world(target), up))
    elif options.path == "aerial":
        size = np.maximum(hi - lo, 1e-9)
        nx = max(1, round(math.sqrt(n * size[0] / size[1])))
        ny = math.ceil(n / nx)
        sx, sy = size[0] / nx, size[1] / ny
        height = max(sx / (1 - options.overlap) * f / w, sy / (1 - options.overlap) * f / h)
        z = max(lo[2] + height, hi[2] + 0.25 * (hi[2] - lo[2]) + 1e-6)
        for r in range(ny):
            for c in range(nx) if r % 2 == 0 else reversed(range(nx)):  # lawnmower
                if len(poses) == n:
                    break
                pos = np.array([lo[0] + (c + 0.5) * sx, lo[1] + (r + 0.5) * sy, z])
                pos[:2] += jit * np.array([sx, sy]) * rng.uniform(-1, 1, 2)
                R = np.stack([B[:, 0], -B[:, 1], -B[:, 2]])  # image x along the first horizontal axis, looking down
                R = _rotate_about(R, 2, jit * math.radians(30) * rng.uniform(-1, 1))  # yaw
                R = _rotate_about(R, 0, jit * math.radians(30) * rng.uniform(-1, 1))  # tilt
                poses.append((R, -R @ to_world(pos)))
    else:  # street
        along = 0 if hi[0] - lo[0] >= hi[1] - lo[1] else 1
        across = 1 - along
        extent = hi - lo
        standoff = max(0.1 * extent[across], extent[2] * f / h, 1e-6)
        spacing = extent[along] / max(n - 1, 1)
        for k in range(n):
            pos = np.zeros(3)
            pos[along] = (
                lo[along] + k * spacing if n > 1 else (lo[along] + hi[along]) / 2
            ) + jit * spacing * rng.uniform(-1, 1)
            pos[across] = lo[across] - standoff
            pos[2] = lo[2] + 0.5 * extent[2] * (1 + jit * rng.uniform(-1, 1))
            target = pos.copy()
            target[across] += 1.0
            R, t = look_at(to_world(pos), to_world(target), up)
            R = _rotate_about(R, 1, jit * math.radians(30) * rng.uniform(-1, 1))  # turn left / right
            poses.append((R, -R @ to_world(pos)))
    return poses


# ----------------------------------------------------------------------------- rendering


class PhotoRenderer:
    """Lit, textured renders (colour + z-depth) of meshes through a pinhole camera."""

    def __init__(self, meshes: list, options: SynthOptions):
        pyrender = import_pyrender()
        geometry_bounds = np.array([[m.bounds[0] for m in meshes], [m.bounds[1] for m in meshes]])
        self.bounds = np.stack([geometry_bounds[0].min(axis=0), geometry_bounds[1].max(axis=0)])
        self.offset = self.bounds.mean(axis=0)  # recentred: float32 on the GPU
        self.scene = pyrender.Scene(bg_color=[*SKY, 1.0], ambient_light=[0.45, 0.45, 0.45])
        if not any(m.visual.defined for m in meshes):
            logger.warning("the mesh has no texture or colours: renders will be textureless (poor for matching)")
        for m in meshes:
            local = m.copy()
            local.apply_translation(-self.offset)
            self.scene.add(pyrender.Mesh.from_trimesh(local))
        B = up_basis(options.up)
        sun = -(0.8 * B[:, 2] + 0.45 * B[:, 0] + 0.3 * B[:, 1])  # direction the light travels
        sun /= np.linalg.norm(sun)
        self.scene.add(pyrender.DirectionalLight(color=np.ones(3), intensity=2.5), pose=self._light_pose(sun))
        f = options.focal_px
        self.K = np.array([[f, 0, options.width / 2], [0, f, options.height / 2], [0, 0, 1.0]])
        self.camera = pyrender.IntrinsicsCamera(f, f, options.width / 2, options.height / 2)
        self.camera_node = self.scene.add(self.camera, pose=np.eye(4))
        self.size = (options.width, options.height)
        self.renderer = offscreen_renderer(options.width, options.height)
        self._depth_only = pyrender.RenderFlags.DEPTH_ONLY

    @staticmethod
    def _light_pose(direction: np.ndarray) -> np.ndarray:
        z = -direction  # a light shines along its -z
        x = np.cross([0.0, 0.0, 1.0] if abs(z[2]) < 0.9 else [1.0, 0.0, 0.0], z)
        x /= np.linalg.norm(x)
        pose = np.eye(4)
        pose[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
        return pose

    def render(self, R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 image and (H, W) float32 depth along the optical axis (0: background)."""
        w, h = self.size
        cam_from_world = np.concatenate([R, t[:, None]], axis=1)
        corners = np.array(
            [[(x - self.K[0, 2]) / self.K[0, 0], (y - self.K[1, 2]) / self.K[1, 1]] for x in (0, w) for y in (0, h)]
        )
        zrange = depth_range(self.bounds, cam_from_world, corners)
        if zrange is None:
            return np.tile(np.uint8(np.array(SKY) * 255), (h, w, 1)), np.zeros((h, w), np.float32)
        self.camera.znear, self.camera.zfar = zrange
        self.scene.set_pose(self.camera_node, gl_camera_pose(cam_from_world, self.offset))
        set_multisampling(self.renderer, 4)  # antialiased photo
        colour, _ = self.renderer.render(self.scene)
        set_multisampling(self.renderer, 0)  # depth exactly at pixel centres
        depth = self.renderer.render(self.scene, flags=self._depth_only)
        return np.ascontiguousarray(colour), depth

    def close(self) -> None:
        self.renderer.delete()


def visible_points(
    points: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray, depth: np.ndarray, tolerance: float
) -> tuple[np.ndarray, np.ndarray]:
    """(indices, (n, 2) image coordinates) of points inside the image whose depth matches the rendered depth.

    `depth` is sampled at pixel centres; the depth at a point's sub-pixel position is interpolated bilinearly
    in 1/z (exact on planes, so slanted surfaces keep their points) from the 4 surrounding centres, all of
    which must be on the surface: points within a pixel of an occlusion edge are dropped."""
    h, w = depth.shape
    cam = points @ R.T + t
    z = cam[:, 2]
    front = z > 0
    xy = np.full((len(points), 2), -1.0)
    xy[front] = cam[front, :2] / z[front, None] @ K[:2, :2].T + K[:2, 2]
    inside = front & (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
    idx = np.flatnonzero(inside)
    c = xy[idx] - 0.5  # pixel-centre coordinates
    x0 = np.clip(np.floor(c[:, 0]).astype(np.int64), 0, max(w - 2, 0))
    y0 = np.clip(np.floor(c[:, 1]).astype(np.int64), 0, max(h - 2, 0))
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = np.clip(c[:, 0] - x0, 0, 1), np.clip(c[:, 1] - y0, 0, 1)
    d = np.stack([depth[y0, x0], depth[y0, x1], depth[y1, x0], depth[y1, x1]], axis=1).astype(np.float64)
    on_surface = (d > 0).all(axis=1)
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
    weights = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], axis=1)
    inv_z = (inv * weights).sum(axis=1)
    ok = on_surface & (np.abs(inv_z * z[idx] - 1.0) <= tolerance)
    return idx[ok], xy[idx[ok]]


# ----------------------------------------------------------------------------- outputs


def build_reconstruction(
    names: list[str],
    poses,
    K: np.ndarray,
    size: tuple[int, int],
    points: np.ndarray,
    observations: list[tuple[np.ndarray, np.ndarray]],
    colours: np.ndarray,
):
    """pycolmap model: one PINHOLE camera, the images with their 2D points, a 3D point per sample seen >= 2 times."""
    import pycolmap

    seen = np.zeros(len(points), np.int64)
    for idx, _ in observations:
        seen[idx] += 1
    keep = seen >= 2
    rec = pycolmap.Reconstruction()
    w, h = size
    rec.add_camera_with_trivial_rig(
        pycolmap.Camera(camera_id=1, model="PINHOLE", width=w, height=h, params=[K[0, 0], K[1, 1], K[0, 2], K[1, 2]])
    )
    tracks: dict[int, list] = {}
    for k, ((R, t), (idx, xy), name) in enumerate(zip(poses, observations, names)):
        sel = keep[idx]
        image = pycolmap.Image(
            name=name, keypoints=np.asarray(xy[sel], np.float64).reshape(-1, 2), camera_id=1, image_id=k + 1
        )
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(R), t))
        for p2d, p in enumerate(idx[sel]):
            tracks.setdefault(int(p), []).append(pycolmap.TrackElement(k + 1, p2d))
    for p in sorted(tracks):
        rec.add_point3D(points[p], pycolmap.Track(tracks[p]), colours[p])
    return rec


def _write_model_atomic(rec, target: Path) -> None:
    """Write the model into a temporary folder beside `target`, then swap it in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    old = None
    try:
        rec.write(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def image_name(k: int) -> str:
    return f"{k:05d}.jpg"


def synthesize(meshes: list, out_dir: str | Path, options: SynthOptions | None = None, source: str = "") -> SynthResult:
    """Render the views, write images, the true COLMAP model, mesh.ply and synth.json (see the module docstring)."""
    from PIL import Image

    options = options or SynthOptions()
    options.check()
    out_dir = Path(out_dir)
    if not meshes or sum(len(m.faces) for m in meshes) == 0:
        raise MirrorError("the mesh has no triangles")
    geometry = merged_geometry(meshes)
    rng = np.random.default_rng(options.seed)
    poses = camera_path(np.asarray(geometry.bounds, np.float64), options, rng)
    names = [image_name(k) for k in range(len(poses))]
    points = _sample_surface(geometry, options.num_points, options.seed)
    colours = np.zeros((len(points), 3), np.uint8)
    coloured = np.zeros(len(points), bool)

    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    wanted = set(names)
    stale = [p for p in images_dir.glob("*.jpg") if re.fullmatch(r"\d+\.jpg", p.name) and p.name not in wanted]
    for p in stale:  # views of an earlier, longer run: not in this model
        p.unlink()
    renderer = PhotoRenderer(meshes, options)
    observations = []
    try:
        for (R, t), name in tqdm(list(zip(poses, names)), desc="rendering", unit="view", disable=not options.progress):
            image, depth = renderer.render(R, t)
            with atomic_path(images_dir / name) as tmp:
                Image.fromarray(image).save(tmp, format="JPEG", quality=options.jpeg_quality)
            idx, xy = visible_points(points, R, t, renderer.K, depth, options.depth_tolerance)
            new = ~coloured[idx]
            px = xy[new].astype(np.int64)
            colours[idx[new]] = image[px[:, 1], px[:, 0]]
            coloured[idx[new]] = True
            observations.append((idx, xy))
    finally:
        renderer.close()

    rec = build_reconstruction(names, poses, renderer.K, (options.width, options.height), points, observations, colours)
    with atomic_path(out_dir / "mesh.ply") as tmp:
        geometry.export(tmp, file_type="ply")
    _write_model_atomic(rec, out_dir / "sparse")
    lengths = [p.track.length() for p in rec.points3D.values()]
    mean_len = float(np.mean(lengths)) if lengths else 0.0
    summary = {
        "source": source,
        "options": dataclasses.asdict(options),
        "focal_px": options.focal_px,
        "images": len(names),
        "faces": int(len(geometry.faces)),
        "points3D": len(lengths),
        "mean_track_length": mean_len,
    }
    write_text_atomic(out_dir / "synth.json", json.dumps(summary, indent=2) + "\n")
    if len(lengths) == 0 and options.num_points:
        logger.warning("no surface point is seen by two views: the model has no tracks (check the path and up axis)")
    logger.info("%d views, %d 3D points (mean track length %.1f) -> %s", len(names), len(lengths), mean_len, out_dir)
    return SynthResult(out_dir, names, poses, len(lengths), mean_len)


def _sample_surface(geometry, count: int, seed: int) -> np.ndarray:
    """(count, 3) points uniformly on the surface (by area), reproducible for a seed."""
    import trimesh

    if count == 0:
        return np.zeros((0, 3))
    points, _ = trimesh.sample.sample_surface(geometry, count, seed=seed)
    return np.asarray(points, np.float64)


def synthesize_file(mesh_path: str | Path, out_dir: str | Path, options: SynthOptions | None = None) -> SynthResult:
    """`synthesize` on a mesh file."""
    return synthesize(load_textured(mesh_path), out_dir, options, source=str(mesh_path))


def synthesize_procedural(
    kind: str, out_dir: str | Path, options: SynthOptions | None = None, num_boxes: int = 5
) -> SynthResult:
    """`synthesize` on a ``procedural_mesh`` (same seed as the views)."""
    options = options or SynthOptions()
    if options.up != "z":
        raise MirrorError("procedural scenes are z-up: leave the up axis at 'z'")
    mesh = procedural_mesh(kind, options.seed, num_boxes=num_boxes)
    return synthesize([mesh], out_dir, options, source=f"procedural:{kind}")
