"""Measure retrieval defaults (resolution, pooling, PR-MAC, whitening, QE) against track ground truth.

Ground truth: common-track ratio CT (gtgen.ratios) from each scene's exhaustive reconstruction made by
benchmarks/make_track_gt.py. A database image is relevant to a query when the symmetric CT >= a threshold.
Each image's feature map is computed once per resolution and pooled every way in-process. Reports mAP@k
per scene (queries against their own scene) and pooled (every query against all images of all scenes).

Usage: python benchmarks/choose_defaults.py [--resize 512 768 1024] [--out outputs/choose_defaults.json]
"""

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import pycolmap
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gtgen.ratios import common_track_ratios, symmetric_ratios  # noqa: E402
from mirror_sfm.evaluate import mean_average_precision  # noqa: E402
from mirror_sfm.extract import resized_size  # noqa: E402
from mirror_sfm.images import read_image_rgb  # noqa: E402
from mirror_sfm.model import load_model  # noqa: E402
from mirror_sfm.pooling import gem, l2n, mac, regional_mac, rmac_from_regions  # noqa: E402
from mirror_sfm.retrieval import RetrievalOptions, retrieve  # noqa: E402
from mirror_sfm.whitening import fit_pca_whitening  # noqa: E402


def ground_truth(sparse: Path, threshold: float) -> dict[str, set[str]]:
    names, ct = common_track_ratios(pycolmap.Reconstruction(sparse))
    s = symmetric_ratios(ct).tocoo()
    gt = {n: set() for n in names}
    for i, j, v in zip(s.row, s.col, s.data):
        if v >= threshold:
            gt[names[i]].add(names[j])
    return gt


@torch.no_grad()
def describe(model, paths: list[Path], resize: int):
    out = {"mac": [], "gem": [], "rmac": [], "regions": []}
    t0 = time.time()
    for p in paths:
        rgb = read_image_rgb(p)
        h, w = rgb.shape[:2]
        img = Image.fromarray(rgb).resize(resized_size(w, h, resize), Image.BILINEAR, reducing_gap=3.0)
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div(255)[None]
        fmap = model(x)
        reg = regional_mac(fmap)
        out["mac"].append(l2n(mac(fmap))[0].numpy())
        out["gem"].append(l2n(gem(fmap))[0].numpy())
        out["rmac"].append(rmac_from_regions(reg)[0].numpy())
        out["regions"].append(l2n(reg)[0].numpy().astype(np.float16))
    secs = time.time() - t0
    return {k: np.stack(v) for k, v in out.items()}, secs


def evaluate(names, desc, gts, pooling, rerank, whitening, qe, ks, whitening_fit=None):
    glob, regions = desc[pooling], desc["regions"]
    wh = None
    if whitening == "database":
        wh = fit_pca_whitening(regions.reshape(-1, regions.shape[-1]).astype(np.float32), 256)
    elif whitening == "other_scenes":
        wh = whitening_fit
    opts = RetrievalOptions(num_matched=max(ks), rerank=rerank, shortlist=100, query_expansion=qe)
    nn = retrieve(glob, regions, opts, whitening=wh, rmac_global=pooling == "rmac")
    rankings = {names[q]: [names[j] for j in nn.indices[q] if j >= 0] for q in range(len(names))}
    res = {}
    for thr, gt in gts.items():
        for k in ks:
            m = mean_average_precision(rankings, gt, k)
            res[f"ct>={thr}"] = res.get(f"ct>={thr}", {})
            res[f"ct>={thr}"][f"mAP@{k}"] = round(m.map_mirror, 4)
            res[f"ct>={thr}"][f"AP@{k}"] = round(m.map_at_k, 4)
            res[f"ct>={thr}"]["queries"] = m.num_queries
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", type=Path, default=Path("../shared/data/scenes"))
    ap.add_argument("--gt", type=Path, default=Path("outputs/track_gt"))
    ap.add_argument(
        "--scenes",
        nargs="*",
        default=["alexander", "ethiopian_head", "mary_rose", "mold_gold_cape", "statue_of_liberty"],
    )
    ap.add_argument("--resize", nargs="*", type=int, default=[512, 768, 1024])
    ap.add_argument("--thresholds", nargs="*", type=float, default=[0.05, 0.2])
    ap.add_argument("--ks", nargs="*", type=int, default=[10, 20])
    ap.add_argument("--out", type=Path, default=Path("outputs/choose_defaults.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = load_model("imagenet").eval()
    scenes = [s for s in args.scenes if (args.gt / s / "sparse").is_dir()]
    gts = {s: {t: ground_truth(args.gt / s / "sparse", t) for t in args.thresholds} for s in scenes}
    results = []
    for resize in args.resize:
        descs, names, speed = {}, {}, []
        for s in scenes:
            imgs = sorted((args.root / s / "images").iterdir())
            names[s] = [p.name for p in imgs]
            descs[s], secs = describe(model, imgs, resize)
            speed.append((len(imgs), secs))
            print(f"resize {resize}: {s} described, {len(imgs) / secs:.2f} img/s", flush=True)
        ips = sum(n for n, _ in speed) / sum(t for _, t in speed)
        configs = list(
            itertools.product(["mac", "gem", "rmac"], ["none", "prmac"], ["none", "database", "other_scenes"], [0])
        )
        configs += [("mac", "prmac", "none", 2), ("mac", "none", "none", 2)]
        for pooling, rerank, whitening, qe in configs:
            if whitening == "other_scenes" and len(scenes) < 2:
                continue
            per_scene = {}
            for s in scenes:
                fit = None
                if whitening == "other_scenes":
                    others = np.concatenate([descs[o]["regions"] for o in scenes if o != s])
                    fit = fit_pca_whitening(others.reshape(-1, others.shape[-1]).astype(np.float32), 256)
                per_scene[s] = evaluate(names[s], descs[s], gts[s], pooling, rerank, whitening, qe, args.ks, fit)
            # pooled: every query against all images of all scenes (no 'other_scenes' whitening there)
            pooled = None
            if whitening != "other_scenes":
                all_names = [f"{s}/{n}" for s in scenes for n in names[s]]
                all_desc = {k: np.concatenate([descs[s][k] for s in scenes]) for k in descs[scenes[0]]}
                all_gt = {
                    t: {f"{s}/{q}": {f"{s}/{d}" for d in ds} for s in scenes for q, ds in gts[s][t].items()}
                    for t in args.thresholds
                }
                pooled = evaluate(all_names, all_desc, all_gt, pooling, rerank, whitening, qe, args.ks)
            mean = {}
            for key in per_scene[scenes[0]]:
                mean[key] = {
                    m: round(float(np.mean([per_scene[s][key][m] for s in scenes])), 4)
                    for m in per_scene[scenes[0]][key]
                    if m != "queries"
                }
            rec = {
                "resize": resize,
                "pooling": pooling,
                "rerank": rerank,
                "whitening": whitening,
                "qe": qe,
                "img_per_s": round(ips, 2),
                "mean_per_scene": mean,
                "pooled": pooled,
                "per_scene": per_scene,
            }
            results.append(rec)
            keys = ("resize", "pooling", "rerank", "whitening", "qe", "mean_per_scene", "pooled")
            print(json.dumps({k: rec[k] for k in keys}), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
