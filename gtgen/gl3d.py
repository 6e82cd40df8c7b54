"""GL3D geolabel files: write them exactly (the readers live in `mirror_sfm.labels`, re-exported here), read and
write cameras, and convert cameras to and from pycolmap.

Layout (lzx551402/GL3D, docs/data_format.md and utils/io.py):
- ``cameras.txt``: one line per registered image,
  ``idx fx fy cx cy skew t(3) R(9, row-major) k1 k2 k3 W H``; R, t map world to camera
  (x_cam = R x_world + t); k1 k2 k3 are OpenCV radial terms (GL3D's ``undist_points`` feeds them to
  ``cv2.undistortPoints`` as ``(k1, k2, 0, 0, k3)``); the principal point uses COLMAP's convention
  (image centre = W/2, H/2), so values are copied unchanged.
- ``common_track.txt`` / ``mesh_overlap.txt``: ``i j ratio`` lines, directional (r(i, j) =
  |S(i) & S(j)| / |S(i)|), only r > 0.
- ``mask.bin`` (v2): packed records ``struct '2i' + '?' * 2 * size * size`` (little-endian, no
  padding): idx0 <= idx1, then image idx0's size x size row-major bool mask, then image idx1's.

Numbers are written in Python's shortest round-trip form (``repr``; integral values without ``.0``),
so write -> read -> write is byte-identical and every float reads back to the same double.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from mirror_sfm.errors import MirrorError
from mirror_sfm.io_utils import atomic_path, write_text_atomic
from mirror_sfm.labels import MASK_SIZE, mask_record_dtype, read_image_list, read_mask_bin, read_ratios  # noqa: F401

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- number formatting


def format_number(x: float) -> str:
    """Shortest text that reads back to the same double; integral values without a trailing '.0'."""
    x = float(x)
    if x.is_integer() and abs(x) < 1e16:
        return "-0" if (x == 0 and np.signbit(x)) else str(int(x))
    return repr(x)


def _format_int_like(x: float, what: str) -> str:
    if not float(x).is_integer():
        raise ValueError(f"{what} must be an integer, got {x!r}")
    return str(int(x))


# ----------------------------------------------------------------------------- cameras.txt


@dataclasses.dataclass
class GL3DCamera:
    """One ``cameras.txt`` row: intrinsics, world->camera pose, radial distortion, image size."""

    idx: int
    fx: float
    fy: float
    cx: float
    cy: float
    skew: float
    t: np.ndarray  # (3,) world -> camera translation
    R: np.ndarray  # (3, 3) world -> camera rotation
    k: np.ndarray  # (3,) radial k1 k2 k3
    width: int
    height: int

    def __post_init__(self) -> None:
        self.t = np.asarray(self.t, dtype=np.float64).reshape(3)
        self.R = np.asarray(self.R, dtype=np.float64).reshape(3, 3)
        self.k = np.asarray(self.k, dtype=np.float64).reshape(3)

    @property
    def K(self) -> np.ndarray:
        """3x3 calibration matrix (with skew)."""
        return np.array([[self.fx, self.skew, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def to_line(self) -> str:
        values = [self.fx, self.fy, self.cx, self.cy, self.skew, *self.t, *self.R.ravel(), *self.k]
        return " ".join([str(int(self.idx)), *map(format_number, values), str(int(self.width)), str(int(self.height))])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GL3DCamera):
            return NotImplemented
        return self.to_line() == other.to_line()


def parse_camera_line(line: str, where: str = "cameras.txt") -> GL3DCamera:
    """Parse one ``cameras.txt`` line (23 numbers); `where` names the file and line in errors."""
    parts = line.split()
    if len(parts) != 23:
        raise MirrorError(f"{where}: expected 23 numbers (idx fx fy cx cy skew t(3) R(9) k(3) W H), got {len(parts)}")
    try:
        v = [float(p) for p in parts]
        idx, width, height = (int(_format_int_like(v[i], n)) for i, n in ((0, "idx"), (21, "W"), (22, "H")))
    except ValueError as exc:
        raise MirrorError(f"{where}: {exc}") from None
    return GL3DCamera(
        idx=idx,
        fx=v[1],
        fy=v[2],
        cx=v[3],
        cy=v[4],
        skew=v[5],
        t=v[6:9],
        R=v[9:18],
        k=v[18:21],
        width=width,
        height=height,
    )


def read_cameras(path: str | Path) -> list[GL3DCamera]:
    """All rows of a GL3D ``cameras.txt`` in file order (blank and '#' lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise MirrorError(f"GL3D cameras file not found: {path}")
    cams = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            cams.append(parse_camera_line(line, f"{path}:{n}"))
    return cams


def write_cameras(path: str | Path, cameras: list[GL3DCamera]) -> None:
    """Write ``cameras.txt`` atomically, one line per camera, in the given order."""
    write_text_atomic(path, "".join(c.to_line() + "\n" for c in cameras))


# ----------------------------------------------------------------------------- ratio files


def format_ratios(matrix: sp.spmatrix) -> str:
    """``i j ratio`` lines for the entries r > 0 off the diagonal, sorted by (i, j)."""
    coo = sp.coo_matrix(matrix)
    keep = (coo.data > 0) & (coo.row != coo.col)
    i, j, r = coo.row[keep], coo.col[keep], coo.data[keep]
    order = np.lexsort((j, i))
    return "".join(
        f"{a} {b} {format_number(v)}\n" for a, b, v in zip(i[order].tolist(), j[order].tolist(), r[order].tolist())
    )


def write_ratios(path: str | Path, matrix: sp.spmatrix) -> None:
    """Write a directional ratio matrix as a GL3D ratio file, atomically."""
    write_text_atomic(path, format_ratios(matrix))


# ----------------------------------------------------------------------------- mask.bin


def write_mask_bin(
    path: str | Path, masks: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]], size: int = MASK_SIZE
) -> None:
    """Write ``mask.bin`` atomically; keys (i, j) with i <= j, values (mask over i, mask over j), sorted by key."""
    keys = sorted(masks)
    rec = np.zeros(len(keys), dtype=mask_record_dtype(size))
    for n, (i, j) in enumerate(keys):
        if i > j:
            raise ValueError(f"mask.bin pairs need idx0 <= idx1, got ({i}, {j})")
        a, b = masks[(i, j)]
        if np.shape(a) != (size, size) or np.shape(b) != (size, size):
            raise ValueError(f"mask of pair ({i}, {j}) is not {size}x{size}")
        rec[n]["idx"] = (i, j)
        rec[n]["masks"][0] = a
        rec[n]["masks"][1] = b
    with atomic_path(path) as tmp:
        rec.tofile(tmp)


# ----------------------------------------------------------------------------- image_list.txt


def write_image_list(path: str | Path, names: list[str]) -> None:
    """Line k = the name of image k."""
    write_text_atomic(path, "".join(n + "\n" for n in names))


# ----------------------------------------------------------------------------- pycolmap conversion

_TOL = 1e-12


def _params(camera) -> dict[str, float]:
    names = [s.strip() for s in camera.params_info.split(",")]
    return dict(zip(names, map(float, camera.params)))


def gl3d_from_pycolmap(camera, cam_from_world, idx: int) -> GL3DCamera:
    """GL3D row of a pycolmap camera + world->camera pose (a ``Rigid3d``).

    Pinhole and radial models map exactly (SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, and
    OPENCV / FULL_OPENCV whose extra terms are zero). GL3D has no tangential or rational terms:
    OPENCV / FULL_OPENCV p1 p2 (and k4..k6) are dropped with a warning. Other models (fisheye, FOV,
    division, ...) have no GL3D equivalent: focal length and principal point are kept, distortion is
    written as zero, with a warning. Ground truth computed here always uses the exact pycolmap camera.
    """
    p = _params(camera)
    model = camera.model_name
    f = p.get("f")
    fx, fy = (f, f) if f is not None else (p.get("fx"), p.get("fy"))
    cx, cy = p.get("cx"), p.get("cy")
    if fx is None or cx is None:  # e.g. EQUIRECTANGULAR: no focal length
        raise MirrorError(
            f"camera {camera.camera_id}: model {model} has no pinhole focal length; GL3D cameras.txt cannot describe it"
        )
    k = [0.0, 0.0, 0.0]
    dropped = []
    if model in ("SIMPLE_PINHOLE", "PINHOLE"):
        pass
    elif model == "SIMPLE_RADIAL":
        k[0] = p["k"]
    elif model == "RADIAL":
        k[:2] = [p["k1"], p["k2"]]
    elif model in ("OPENCV", "FULL_OPENCV"):
        k[0], k[1] = p["k1"], p["k2"]
        k[2] = p.get("k3", 0.0)
        dropped = [n for n in ("p1", "p2", "k4", "k5", "k6") if abs(p.get(n, 0.0)) > _TOL]
    else:
        dropped = [n for n in p if n not in ("f", "fx", "fy", "cx", "cy") and abs(p[n]) > _TOL]
        logger.warning(
            "camera %d: model %s has no GL3D equivalent; cameras.txt gets its focal length and "
            "principal point with zero distortion",
            camera.camera_id,
            model,
        )
    if dropped and model in ("OPENCV", "FULL_OPENCV"):
        logger.warning(
            "camera %d (%s): GL3D keeps radial k1 k2 k3 only; dropped %s", camera.camera_id, model, ", ".join(dropped)
        )
    m = cam_from_world.matrix()
    return GL3DCamera(
        idx=idx,
        fx=fx,
        fy=fy,
        cx=cx,
        cy=cy,
        skew=0.0,
        t=m[:, 3],
        R=m[:, :3],
        k=k,
        width=camera.width,
        height=camera.height,
    )


def gl3d_from_reconstruction(reconstruction, image_ids: list[int]) -> list[GL3DCamera]:
    """GL3D rows for the given registered images; row k gets idx k."""
    out = []
    for k, image_id in enumerate(image_ids):
        image = reconstruction.image(image_id)
        out.append(gl3d_from_pycolmap(reconstruction.camera(image.camera_id), image.cam_from_world(), k))
    return out


def pycolmap_from_gl3d(cam: GL3DCamera, camera_id: int = 1, where: str = "cameras.txt"):
    """(pycolmap.Camera, pycolmap.Rigid3d) of a GL3D row; exact for zero skew.

    Model: PINHOLE when k = 0, OPENCV (p1 = p2 = 0) when k3 = 0, else FULL_OPENCV (p = k4..k6 = 0),
    which is OpenCV's radial polynomial, the one GL3D uses. COLMAP has no skew: a row with
    |skew| > 1e-9 fx is an error rather than a silently wrong camera.
    """
    import pycolmap

    if abs(cam.skew) > 1e-9 * abs(cam.fx):
        raise MirrorError(f"{where}: image {cam.idx} has skew {cam.skew!r}; COLMAP cameras have no skew term")
    k1, k2, k3 = map(float, cam.k)
    if k1 == k2 == k3 == 0.0:
        model, params = "PINHOLE", [cam.fx, cam.fy, cam.cx, cam.cy]
    elif k3 == 0.0:
        model, params = "OPENCV", [cam.fx, cam.fy, cam.cx, cam.cy, k1, k2, 0.0, 0.0]
    else:
        model, params = "FULL_OPENCV", [cam.fx, cam.fy, cam.cx, cam.cy, k1, k2, 0.0, 0.0, k3, 0.0, 0.0, 0.0]
    camera = pycolmap.Camera(
        camera_id=camera_id, model=model, width=int(cam.width), height=int(cam.height), params=params
    )
    R = cam.R
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-5) or np.linalg.det(R) < 0:
        raise MirrorError(f"{where}: image {cam.idx}: R is not a rotation matrix")
    pose = pycolmap.Rigid3d(pycolmap.Rotation3d(R), cam.t)
    return camera, pose


def reconstruction_from_gl3d(cameras: list[GL3DCamera], names: list[str] | None = None, where: str = "cameras.txt"):
    """pycolmap.Reconstruction with one camera and one registered image per GL3D row (no 3D points).

    Image id = camera id = idx + 1; names default to GL3D's ``<8-digit idx>.jpg``.
    """
    import pycolmap

    rec = pycolmap.Reconstruction()
    for cam in cameras:
        name = names[cam.idx] if names is not None else f"{cam.idx:08d}.jpg"
        camera, pose = pycolmap_from_gl3d(cam, camera_id=cam.idx + 1, where=where)
        rec.add_camera_with_trivial_rig(camera)
        rec.add_image_with_trivial_frame(pycolmap.Image(name=name, camera_id=cam.idx + 1, image_id=cam.idx + 1), pose)
    return rec
