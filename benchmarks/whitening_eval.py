"""Whitening choices in the fast mode on the labelled scenes (issue 15, part 2): none, PCA whitening fitted on the
searched database or on the training scenes, and learned whitening (Radenović et al.) fitted on the training scenes'
labels.

    python benchmarks/whitening_eval.py --labels-root outputs/labels --out outputs/whitening_eval \
        --configs none pca-db:256 pca-train:256 lw:ct0.2:regional:256 lw:co0.5:global:128:pre256

Ranking is `pairs --verify none` (the fast mode): MAC global descriptor at 384 px, PR-MAC re-ranking of the top 100,
the whitening applied to the global and the regional vectors as `--whitening model` applies a weights file's
(`mirror_sfm.pairs.rank_pairs`). Each scene is searched alone; `validation-pooled` searches all validation scenes'
images as one database (positives never cross scenes), where the top 50 is a real shortlist (the validation scenes
have 40-53 images, so alone their top 50 is nearly the whole scene). Scores, per scene and mean: AP@10 with positives
CO >= 0.5 and CT >= 0.2, and recall@20 / recall@50 of the symmetric CT >= 0.2 neighbours (mean over queries of the
share of their neighbours inside the top N). The training scenes are scored too, as a sanity check: learned and
training-fitted whitening have seen them.

Configs:
  none                         no whitening (the ImageNet default)
  pca-db:D                     PCA whitening to D dims fitted on the searched database's own regional vectors
                               (`--whitening database`, without its rule of leaving databases of <= D images alone)
  pca-train:D                  PCA whitening fitted on the training scenes' regional vectors
  lw:POS:VEC:D[:preP][:sS]     learned whitening fitted on the training scenes: positives POS (ct0.2 = CT >= 0.2,
                               co0.5 = CO >= 0.5), vectors VEC (global | regional), D dims, PCA to P dims first
                               (pre0: none; default 512), shrinkage S (default 0.1)
  weights:PATH                 the whitening a weights file carries (e.g. the shipped default.pt)
Descriptors are extracted once per scene into OUT/work (resumable); each config's scores go to
OUT/results/<config>.json (a config already scored is not run again). Writes OUT/whitening_eval.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mirror_sfm.errors import MirrorError  # noqa: E402
from mirror_sfm.evaluate import ap_at_k, mean_average_precision  # noqa: E402
from mirror_sfm.extract import ExtractionOptions  # noqa: E402
from mirror_sfm.io_utils import write_text_atomic  # noqa: E402
from mirror_sfm.learned_whitening import (  # noqa: E402
    DescribedScene,
    LearnedWhiteningOptions,
    describe_scene,
    fit_on_scenes,
    load_label_folders,
)
from mirror_sfm.model import load_model  # noqa: E402
from mirror_sfm.pairs import PairsOptions, rank_pairs  # noqa: E402
from mirror_sfm.retrieval import RetrievalOptions  # noqa: E402
from mirror_sfm.whitening import Whitening, fit_pca_whitening  # noqa: E402

# configs/splits.yaml's labelled real scenes (§13 and §15's first runs predate seneca, lund_street and skull's labels
# and name their 9 + 3 scenes explicitly); statue_of_liberty (135 photos) is left to `mirror_sfm evaluate`
TRAIN = ["banana", "conch", "ethiopian_head", "mary_rose", "mold_gold_cape", "snow_miku", "boruszyn",
         "coal_oil_point", "garfield_park", "seneca"]  # fmt: skip
VALIDATION = ["alexander", "lewis", "statue_of_liberty_40", "lund_street", "skull"]
DEPTH = 50  # ranked neighbours kept per query (recall@50)


# --------------------------------------------------------------------------------------------- configs


def parse_config(spec: str) -> dict:
    """'lw:ct0.2:regional:256:pre512:s0.1' -> {"kind": "lw", ...}; one SystemExit line when malformed."""
    parts = spec.split(":")
    try:
        if spec == "none":
            return {"kind": "none"}
        if parts[0] in ("pca-db", "pca-train") and len(parts) == 2:
            return {"kind": parts[0], "dim": int(parts[1])}
        if parts[0] == "weights" and len(parts) >= 2:
            return {"kind": "weights", "path": spec.split(":", 1)[1]}
        if parts[0] == "lw" and len(parts) >= 4:
            pos = parts[1]
            crit, thr = pos[:2], float(pos[2:])
            cfg = {"kind": "lw", "positives": f"{crit}:{thr:g}", "vectors": parts[2], "dim": int(parts[3])}
            cfg["pre_dim"], cfg["shrinkage"] = 512, 0.1
            for extra in parts[4:]:
                if extra.startswith("pre"):
                    cfg["pre_dim"] = int(extra[3:])
                elif extra.startswith("s"):
                    cfg["shrinkage"] = float(extra[1:])
                else:
                    raise ValueError(extra)
            return cfg
    except ValueError:
        pass
    raise SystemExit(f"malformed config {spec!r} (see --help)")


def slug(spec: str) -> str:
    return spec.replace(":", "_").replace("/", "_")


def config_whitening(cfg: dict, train: list[DescribedScene], cache: dict) -> tuple[Whitening | None, dict]:
    """The whitening of a config that does not depend on the database (pca-db is fitted per database)."""
    if cfg["kind"] in ("none", "pca-db"):
        return None, {}
    if cfg["kind"] == "weights":
        model = load_model(cfg["path"])
        if model.whitening is None:
            raise MirrorError(f"{cfg['path']} carries no whitening")
        return model.whitening, {"weights": cfg["path"]}
    if cfg["kind"] == "pca-train":
        if "train_regions" not in cache:
            cache["train_regions"] = np.concatenate([s.regional.reshape(-1, s.regional.shape[-1]) for s in train])
        x = cache["train_regions"]
        return fit_pca_whitening(x, cfg["dim"]), {"vectors": int(len(x))}
    options = LearnedWhiteningOptions(
        positives=cfg["positives"],
        vectors=cfg["vectors"],
        dim=cfg["dim"],
        pre_dim=cfg["pre_dim"],
        shrinkage=cfg["shrinkage"],
    )
    return fit_on_scenes(train, options)


# --------------------------------------------------------------------------------------------- scoring


def recall_at(rankings: dict[str, list[str]], gt: dict[str, set[str]], n: int) -> tuple[float, int]:
    """Mean over queries with neighbours of the share of them inside the top n; and the number of such queries."""
    queries = [q for q in rankings if gt.get(q)]
    if not queries:
        return float("nan"), 0
    return float(np.mean([len(set(rankings[q][:n]) & gt[q]) / len(gt[q]) for q in queries])), len(queries)


def rank(parts: list[DescribedScene], whitening: Whitening | None, model, pooled: bool) -> dict[str, list[str]]:
    """Each image's top DEPTH by the fast mode (CNN + PR-MAC), names prefixed '<scene>/' when pooled."""
    names = [f"{s.labels.name}/{n}" if pooled else n for s in parts for n in s.names]
    glob = np.concatenate([s.glob for s in parts])
    regional = np.concatenate([s.regional for s in parts])
    options = PairsOptions(
        retrieval=RetrievalOptions(num_matched=min(DEPTH, len(names) - 1), whitening="model" if whitening else "none")
    )
    model.whitening = whitening
    pairs, _ = rank_pairs(names, glob, regional, options, model)
    ranked: dict[str, list[str]] = {}
    for q, d in pairs:
        ranked.setdefault(q, []).append(d)
    return ranked


def ground_truths(parts: list[DescribedScene], pooled: bool) -> dict[str, dict[str, set[str]]]:
    out: dict[str, dict[str, set[str]]] = {"co": {}, "ct": {}}
    for s in parts:
        for key, (crit, thr) in (("co", ("co", 0.5)), ("ct", ("ct", 0.2))):
            gt = s.labels.ground_truth(crit, thr)
            keep = set(s.names)
            for q in s.names:
                pos = gt.get(q, set()) & keep
                if pooled:
                    out[key][f"{s.labels.name}/{q}"] = {f"{s.labels.name}/{p}" for p in pos}
                else:
                    out[key][q] = pos
    return out


def score(ranked: dict[str, list[str]], gts: dict[str, dict[str, set[str]]], names: list[str]) -> dict:
    co = mean_average_precision(ranked, gts["co"], 10, names)
    ct = mean_average_precision(ranked, gts["ct"], 10, names)
    r20, n_ct = recall_at(ranked, gts["ct"], 20)
    r50, _ = recall_at(ranked, gts["ct"], 50)
    return {
        "images": len(names),
        "queries_co": co.num_queries,
        "queries_ct": n_ct,
        "ap10_co": co.map_at_k,
        "ap10_ct": ct.map_at_k,
        "recall20_ct": r20,
        "recall50_ct": r50,
        "ap10_co_per_query": {q: ap_at_k(ranked.get(q, []), gts["co"][q], 10) for q in names if gts["co"].get(q)},
    }


def score_scenes(cfg: dict, groups: list[list[DescribedScene]], whitening_of, model, pooled: bool = False) -> dict:
    """Scores of each group of scenes searched as one database; `whitening_of(group)` gives its whitening."""
    per: dict = {}
    for parts in groups:
        w = whitening_of(parts)
        if cfg["kind"] == "pca-db":
            regions = np.concatenate([s.regional for s in parts])
            w = fit_pca_whitening(regions.reshape(-1, regions.shape[-1]), cfg["dim"])
        ranked = rank(parts, w, model, pooled)
        gts = ground_truths(parts, pooled)
        per["pooled" if pooled else parts[0].labels.name] = score(ranked, gts, list(gts["co"]))
    return summarise(per)


def evaluate_config(spec: str, train: list[DescribedScene], val: list[DescribedScene], model, cache: dict) -> dict:
    """Fit the config's whitening on the training scenes; score it on the validation scenes (alone and pooled)
    and on the training scenes."""
    cfg = parse_config(spec)
    t0 = time.perf_counter()
    whitening, info = config_whitening(cfg, train, cache)
    out = {"config": spec, "fit": info, "fit_seconds": round(time.perf_counter() - t0, 2), "sets": {}}
    for name, scenes, pooled in (
        ("validation", val, False),
        ("training", train, False),
        ("validation-pooled", val, True),
    ):
        groups = [scenes] if pooled else [[s] for s in scenes]
        out["sets"][name] = score_scenes(cfg, groups, lambda parts: whitening, model, pooled)
    return out


def leave_one_scene_out(spec: str, train: list[DescribedScene], model, training_scores: dict) -> dict:
    """Each training scene scored with the whitening fitted on the other training scenes (configs that fit
    nothing on the training scenes score as on `training`)."""
    cfg = parse_config(spec)
    if cfg["kind"] not in ("lw", "pca-train"):
        return training_scores

    def fitted_without(parts):
        others = [s for s in train if s.labels.name != parts[0].labels.name]
        return config_whitening(cfg, others, {})[0]

    return score_scenes(cfg, [[s] for s in train], fitted_without, model)


def summarise(per: dict) -> dict:
    """Per-scene scores, their mean over scenes and the mean over all queries (weighted by each scene's queries)."""
    metrics = ("ap10_co", "ap10_ct", "recall20_ct", "recall50_ct")
    weights = {m: "queries_co" if m == "ap10_co" else "queries_ct" for m in metrics}
    scenes = per
    mean_scenes = {m: float(np.nanmean([r[m] for r in scenes.values()])) for m in metrics}
    all_q = {}
    for m in metrics:
        w = np.array([r[weights[m]] for r in scenes.values()], dtype=float)
        v = np.array([r[m] if r[weights[m]] else 0.0 for r in scenes.values()])
        all_q[m] = float((w * v).sum() / w.sum()) if w.sum() else float("nan")
    return {"scenes": scenes, "mean_scenes": mean_scenes, "all_queries": all_q}


def paired_delta(res: dict, base: dict, samples: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """Mean over all queries of AP@10 (CO) minus the baseline's, and a 95 % paired bootstrap interval."""
    diffs = [
        ap - base["scenes"][scene]["ap10_co_per_query"][q]
        for scene, r in res["scenes"].items()
        for q, ap in r["ap10_co_per_query"].items()
    ]
    d = np.asarray(diffs)
    boots = d[np.random.default_rng(seed).integers(0, len(d), size=(samples, len(d)))].mean(axis=1)
    return float(d.mean()), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


# --------------------------------------------------------------------------------------------- report


def table(results: list[dict], set_name: str, title: str, scene_metrics: tuple[str, ...]) -> str:
    """One markdown table, a row per config: each scene's `scene_metrics`, the means over scenes, the mean over all
    queries of AP@10 (CO) and its difference to `none` with a 95 % paired bootstrap interval over queries."""
    results = [r for r in results if set_name in r["sets"]]
    if not results:
        return ""
    names = {"ap10_co": "AP@10 CO", "recall20_ct": "R@20", "recall50_ct": "R@50"}
    scenes = list(results[0]["sets"][set_name]["scenes"])
    base = next((r["sets"][set_name] for r in results if r["config"] == "none"), None)
    head = ["config"] + [f"{sc} {names[m]}" for sc in scenes for m in scene_metrics]
    if len(scenes) > 1:
        head += ["mean AP@10 CO", "mean AP@10 CT", "mean R@20", "mean R@50", "all queries AP@10 CO"]
    else:
        head += ["AP@10 CT"]
    head += ["Δ AP@10 CO vs none [95 % CI]"] if base else []
    lines = [title, "", "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in results:
        res = r["sets"][set_name]
        cells = [f"`{r['config']}`"] + [f"{res['scenes'][sc][m]:.3f}" for sc in scenes for m in scene_metrics]
        m, a = res["mean_scenes"], res["all_queries"]
        if len(scenes) > 1:
            cells += [f"{m[k]:.3f}" for k in ("ap10_co", "ap10_ct", "recall20_ct", "recall50_ct")]
            cells += [f"{a['ap10_co']:.3f}"]
        else:
            cells += [f"{m['ap10_ct']:.3f}"]
        if base:
            d, lo, hi = paired_delta(res, base)
            cells += [f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_table(results: list[dict]) -> str:
    """The condensed table (RESULTS.md): validation per scene and mean, pooled recall, and the training scenes left out
    (LOSO) and in-sample, one row per config."""
    base = next((r for r in results if r["config"] == "none"), None)
    val_scenes = list(results[0]["sets"]["validation"]["scenes"])
    num_queries = sum(results[0]["sets"]["validation"]["scenes"][sc]["queries_co"] for sc in val_scenes)
    num_train = len(results[0]["sets"]["training"]["scenes"])
    head = ["config"] + [f"{sc} AP@10" for sc in val_scenes]
    head += ["mean AP@10 CO", "mean AP@10 CT", "mean R@20", "mean R@50", "pooled R@20", "pooled R@50"]
    head += [f"Δ AP@10 CO, all {num_queries} queries [95 % CI]"]
    head += ["training LOSO AP@10 CO", "training in-sample AP@10 CO"]
    lines = [
        f"Summary (validation: AP@10 at CO ≥ 0.5 per scene, means over the {len(val_scenes)} scenes, recall of "
        f"CT ≥ 0.2 neighbours; training: mean over the {num_train} scenes):",
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * (len(head) - 1),
    ]
    for r in results:
        val, pooled = r["sets"]["validation"], r["sets"]["validation-pooled"]["all_queries"]
        m = val["mean_scenes"]
        cells = [f"`{r['config']}`"] + [f"{val['scenes'][sc]['ap10_co']:.3f}" for sc in val_scenes]
        cells += [f"{m[k]:.3f}" for k in ("ap10_co", "ap10_ct", "recall20_ct", "recall50_ct")]
        cells += [f"{pooled['recall20_ct']:.3f}", f"{pooled['recall50_ct']:.3f}"]
        if base:
            d, lo, hi = paired_delta(val, base["sets"]["validation"])
            cells.append(f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        else:
            cells.append("–")
        loso = r["sets"].get("training-loso")
        cells.append(f"{loso['mean_scenes']['ap10_co']:.3f}" if loso else "–")
        cells.append(f"{r['sets']['training']['mean_scenes']['ap10_co']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("--labels-root", type=Path, required=True, help="the labelled scene folders, ROOT/<scene>")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--configs", nargs="+", default=["none", "pca-db:256", "pca-train:256", "lw:ct0.2:regional:256"])
    p.add_argument("--train", nargs="+", default=TRAIN, help="scenes whitening is fitted on")
    p.add_argument("--validation", nargs="+", default=VALIDATION, help="scenes it is judged on")
    p.add_argument("--weights", default="imagenet", help="the network (its own whitening is not used)")
    p.add_argument(
        "--loso",
        action="store_true",
        help="also score each training scene with the whitening fitted on the other training scenes (slow: one "
        "fit per training scene and config)",
    )
    args = p.parse_args(argv)
    for spec in args.configs:
        parse_config(spec)
    labels = load_label_folders([args.labels_root / s for s in args.train + args.validation])
    model = load_model(args.weights).eval()
    extraction = ExtractionOptions(weights=args.weights)
    work = args.out / "work"
    described = {
        lbl.name: describe_scene(lbl, work / f"{lbl.name}-global-feats.h5", extraction, model) for lbl in labels
    }
    train = [described[s] for s in args.train]
    val = [described[s] for s in args.validation]
    results_dir = args.out / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    cache: dict = {}
    results = []
    for spec in args.configs:
        path = results_dir / f"{slug(spec)}.json"
        res = json.loads(path.read_text()) if path.is_file() else None
        if res is None:
            t0 = time.perf_counter()
            res = evaluate_config(spec, train, val, model, cache)
            res["seconds"] = round(time.perf_counter() - t0, 1)
            write_text_atomic(path, json.dumps(res, indent=1))
            v = res["sets"]["validation"]["mean_scenes"]
            print(
                f"{spec:<40} val AP@10 CO {v['ap10_co']:.3f}  R@20 {v['recall20_ct']:.3f}  "
                f"R@50 {v['recall50_ct']:.3f}  ({res['seconds']} s)",
                flush=True,
            )
        if args.loso and "training-loso" not in res["sets"]:
            t0 = time.perf_counter()
            res["sets"]["training-loso"] = leave_one_scene_out(spec, train, model, res["sets"]["training"])
            res["loso_seconds"] = round(time.perf_counter() - t0, 1)
            write_text_atomic(path, json.dumps(res, indent=1))
            v = res["sets"]["training-loso"]["mean_scenes"]
            print(f"{spec:<40} LOSO AP@10 CO {v['ap10_co']:.3f}  ({res['loso_seconds']} s)", flush=True)
        results.append(res)
    every = ("ap10_co", "recall20_ct", "recall50_ct")
    text = "\n".join(
        [
            summary_table(results),
            table(results, "validation", "Validation scenes, each searched alone:", every),
            table(results, "validation-pooled", "Validation scenes pooled into one database:", every),
            table(
                results,
                "training-loso",
                "Training scenes, each scored with the whitening fitted on the other eight (leave one scene out):",
                ("ap10_co",),
            ),
            table(
                results,
                "training",
                "Training scenes, whitening fitted on all of them (in-sample: a sanity check, not a score):",
                ("ap10_co",),
            ),
        ]
    )
    write_text_atomic(args.out / "whitening_eval.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
