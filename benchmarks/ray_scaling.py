"""Extraction throughput on a local Ray cluster vs the single process, and a projection to 1M photos (issue 14).

One process runs, on the same images and the same model, the library's `extract` four ways: the single process
(torch's default threads, 2 here, + 1 decoding process: the defaults), the same with 1 torch thread, Ray with 1
worker of 2 CPUs, and Ray with 2 workers of 1 CPU each (1 torch thread + 1 decoding process each), in alternating
order over --repeats rounds so drift on a shared machine hits every configuration alike. The Ray cluster is
started once (its start-up is reported apart); each Ray run includes starting its worker actors, shipping the
model, describing the shards and merging them into the final h5 (the merge is timed apart too). Every Ray h5 is
checked against the single process's (same names, descriptors within fp16 rounding).

The projection for 1M photos on N CPU workers: describe = 1M x (measured seconds per image per worker) / N, plus
the driver's merge (measured seconds per image, serial), assuming throughput linear in workers up to the shared
storage and the same per-image cost on each worker (same CPU, same photo sizes). GPU workers are not measured.
Usage: python benchmarks/ray_scaling.py [IMAGES] [--limit 120] [--repeats 2]
"""

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mirror_sfm import distributed  # noqa: E402
from mirror_sfm.distributed import RayOptions  # noqa: E402
from mirror_sfm.extract import extract  # noqa: E402
from mirror_sfm.features_io import list_h5_names  # noqa: E402
from mirror_sfm.images import list_images  # noqa: E402
from mirror_sfm.model import load_model  # noqa: E402

BASELINE = "single process"
CONFIGS = {  # name -> (Ray options or None, torch threads of the single process or None: torch's default)
    BASELINE: (None, None),
    "single process, 1 torch thread": (None, 1),
    "Ray, 1 worker x 2 CPUs": (RayOptions(address="local", workers=1, cpus_per_worker=2), None),
    "Ray, 2 workers x 1 CPU": (RayOptions(address="local", workers=2, cpus_per_worker=1), None),
}
MERGE_SECONDS: list[float] = []


def timed_merge(merge):
    def run(*args, **kwargs):
        t = time.perf_counter()
        merge(*args, **kwargs)
        MERGE_SECONDS.append(time.perf_counter() - t)

    return run


def max_difference(a: Path, b: Path) -> float:
    assert list_h5_names(a) == list_h5_names(b), "the Ray h5 holds other images"
    worst = 0.0
    with h5py.File(a) as fa, h5py.File(b) as fb:
        for name in fa:
            for key in ("global_descriptor", "regional_descriptors"):
                d = np.abs(fa[name][key][()].astype(np.float32) - fb[name][key][()].astype(np.float32)).max()
                worst = max(worst, float(d))
    return worst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("images", type=Path, nargs="?", default=Path("../shared/data/scenes/mold_gold_cape/images"))
    ap.add_argument("--limit", type=int, default=120)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--project", type=int, nargs="*", default=[1, 2, 8, 32, 128, 512])
    ap.add_argument("--out", type=Path, default=Path("outputs/ray_scaling.json"))
    args = ap.parse_args()
    logging.getLogger("mirror_sfm").setLevel(logging.WARNING)
    distributed._merge_shards = timed_merge(distributed._merge_shards)
    names = list_images(args.images)[: args.limit]
    model = load_model("imagenet").eval()
    t = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    cluster_start = time.perf_counter() - t
    runs = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        reference = Path(tmp) / "single-reference.h5"
        for rep in range(args.repeats):
            order = list(CONFIGS) if rep % 2 == 0 else list(CONFIGS)[::-1]
            for name in order:
                out = Path(tmp) / f"run-{rep}-{list(CONFIGS).index(name)}.h5"  # a new file: nothing cached
                assert not out.exists()
                load = os.getloadavg()[0]
                MERGE_SECONDS.clear()
                ray_options, threads = CONFIGS[name]
                default_threads = torch.get_num_threads()
                torch.set_num_threads(threads or default_threads)
                t = time.perf_counter()
                extract(args.images, out, image_names=names, model=model, ray=ray_options)
                seconds = time.perf_counter() - t
                torch.set_num_threads(default_threads)
                run = {"round": rep, "seconds": round(seconds, 2), "load_before": round(load, 2)}
                if MERGE_SECONDS:
                    run["merge_seconds"] = round(MERGE_SECONDS[0], 3)
                if name == BASELINE and not reference.exists():
                    out.rename(reference)
                elif reference.exists():
                    run["max_abs_diff_vs_single"] = max_difference(reference, out)
                runs[name].append(run)
                print(json.dumps({"config": name, **run}), flush=True)
    ray.shutdown()
    n = len(names)
    best = {name: min(r["seconds"] for r in rs) for name, rs in runs.items()}
    base = best[BASELINE]
    rows = []
    for name, rs in runs.items():
        workers = CONFIGS[name][0].workers if CONFIGS[name][0] else 1
        rows.append(
            {
                "config": name,
                "images": n,
                "seconds_best": best[name],
                "seconds_all": [r["seconds"] for r in rs],
                "img_per_s": round(n / best[name], 3),
                "ratio_vs_single": round(base / best[name], 3),
                "worker_seconds_per_image": round(best[name] * workers / n, 3),
                "merge_seconds": min((r["merge_seconds"] for r in rs if "merge_seconds" in r), default=None),
            }
        )
    two = next(r for r in rows if r["config"].startswith("Ray, 2"))
    per_image = two["worker_seconds_per_image"]  # includes actor start and merge: a slight over-estimate
    merge_per_image = two["merge_seconds"] / n
    projection = [
        {
            "workers": w,
            "describe_hours": round(1e6 * per_image / w / 3600, 2),
            "merge_hours": round(1e6 * merge_per_image / 3600, 2),
            "total_hours": round((1e6 * per_image / w + 1e6 * merge_per_image) / 3600, 2),
        }
        for w in args.project
    ]
    for row in rows:
        print(json.dumps(row))
    for row in projection:
        print(json.dumps(row))
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs)",
        "images": str(args.images),
        "ray": ray.__version__,
        "torch_threads_default": torch.get_num_threads(),
        "cluster_start_seconds": round(cluster_start, 2),
        "runs": runs,
        "rows": rows,
        "projection_1M": projection,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
