"""Visibility throughput (images/s) of gtgen's engines on a ~1M-triangle mesh, as `compute_overlap` runs them.

The mesh is a procedural terrain (a noisy height field, `--grid` vertices a side -> 2 (grid-1)^2 triangles); the
cameras are PINHOLE, `--size` square, looking obliquely down at it from random positions above (each sees a part
of the terrain, as in an aerial survey). Each engine is set up once (embree: BVH build; pyrender: OpenGL context
and upload), warmed up on one image, then `gtgen.visibility.triangle_maps` casts the timed images. Resolutions are
ray-grid long sides: the image size itself (one ray per pixel) and gtgen's default 256. Wall time and this
process's CPU time (all its threads) are both reported: on a shared machine images per CPU-second is the steadier.

    python benchmarks/visibility_speed.py [--grid 708] [--size 1000] [--images 6] [--engines embree pyrender]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from gtgen.synthetic import build_reconstruction, look_at  # noqa: E402
from gtgen.visibility import VisibilityOptions, make_engine, triangle_maps  # noqa: E402


def terrain(grid: int, seed: int = 0):
    """A 100 x 100 height field with `grid` x `grid` vertices (sum of random sinusoids + noise)."""
    import trimesh

    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-50, 50, grid), np.linspace(-50, 50, grid))
    z = np.zeros_like(x)
    for _ in range(12):
        k = rng.uniform(0.02, 0.3, 2)
        z += rng.uniform(0.5, 3.0) * np.sin(k[0] * x + rng.uniform(0, 6)) * np.cos(k[1] * y + rng.uniform(0, 6))
    z += 0.05 * rng.standard_normal(z.shape)
    vertices = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)
    j, i = np.meshgrid(np.arange(grid - 1), np.arange(grid - 1), indexing="ij")
    v00 = (j * grid + i).ravel()
    faces = np.concatenate(
        [np.stack([v00, v00 + 1, v00 + grid + 1], 1), np.stack([v00, v00 + grid + 1, v00 + grid], 1)]
    )
    return trimesh.Trimesh(vertices, faces, process=False)


def cameras(count: int, size: int, seed: int = 1):
    """A pycolmap model of `count` PINHOLE cameras (size x size, 60 degree field of view) looking down at 45-80
    degrees."""
    rng = np.random.default_rng(seed)
    f = 0.5 * size / math.tan(math.radians(30))
    K = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])
    poses = []
    for _ in range(count):
        target = np.append(rng.uniform(-30, 30, 2), 0.0)
        el, az, dist = math.radians(rng.uniform(45, 80)), rng.uniform(0, 2 * math.pi), rng.uniform(25, 45)
        centre = target + dist * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        poses.append(look_at(centre, target, [0.0, 0.0, 1.0]))
    names = [f"{k:05d}.jpg" for k in range(count)]
    empty = [(np.zeros(0, np.int64), np.zeros((0, 2)))] * count
    return build_reconstruction(names, poses, K, (size, size), np.zeros((0, 3)), empty, np.zeros((0, 3), np.uint8))


def measure(mesh, rec, engine: str, resolution: int, images: int) -> dict:
    ids = sorted(rec.reg_image_ids())
    opts = VisibilityOptions(resolution=resolution, engine=engine, progress=False)
    t0 = time.perf_counter()
    caster = make_engine(mesh, engine)
    triangle_maps(rec, ids[:1], mesh, opts, caster=caster)  # warm-up (and pyrender's context + upload)
    setup = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    maps = triangle_maps(rec, ids[1 : 1 + images], mesh, opts, caster=caster)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    if hasattr(caster, "close"):
        caster.close()
    hits = np.mean([(m >= 0).mean() for m in maps])
    distinct = np.mean([len(np.unique(m[m >= 0])) for m in maps])
    return {
        "engine": engine,
        "resolution": resolution,
        "grid": list(maps[0].shape),
        "images": len(maps),
        "setup_and_warmup_s": round(setup, 2),
        "seconds": round(secs, 2),
        "images_per_s": round(len(maps) / secs, 3),
        "cpu_s": round(cpu, 2),
        "images_per_cpu_s": round(len(maps) / cpu, 3),
        "mrays_per_s": round(maps[0].size * len(maps) / secs / 1e6, 3),
        "hit_fraction": round(float(hits), 3),
        "distinct_triangles_per_image": int(distinct),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", type=int, default=708, help="terrain vertices a side (708 -> 999,698 triangles)")
    ap.add_argument("--size", type=int, default=1000, help="image side in pixels")
    ap.add_argument("--images", type=int, default=6, help="timed images per configuration")
    ap.add_argument("--resolutions", type=int, nargs="+", default=None, help="ray-grid long sides (default: size, 256)")
    ap.add_argument("--engines", nargs="+", default=["embree", "pyrender"], choices=["embree", "pyrender", "numpy"])
    ap.add_argument("--out", type=Path, default=Path("outputs/visibility_speed.json"))
    args = ap.parse_args()
    logging.getLogger("gtgen.visibility").setLevel(logging.ERROR)  # the finer-than-grid warning is expected at 256
    t0 = time.perf_counter()
    mesh = terrain(args.grid)
    rec = cameras(args.images + 1, args.size)
    print(f"mesh: {len(mesh.faces):,} triangles (made in {time.perf_counter() - t0:.1f} s)", flush=True)
    rows = []
    for resolution in args.resolutions or [args.size, 256]:
        for engine in args.engines:
            rows.append(measure(mesh, rec, engine, resolution, args.images))
            print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    args.out.write_text(
        json.dumps(
            {"machine": machine, "triangles": int(len(mesh.faces)), "image_size": args.size, "rows": rows}, indent=1
        )
    )


if __name__ == "__main__":
    main()
