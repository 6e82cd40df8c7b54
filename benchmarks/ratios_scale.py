"""Time and peak memory of gtgen's ratio, positive and mask steps for 1,000 cameras, as `compute_overlap` runs them.

Synthetic but realistic input: a 1M-triangle surface laid out as a 1000 x 1000 grid of cells (2 triangles a cell,
ids spatially coherent); each camera's triangle map (gtgen's default 256 x 256 ray grid) covers a square window
of the grid around a random centre, ~158 cells a side (+-20 %), so it sees ~50k triangles and overlaps the
cameras near it, as in an aerial survey; 10 % of the pixels see nothing (sky / holes). Tracks: 300k 3D points on
the grid; each camera observes up to 2,048 of those inside its window (SIFT-like density). Steps, with the same
gtgen calls as ``compute_overlap``/``load_scene``:

    ct          directional_ratios(incidence_from_sets(track sets))
    mo          mesh_overlap(maps, num_triangles)          -> incidence, MO
    co          combined_ratios(ct, mo, t_sfm)
    positives   select_positives(co) + positive_pairs
    mask_bin    overlapping_pairs(mo) + pair_masks(..., 32 x 32)  (every pair with MO > 0: the mask.bin records)
    mask_png    pair_masks(..., png size) on the positive pairs only (PNG writing not timed)

Each step's wall time comes from a plain run; its peak memory from a second run under tracemalloc (numpy and
scipy report their buffers to it), as the peak above what was held when the step began. ru_maxrss of the plain run
is reported too. Each run is a fresh process.

    python benchmarks/ratios_scale.py [--cameras 1000] [--triangles-side 1000] [--window 158]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_input(cameras: int, side: int, window: float, resolution: int, points: int, seed: int = 0):
    """(triangle maps, track sets) of `cameras` cameras over a side x side grid of 2-triangle cells."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, side, (cameras, 2))
    sizes = window * rng.uniform(0.8, 1.2, cameras)
    pix = (np.arange(resolution) + 0.5) / resolution - 0.5
    pts = rng.uniform(0, side, (points, 2))
    maps, tracks = [], []
    for (cy, cx), s in zip(centres, sizes):
        fy = np.clip(cy + pix * s, 0, side - 1e-6)
        fx = np.clip(cx + pix * s, 0, side - 1e-6)
        r, c = np.floor(fy).astype(np.int64), np.floor(fx).astype(np.int64)
        upper = (fy - r)[:, None] > (fx - c)[None, :]
        tri = (2 * (r[:, None] * side + c[None, :]) + upper).astype(np.int32)
        tri[rng.random(tri.shape) < 0.1] = -1
        maps.append(tri)
        inside = np.flatnonzero((np.abs(pts[:, 0] - cy) < s / 2) & (np.abs(pts[:, 1] - cx) < s / 2))
        tracks.append(np.sort(rng.choice(inside, min(len(inside), 2048), replace=False)))
    return maps, tracks


def run(args: argparse.Namespace, traced: bool, queue) -> None:
    import numpy as np
    import scipy.sparse as sp

    from gtgen.masks import MaskOptions, overlapping_pairs, pair_masks
    from gtgen.ratios import combined_ratios, directional_ratios, incidence_from_sets
    from gtgen.triplets import TripletOptions, positive_pairs, select_positives
    from gtgen.visibility import mesh_overlap

    t0 = time.perf_counter()
    maps, tracks = make_input(args.cameras, args.triangles_side, args.window, args.resolution, args.points)
    num_triangles = 2 * args.triangles_side**2
    info = {
        "input_s": round(time.perf_counter() - t0, 1),
        "maps_mb": round(sum(m.nbytes for m in maps) / 2**20, 1),
        "baseline_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    steps: dict[str, dict] = {}
    state: dict = {}
    if traced:
        tracemalloc.start()

    def step(name, func):
        if traced:
            held = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
        t = time.perf_counter()
        func()
        rec = {"seconds": round(time.perf_counter() - t, 2)}
        if traced:
            rec["peak_mb"] = round((tracemalloc.get_traced_memory()[1] - held) / 2**20, 1)
        steps[name] = rec
        print(name, rec, flush=True)

    opts = TripletOptions()
    step("ct", lambda: state.update(ct=directional_ratios(incidence_from_sets(tracks)).tocsr()))
    step("mo", lambda: state.update(zip(("incidence", "mo"), mesh_overlap(maps, num_triangles))))
    step("co", lambda: state.update(co=combined_ratios(state["ct"], state["mo"], t_sfm=opts.t_sfm)))

    def positives():
        state["anchors"] = select_positives(state["co"], opts)
        state["pos"] = positive_pairs(state["anchors"])

    step("positives", positives)

    def mask_bin():
        state["pairs"] = overlapping_pairs(state["mo"], 0.0)
        state["bin_masks"] = pair_masks(maps, state["incidence"], state["pairs"], MaskOptions((32, 32)))

    step("mask_bin", mask_bin)
    state.pop("bin_masks")
    step(
        "mask_png",
        lambda: state.update(
            png=pair_masks(maps, state["incidence"], state["pos"], MaskOptions((args.png_size, args.png_size)))
        ),
    )
    inc, co = state["incidence"], state["co"]
    counts = {
        "triangles_per_camera": float(np.diff(inc.indptr).mean()),
        "tracks_per_camera": float(np.mean([len(t) for t in tracks])),
        "incidence_nnz": int(inc.nnz),
        "mo_nnz": int(state["mo"].nnz),
        "ct_nnz": int(state["ct"].nnz),
        "co_pairs": int(sp.triu(co, 1).nnz),
        "co_pairs_ge_0.5": int((sp.triu(co, 1).tocsr().data >= 0.5).sum()),
        "mask_bin_pairs": len(state["pairs"]),
        "positive_pairs": len(state["pos"]),
        "anchors": len(state["anchors"]),
    }
    queue.put(
        {
            "traced": traced,
            **info,
            "steps": steps,
            "total_s": round(sum(s["seconds"] for s in steps.values()), 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            **counts,
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cameras", type=int, default=1000)
    ap.add_argument("--triangles-side", type=int, default=1000, help="grid cells a side (2 triangles each)")
    ap.add_argument("--window", type=float, default=158.0, help="cells a side each camera sees (mean)")
    ap.add_argument("--resolution", type=int, default=256, help="triangle-map side (gtgen's default ray grid)")
    ap.add_argument("--points", type=int, default=300_000, help="3D points (tracks)")
    ap.add_argument("--png-size", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path("outputs/ratios_scale.json"))
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    results = []
    for traced in (False, True):
        q = ctx.Queue()
        p = ctx.Process(target=run, args=(args, traced, q))
        p.start()
        results.append(q.get())
        p.join()
        print(json.dumps(results[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                "args": {k: v for k, v in vars(args).items() if k != "out"},
                "plain": results[0],
                "tracemalloc": results[1],
            },
            indent=1,
            default=str,
        )
    )


if __name__ == "__main__":
    main()
