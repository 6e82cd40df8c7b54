"""Descriptor extraction speed (images/s) of `mirror_sfm extract` at several resolutions, on this CPU.

Runs the library's `extract` on the same images at each --resize in one process (alternating order over
--repeats rounds so drift hits every setting alike) and reports images/s and the ratio to the first size.
Usage: python benchmarks/extraction_speed.py [IMAGES] [--resize 512 1024] [--repeats 2]
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mirror_sfm.extract import ExtractionOptions, extract  # noqa: E402
from mirror_sfm.images import list_images  # noqa: E402
from mirror_sfm.model import load_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("images", type=Path, nargs="?", default=Path("../shared/data/scenes/mary_rose/images"))
    ap.add_argument("--resize", nargs="*", type=int, default=[512, 1024])
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("outputs/extraction_speed.json"))
    args = ap.parse_args()
    names = list_images(args.images)[: args.limit]
    model = load_model("imagenet").eval()
    secs = {r: [] for r in args.resize}
    for rep in range(args.repeats):
        order = args.resize if rep % 2 == 0 else args.resize[::-1]
        for r in order:
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                extract(args.images, Path(tmp) / "f.h5", ExtractionOptions(resize=r), image_names=names, model=model)
                secs[r].append(time.perf_counter() - t)
    rows = [
        {
            "resize": r,
            "images": len(names),
            "img_per_s": round(len(names) / min(s), 2),
            "ratio_vs_first": round(min(secs[args.resize[0]]) / min(s), 3),
        }
        for r, s in secs.items()
    ]
    for row in rows:
        print(json.dumps(row))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
