"""Reconstruct each scene with exhaustive matching (pycolmap) to get tracks for overlap ground truth.

Writes OUT/<scene>/sparse (largest model) and OUT/<scene>/time.json; skips scenes already done.
Used by benchmarks/choose_defaults.py: common-track ratios from these models are the ground truth
for choosing the retrieval defaults. Usage: python benchmarks/make_track_gt.py [--root ../shared/data/scenes]
"""

import argparse
import json
import shutil
import time
from pathlib import Path

import pycolmap

ap = argparse.ArgumentParser()
ap.add_argument("--root", type=Path, default=Path("../shared/data/scenes"))
ap.add_argument("--out", type=Path, default=Path("outputs/track_gt"))
ap.add_argument("--scenes", nargs="*")
ap.add_argument(
    "--max-features", type=int, default=2048, help="SIFT features per image (CPU matching cost grows with its square)"
)
args = ap.parse_args()
for scene in sorted(p for p in args.root.iterdir() if (p / "images").is_dir()):
    if args.scenes and scene.name not in args.scenes:
        continue
    out = args.out / scene.name
    if (out / "sparse" / "cameras.bin").exists():
        continue
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.time()
    db = work / "database.db"
    sift = pycolmap.FeatureExtractionOptions()
    sift.sift.max_num_features = args.max_features
    pycolmap.extract_features(db, scene / "images", camera_mode=pycolmap.CameraMode.PER_IMAGE, extraction_options=sift)
    t1 = time.time()
    pycolmap.match_exhaustive(db)
    t2 = time.time()
    recs = pycolmap.incremental_mapping(db, scene / "images", work / "sparse")
    t3 = time.time()
    best = max(recs.values(), key=lambda r: r.num_reg_images())
    (out / "sparse").mkdir(parents=True, exist_ok=True)
    best.write(out / "sparse")
    (out / "time.json").write_text(
        json.dumps(
            {
                "features": t1 - t0,
                "matching": t2 - t1,
                "mapping": t3 - t2,
                "registered": best.num_reg_images(),
                "models": len(recs),
                "max_features": args.max_features,
            }
        )
    )
    print(scene.name, best.summary(), flush=True)
