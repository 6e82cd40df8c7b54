"""Triangle maps by rasterising the mesh with pyrender (OpenGL offscreen): the 'pyrender' visibility engine.

Each triangle gets its own three vertices coloured with its id + 1 packed in 24 bits of RGB (0 is the
background), drawn unlit (``RenderFlags.FLAT``), both sides, into a single-sample framebuffer (pyrender's
4x MSAA is switched off, so no pixel blends two ids), z-buffered by the rasteriser. The viewport is the
ray caster's grid (``engine.grid_shape``) and the intrinsics are scaled to it, so pixel (r, c) is
sampled at the same image point as the ray caster's cell (r, c): ((c + 0.5) W / cols, (r + 0.5) H / rows).

Pinhole cameras only: SIMPLE_PINHOLE, PINHOLE, or SIMPLE_RADIAL / RADIAL / OPENCV / FULL_OPENCV with all
distortion parameters zero. Any other camera is refused with a MirrorError, nothing is rendered undistorted
(the ray caster, the default engine, is exact for every model). Meshes are recentred on their bounding-box centre
(float32 on the GPU), and may have at most 2^24 - 1 triangles.

Offscreen OpenGL goes through EGL (``PYOPENGL_PLATFORM=egl`` unless already set): with no GPU, Mesa's
llvmpipe (Debian/Ubuntu packages libegl1, libegl-mesa0, libgl1-mesa-dri, libgl1). OSMesa does not work
with the PyOpenGL version pyrender pins.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from mirror_sfm.errors import MirrorError

from .engine import grid_shape

logger = logging.getLogger(__name__)

MAX_FACES = 2**24 - 1
PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")
DISTORTED_PERSPECTIVE = ("SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV")  # pinhole when distortion is 0


def import_pyrender():
    """pyrender, with the EGL platform chosen before PyOpenGL loads (MirrorError when missing)."""
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    try:
        import pyrender
    except ImportError as exc:
        raise MirrorError(
            f"engine 'pyrender' needs pyrender and an OpenGL driver (pip install pyrender; apt "
            f"install libegl1 libegl-mesa0 libgl1-mesa-dri): {exc}"
        ) from None
    return pyrender


def offscreen_renderer(width: int, height: int):
    """A pyrender OffscreenRenderer; MirrorError with a hint when no OpenGL context can be made."""
    pyrender = import_pyrender()
    try:
        return pyrender.OffscreenRenderer(int(width), int(height))
    except Exception as exc:  # EGL / PyOpenGL raise many types
        raise MirrorError(
            f"cannot open an offscreen OpenGL context (PYOPENGL_PLATFORM="
            f"{os.environ.get('PYOPENGL_PLATFORM')}): {exc!r}; on a machine without a GPU install "
            f"Mesa's EGL: apt install libegl1 libegl-mesa0 libgl1-mesa-dri"
        ) from None


def set_multisampling(renderer, samples: int) -> None:
    """Samples per pixel of an OffscreenRenderer's framebuffer. pyrender always draws into a 4x multisample
    framebuffer and resolves it by averaging (colour; depth takes one sample, off the pixel centre), which
    would blend the id colours of edge pixels: 0 draws single-sampled, at pixel centres. The multisample
    renderbuffers (made once per viewport size) are reallocated; pyrender's default is 4."""
    from OpenGL import GL

    platform, core = renderer._platform, renderer._renderer
    platform.make_current()
    try:
        core.viewport_width, core.viewport_height = renderer.viewport_width, renderer.viewport_height
        core._configure_main_framebuffer()
        w, h = core.viewport_width, core.viewport_height
        for buffer, fmt in ((core._main_cb_ms, GL.GL_RGBA), (core._main_db_ms, GL.GL_DEPTH_COMPONENT24)):
            GL.glBindRenderbuffer(GL.GL_RENDERBUFFER, buffer)
            GL.glRenderbufferStorageMultisample(GL.GL_RENDERBUFFER, samples, fmt, w, h)
            if samples == 0 and GL.glGetRenderbufferParameteriv(GL.GL_RENDERBUFFER, GL.GL_RENDERBUFFER_SAMPLES) != 0:
                raise MirrorError("cannot switch off multisampling in pyrender's framebuffer")
        GL.glBindRenderbuffer(GL.GL_RENDERBUFFER, 0)
    finally:
        platform.make_uncurrent()


def disable_msaa(renderer) -> None:
    """Single-sampled rendering from now on (see ``set_multisampling``)."""
    set_multisampling(renderer, 0)


# ----------------------------------------------------------------------------- cameras


def pinhole_params(camera) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) of a pycolmap camera without distortion; MirrorError for a distorted one."""
    params = np.asarray(camera.params, np.float64)
    extra = params[list(camera.extra_params_idxs())] if len(camera.extra_params_idxs()) else np.zeros(0)
    if not (camera.model_name in PINHOLE_MODELS or (camera.model_name in DISTORTED_PERSPECTIVE and not extra.any())):
        raise MirrorError(
            f"engine 'pyrender' renders pinhole cameras only, not {camera.model_name} with distortion "
            f"{extra.tolist()}: use the ray caster (engine 'auto' or 'embree'), which is exact for "
            f"every camera model, or undistort the images first"
        )
    return (
        float(camera.focal_length_x),
        float(camera.focal_length_y),
        float(camera.principal_point_x),
        float(camera.principal_point_y),
    )


# OpenGL cameras look down -z with y up; COLMAP's look down +z with y down.
GL_FROM_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def gl_camera_pose(cam_from_world: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
    """4x4 pyrender camera pose (OpenGL camera -> world) of a (3, 4) COLMAP world -> camera matrix,
    in a world shifted by -`offset` (the recentred mesh's frame)."""
    R, t = cam_from_world[:, :3], cam_from_world[:, 3]
    world_from_cam = np.eye(4)
    world_from_cam[:3, :3] = R.T
    world_from_cam[:3, 3] = -R.T @ t - (0.0 if offset is None else np.asarray(offset, np.float64))
    return world_from_cam @ GL_FROM_CV


def depth_range(bounds: np.ndarray, cam_from_world: np.ndarray, corners_xy: np.ndarray) -> tuple[float, float] | None:
    """(znear, zfar) enclosing an axis-aligned box (2, 3) for a camera whose image corners have the normalised
    coordinates `corners_xy` (4, 2); None when the box is wholly behind the camera."""
    lo, hi = np.asarray(bounds, np.float64)
    R, t = cam_from_world[:, :3], cam_from_world[:, 3]
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    z = corners @ R[2] + t[2]
    zfar = float(z.max()) * 1.01 + 1e-9 * float(np.abs(hi - lo).max() + 1.0)
    if zfar <= 0:
        return None
    centre = -R.T @ t
    dist = float(np.linalg.norm(np.maximum(np.maximum(lo - centre, 0.0), centre - hi)))
    cos_max = 1.0 / float(np.sqrt(1.0 + (np.asarray(corners_xy) ** 2).sum(axis=1)).max())
    znear = max(0.99 * dist * cos_max, 1e-4 * zfar)  # inside the box: geometry closer than 1e-4 zfar is clipped
    return znear, zfar


# ----------------------------------------------------------------------------- id colours


def encode_ids(num: int) -> np.ndarray:
    """(num, 4) float32 RGBA colours: id k -> k + 1 packed as R * 2^16 + G * 2^8 + B, alpha 1."""
    if num > MAX_FACES:
        raise MirrorError(
            f"engine 'pyrender' encodes triangle ids in 24 bits: at most {MAX_FACES} triangles, "
            f"this mesh has {num} (decimate it, or use the ray caster)"
        )
    code = np.arange(1, num + 1, dtype=np.int64)
    rgb = np.stack([(code >> 16) & 255, (code >> 8) & 255, code & 255], axis=1).astype(np.float32) / 255.0
    return np.concatenate([rgb, np.ones((num, 1), np.float32)], axis=1)


def decode_ids(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 id render -> (H, W) int32 triangle ids, -1 for the background."""
    rgb = np.asarray(rgb, np.int64)
    return ((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]).astype(np.int32) - 1


# ----------------------------------------------------------------------------- engine


class MeshRasterizer:
    """Triangle-id renders of one mesh for any number of pinhole cameras, of any sizes.

    Use as a context manager, or call ``close()``, to free the OpenGL context early."""

    engine = "pyrender"

    def __init__(self, mesh):
        pyrender = import_pyrender()
        self.num_faces = len(mesh.faces)
        colours = encode_ids(self.num_faces)
        self.offset = np.asarray(mesh.bounds, dtype=np.float64).mean(axis=0)
        self.bounds = np.asarray(mesh.bounds, np.float64) - self.offset
        faces = np.asarray(mesh.faces, np.int64)
        local = np.asarray(mesh.vertices, np.float64) - self.offset
        positions = local[faces].reshape(-1, 3).astype(np.float32)  # unrolled: each face its own 3 vertices
        primitive = pyrender.Primitive(
            positions=positions,
            color_0=np.repeat(colours, 3, axis=0),
            mode=pyrender.constants.GLTF.TRIANGLES,
            material=pyrender.MetallicRoughnessMaterial(baseColorFactor=[1.0, 1.0, 1.0, 1.0], doubleSided=True),
        )
        self._scene = pyrender.Scene(bg_color=[0.0, 0.0, 0.0, 1.0], ambient_light=[0.0, 0.0, 0.0])
        self._scene.add(pyrender.Mesh([primitive]))
        self._camera = pyrender.IntrinsicsCamera(1.0, 1.0, 0.5, 0.5, znear=0.01, zfar=1.0)
        self._camera_node = self._scene.add(self._camera, pose=np.eye(4))
        self._flags = pyrender.RenderFlags.FLAT | pyrender.RenderFlags.SKIP_CULL_FACES
        self._renderer = None
        self._size: tuple[int, int] | None = None

    def _renderer_for(self, cols: int, rows: int):
        """The one OffscreenRenderer (pyrender binds a scene to one GL context), resized to the grid."""
        if self._renderer is None:
            self._renderer = offscreen_renderer(cols, rows)
            self._size = None
        if self._size != (cols, rows):
            self._renderer.viewport_width, self._renderer.viewport_height = cols, rows
            disable_msaa(self._renderer)  # a new size gets new (multisample) framebuffers
            self._size = (cols, rows)
        return self._renderer

    def render_ids(
        self, fx: float, fy: float, cx: float, cy: float, cam_from_world: np.ndarray, shape: tuple[int, int]
    ) -> np.ndarray:
        """(rows, cols) int32 triangle ids of a pinhole camera given in viewport pixels (-1: none)."""
        rows, cols = shape
        m = np.asarray(cam_from_world, np.float64)
        corners = np.array([[(x - cx) / fx, (y - cy) / fy] for x in (0, cols) for y in (0, rows)])
        local = m.copy()
        local[:, 3] = m[:, 3] + m[:, :3] @ self.offset  # the same camera in the recentred frame
        zrange = depth_range(self.bounds, local, corners)
        if zrange is None:
            return np.full(shape, -1, np.int32)
        cam = self._camera
        cam.fx, cam.fy, cam.cx, cam.cy = fx, fy, cx, cy
        cam.znear, cam.zfar = zrange
        self._scene.set_pose(self._camera_node, gl_camera_pose(local))
        colour, _ = self._renderer_for(cols, rows).render(self._scene, flags=self._flags)
        ids = decode_ids(colour)
        if ids.max(initial=-1) >= self.num_faces:
            raise MirrorError("the id render holds colours of no triangle (antialiased or colour-managed output?)")
        return ids

    def triangle_map(self, camera, cam_from_world, resolution: int = 256) -> np.ndarray:
        """Same contract as ``visibility.triangle_map``: the ray caster's grid, -1 where nothing is seen."""
        fx, fy, cx, cy = pinhole_params(camera)
        rows, cols = grid_shape(camera.width, camera.height, resolution)
        sx, sy = cols / camera.width, rows / camera.height
        return self.render_ids(fx * sx, fy * sy, cx * sx, cy * sy, cam_from_world.matrix(), (rows, cols))

    def close(self) -> None:
        """Free the OpenGL context."""
        if getattr(self, "_renderer", None) is not None:
            try:
                self._renderer.delete()
            except Exception:  # a context already gone at interpreter exit
                pass
            self._renderer = None

    def __enter__(self) -> MeshRasterizer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
