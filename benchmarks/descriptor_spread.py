"""How far apart a model puts overlapping and non-overlapping images of the same scene, and other scenes.

For each labelled scene (gtgen folder) and each model: mean cosine similarity of the global descriptors of
pairs with CO >= 0.5 (same surface), pairs of the same scene with CO < 0.05 (same place, other surface) and
pairs across scenes, plus the within-scene AUC (probability that a random CO >= 0.5 pair scores above a random
CO < 0.05 pair). A model that only learns "which scene is this" raises both within-scene means and lowers the AUC.

    python benchmarks/descriptor_spread.py outputs/labels/alexander outputs/labels/statue_of_liberty_40 \
        --weights imagenet outputs/ablation/runs/B-mtl/weights.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy.stats import mannwhitneyu

from gtgen.ratios import combined_ratios
from mirror_sfm.extract import ExtractionOptions, extract
from mirror_sfm.features_io import read_descriptors
from mirror_sfm.io_utils import write_text_atomic
from mirror_sfm.model import load_model
from mirror_sfm.scene_eval import load_scene_labels


def scene_descriptors(scene: Path, model, workdir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) L2-normalised global descriptors of the scene's images and the dense symmetric CO matrix."""
    labels = load_scene_labels(scene)
    h5 = workdir / f"{scene.name}.h5"
    extract(labels.image_dir, h5, ExtractionOptions(regional=False), image_names=labels.names, model=model)
    _, glob, _ = read_descriptors(h5, labels.names)
    co = combined_ratios(labels.ct, labels.mo, 0.2).toarray()
    return glob / np.linalg.norm(glob, axis=1, keepdims=True), co


def spread(scenes: list[Path], weights: str) -> list[dict]:
    model = load_model(weights).eval()
    rows, descs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for scene in scenes:
            d, co = scene_descriptors(scene, model, Path(tmp))
            descs.append(d)
            sim = d @ d.T
            iu = np.triu_indices(len(d), 1)
            s, c = sim[iu], co[iu]
            pos, neg = s[c >= 0.5], s[c < 0.05]
            auc = mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)) if len(pos) and len(neg) else float("nan")
            rows.append(
                {
                    "weights": weights,
                    "scene": scene.name,
                    "pos_pairs": int(len(pos)),
                    "neg_pairs": int(len(neg)),
                    "cos_pos": float(pos.mean()) if len(pos) else float("nan"),
                    "cos_neg_same_scene": float(neg.mean()) if len(neg) else float("nan"),
                    "auc": float(auc),
                }
            )
    cross = [float((a @ b.T).mean()) for i, a in enumerate(descs) for b in descs[i + 1 :]]
    for r in rows:
        r["cos_other_scenes"] = float(np.mean(cross)) if cross else float("nan")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scenes", nargs="+", type=Path, help="gtgen scene folders")
    p.add_argument("--weights", nargs="+", default=["imagenet"], help="models to compare")
    p.add_argument("-o", "--output", type=Path, help="also write the rows as JSON")
    args = p.parse_args(argv)
    rows = [r for w in args.weights for r in spread(args.scenes, w)]
    print("| weights | scene | cos CO≥0.5 | cos CO<0.05 (same scene) | cos other scenes | AUC CO≥0.5 vs <0.05 |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['weights']} | {r['scene']} | {r['cos_pos']:.3f} | {r['cos_neg_same_scene']:.3f} "
            f"| {r['cos_other_scenes']:.3f} | {r['auc']:.3f} |"
        )
    if args.output:
        write_text_atomic(args.output, json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
