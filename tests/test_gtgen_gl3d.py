"""GL3D files: lossless round trips, the exact mask.bin layout, and pycolmap camera conversions."""

import logging
import struct

import numpy as np
import pytest
import scipy.sparse as sp
from test_gtgen_scenes import make_reconstruction

from gtgen import gl3d
from mirror_sfm.errors import MirrorError

# a line in GL3D's documented layout (synthetic numbers, short decimals and integers as GL3D writes them)
GL3D_LINE = (
    "3 3995.67 3995.5 2304 1728 0 63.6722 -28.8643 53.9166 0.919771 -0.39198 0.0192924 -0.390128 "
    "-0.918559 -0.0636394 0.0426665 0.0510072 -0.997786 0.0131149 0.0165777 -0.0248811 4608 3456"
)


def _random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _random_cameras(n: int, seed: int = 0) -> list[gl3d.GL3DCamera]:
    rng = np.random.default_rng(seed)
    return [
        gl3d.GL3DCamera(
            idx=i,
            fx=rng.uniform(500, 4000),
            fy=rng.uniform(500, 4000),
            cx=rng.uniform(0, 3000),
            cy=rng.uniform(0, 2000),
            skew=0.0,
            t=rng.normal(size=3) * 100,
            R=_random_rotation(rng),
            k=rng.normal(size=3) * 1e-2,
            width=int(rng.integers(100, 5000)),
            height=int(rng.integers(100, 5000)),
        )
        for i in range(n)
    ]


def test_cameras_round_trip_is_lossless(tmp_path):
    cams = _random_cameras(20)
    p1, p2 = tmp_path / "a.txt", tmp_path / "b.txt"
    gl3d.write_cameras(p1, cams)
    back = gl3d.read_cameras(p1)
    for a, b in zip(cams, back):
        assert (a.idx, a.width, a.height) == (b.idx, b.width, b.height)
        for f in ("fx", "fy", "cx", "cy", "skew"):
            assert getattr(a, f) == getattr(b, f)  # exact doubles
        assert np.array_equal(a.R, b.R) and np.array_equal(a.t, b.t) and np.array_equal(a.k, b.k)
    gl3d.write_cameras(p2, back)
    assert p1.read_bytes() == p2.read_bytes()


def test_gl3d_written_line_reads_back_byte_identical(tmp_path):
    src = tmp_path / "cameras.txt"
    src.write_text(GL3D_LINE + "\n")
    cam = gl3d.read_cameras(src)[0]
    assert cam.idx == 3 and (cam.width, cam.height) == (4608, 3456)
    assert cam.K[0, 2] == 2304 and cam.R[2, 2] == -0.997786 and cam.k[2] == -0.0248811
    out = tmp_path / "out.txt"
    gl3d.write_cameras(out, [cam])
    assert out.read_bytes() == src.read_bytes()


def test_bad_camera_line_names_file_and_line(tmp_path):
    p = tmp_path / "cameras.txt"
    p.write_text(GL3D_LINE + "\n1 2 3\n")
    with pytest.raises(MirrorError, match=r"cameras.txt:2: expected 23 numbers"):
        gl3d.read_cameras(p)
    with pytest.raises(MirrorError, match="not found"):
        gl3d.read_cameras(tmp_path / "nope.txt")


def test_ratio_files_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    m = sp.random(30, 30, density=0.2, random_state=2, format="csr")
    m.setdiag(0)
    m.eliminate_zeros()
    m.data = rng.uniform(0, 1, m.nnz)
    p1, p2 = tmp_path / "mesh_overlap.txt", tmp_path / "b.txt"
    gl3d.write_ratios(p1, m)
    back = gl3d.read_ratios(p1, 30)
    assert (back != m).nnz == 0  # value for value
    gl3d.write_ratios(p2, back)
    assert p1.read_bytes() == p2.read_bytes()
    lines = p1.read_text().splitlines()
    assert len(lines) == m.nnz and all(float(l.split()[2]) > 0 for l in lines)
    pairs = [tuple(map(int, l.split()[:2])) for l in lines]
    assert pairs == sorted(pairs)


def test_ratio_files_keep_directions_and_skip_zeros(tmp_path):
    m = sp.csr_matrix(np.array([[0.0, 0.447471, 0.0], [0.0652112, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    p = tmp_path / "common_track.txt"
    gl3d.write_ratios(p, m)
    assert p.read_text() == "0 1 0.447471\n1 0 0.0652112\n"
    with pytest.raises(MirrorError, match="listed twice"):
        (tmp_path / "dup.txt").write_text("0 1 0.5\n0 1 0.5\n")
        gl3d.read_ratios(tmp_path / "dup.txt")


def test_mask_bin_layout_matches_gl3d_struct(tmp_path):
    rng = np.random.default_rng(3)
    masks = {
        (0, 1): (rng.random((32, 32)) > 0.5, rng.random((32, 32)) > 0.5),
        (2, 2): (np.ones((32, 32), bool), np.zeros((32, 32), bool)),
        (1, 7): (rng.random((32, 32)) > 0.3, rng.random((32, 32)) > 0.7),
    }
    p = tmp_path / "mask.bin"
    gl3d.write_mask_bin(p, masks)
    data = p.read_bytes()
    fmt = "2i" + "?" * 2048  # GL3D's reader (utils/io.py read_mask)
    size = struct.calcsize(fmt)
    assert size == 2056 and len(data) == 3 * size
    for n, key in enumerate(sorted(masks)):
        rec = struct.unpack(fmt, data[n * size : (n + 1) * size])
        assert rec[:2] == key
        flat = np.array(rec[2:])
        assert np.array_equal(flat[:1024].reshape(32, 32), masks[key][0])
        assert np.array_equal(flat[1024:].reshape(32, 32), masks[key][1])
    back = gl3d.read_mask_bin(p)
    assert set(back) == set(masks)
    for key in masks:
        assert np.array_equal(back[key][0], masks[key][0]) and np.array_equal(back[key][1], masks[key][1])
    p2 = tmp_path / "again.bin"
    gl3d.write_mask_bin(p2, back)
    assert p2.read_bytes() == data


def test_mask_bin_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="idx0 <= idx1"):
        gl3d.write_mask_bin(tmp_path / "m.bin", {(3, 1): (np.zeros((32, 32), bool), np.zeros((32, 32), bool))})
    (tmp_path / "short.bin").write_bytes(b"\0" * 100)
    with pytest.raises(MirrorError, match="whole number"):
        gl3d.read_mask_bin(tmp_path / "short.bin")


@pytest.mark.parametrize(
    "model,params,k",
    [
        ("SIMPLE_PINHOLE", [800.0, 320.0, 240.0], [0, 0, 0]),
        ("PINHOLE", [800.0, 810.0, 320.0, 240.0], [0, 0, 0]),
        ("SIMPLE_RADIAL", [800.0, 320.0, 240.0, 0.05], [0.05, 0, 0]),
        ("RADIAL", [800.0, 320.0, 240.0, 0.05, -0.01], [0.05, -0.01, 0]),
        ("OPENCV", [800.0, 810.0, 320.0, 240.0, 0.05, -0.01, 0.0, 0.0], [0.05, -0.01, 0]),
        ("FULL_OPENCV", [800.0, 810.0, 320.0, 240.0, 0.05, -0.01, 0, 0, 0.002, 0, 0, 0], [0.05, -0.01, 0.002]),
    ],
)
def test_pycolmap_to_gl3d_and_back_is_exact(model, params, k):
    rng = np.random.default_rng(4)
    R, t = _random_rotation(rng), rng.normal(size=3)
    rec = make_reconstruction([(model, params, 640, 480)], [(R, t)])
    row = gl3d.gl3d_from_reconstruction(rec, [1])[0]
    assert row.idx == 0 and (row.width, row.height) == (640, 480)
    assert np.allclose(row.k, k) and np.allclose(row.R, R) and np.allclose(row.t, t)
    cam, pose = gl3d.pycolmap_from_gl3d(row)
    # same projection of random points in front of the camera
    pts = rng.normal(size=(50, 3)) * [0.3, 0.3, 0.1] + [0, 0, 2]
    original = rec.camera(1).img_from_cam(pts)
    assert np.allclose(cam.img_from_cam(pts), original, atol=1e-9)
    assert np.allclose(pose.matrix(), rec.image(1).cam_from_world().matrix(), atol=1e-12)


def test_tangential_terms_are_dropped_with_a_warning(caplog):
    rec = make_reconstruction(
        [("OPENCV", [800.0, 800.0, 320.0, 240.0, 0.05, 0.0, 0.001, 0.0], 640, 480)], [(np.eye(3), np.zeros(3))]
    )
    with caplog.at_level(logging.WARNING, logger="gtgen"):
        row = gl3d.gl3d_from_reconstruction(rec, [1])[0]
    assert "dropped p1" in caplog.text and row.k[0] == 0.05


def test_other_models_keep_pinhole_part_with_a_warning(caplog):
    rec = make_reconstruction(
        [("OPENCV_FISHEYE", [300.0, 300.0, 320.0, 240.0, 0.1, 0, 0, 0], 640, 480)], [(np.eye(3), np.zeros(3))]
    )
    with caplog.at_level(logging.WARNING, logger="gtgen"):
        row = gl3d.gl3d_from_reconstruction(rec, [1])[0]
    assert "no GL3D equivalent" in caplog.text and row.fx == 300 and not row.k.any()


def test_gl3d_scene_to_reconstruction(tmp_path):
    cams = _random_cameras(3)
    cams[1].k[:] = [0.01, -0.002, 0.0]  # k3 = 0: OPENCV
    cams[2].k[:] = 0  # PINHOLE
    rec = gl3d.reconstruction_from_gl3d(cams, ["a.jpg", "b.jpg", "c.jpg"])
    assert rec.num_reg_images() == 3
    assert [rec.camera(i + 1).model_name for i in range(3)] == ["FULL_OPENCV", "OPENCV", "PINHOLE"]
    assert rec.image(2).name == "b.jpg"
    back = gl3d.gl3d_from_reconstruction(rec, [1, 2, 3])
    for a, b in zip(cams, back):
        assert np.allclose(a.R, b.R, atol=1e-12) and np.allclose(a.t, b.t, atol=1e-9)
        assert np.array_equal(a.k, b.k) and (a.fx, a.fy, a.cx, a.cy) == (b.fx, b.fy, b.cx, b.cy)


def test_skew_is_refused():
    cam = _random_cameras(1)[0]
    cam.skew = 3.0
    with pytest.raises(MirrorError, match="skew"):
        gl3d.pycolmap_from_gl3d(cam)
