"""Verification variants on the labelled scenes of an `overlap_suite.py` run (RESULTS.md §11): features and ratio test.

    python benchmarks/verify_variants.py outputs/overlap_suite/batch1 --labels-root outputs/labels \
        --scenes alexander coal_oil_point --ratios 0.8 0.9
    python benchmarks/verify_variants.py outputs/overlap_suite/batch1 --labels-root outputs/labels \
        --scenes alexander coal_oil_point --features 1024 2048 --subset first

For each scene, the suite's fast-mode ranking (`prmac/co/pairs-<scene>.txt`) gives each query's CNN + PR-MAC top N;
those pairs are verified by COLMAP on the scene's SIFT database (`work/sift-<scene>/database.db`: F features per
image chosen by `--subset`) for every combination of `--features` and `--ratios`, each in its own working database
beside the suite's (the suite's database itself is only read), and re-ranked as `mirror_sfm pairs` does
(`rerank_by_geometry`: effective inliers, verified reverse candidates, the rest of the CNN ranking after). Reported
per scene and variant: AP@10 at CO >= 0.5 and at symmetric CT >= 0.2; of the shortlisted pairs that truly overlap
(CO >= 0.5) the share that fails verification, of the others the share that passes, and on each side the median
inliers of the pairs that pass; and the time verification took (0 where the working database held these matches).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import overlap_map as om  # noqa: E402

from mirror_sfm.console import run_command  # noqa: E402
from mirror_sfm.database_reader import SUBSET, SUBSETS  # noqa: E402
from mirror_sfm.verify import VerifyOptions, _pair_key, rerank_by_geometry, verify_pairs  # noqa: E402

HEADER = (
    "| scene | F | subset | ratio | AP@10 CO ≥ 0.5 | AP@10 CT ≥ 0.2 | positives | positives failing "
    "| median inliers (pos.) | negatives | negatives passing | median inliers (neg.) | seconds |\n"
    "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def ranking(cnn: dict[str, list[str]], scores: dict, shortlist: int) -> dict[str, list[str]]:
    """Each query's ranking as `mirror_sfm pairs` would write it, the rest of its CNN ranking after."""
    candidates = [(q, d) for q, ranked in cnn.items() for d in ranked[:shortlist]]
    cnn_scores = [-cnn[q].index(d) for q, d in candidates]  # CNN order breaks ties
    pairs, _, _ = rerank_by_geometry(candidates, cnn_scores, scores, shortlist)
    out: dict[str, list[str]] = {}
    for q, d in pairs:
        out.setdefault(q, []).append(d)
    return {q: out.get(q, []) + [d for d in ranked if d not in out.get(q, [])] for q, ranked in cnn.items()}


def pass_rates(inliers: list[int], positive: list[bool]) -> dict:
    """Share of positive pairs failing (0 inliers), of negatives passing, and each side's median passing inliers."""
    x, pos = np.asarray(inliers), np.asarray(positive, dtype=bool)
    median = lambda v: float(np.median(v[v > 0])) if (v > 0).any() else 0.0  # noqa: E731
    return {
        "positives": int(pos.sum()),
        "positives_failing": float((x[pos] == 0).mean()) if pos.any() else 0.0,
        "positive_median": median(x[pos]),
        "negatives": int((~pos).sum()),
        "negatives_passing": float((x[~pos] > 0).mean()) if (~pos).any() else 0.0,
        "negative_median": median(x[~pos]),
    }


@dataclass
class Scene:
    """One labelled scene of the suite: its labels, fast-mode ranking, SIFT database and shortlisted pairs."""

    co: object
    ct: object
    cnn: dict[str, list[str]]
    database: Path
    pairs: list[tuple[str, str]]


def load_scene(suite: Path, labels_root: Path, scene: str, shortlist: int) -> Scene:
    co = om.load_gt(labels_root / scene, om.LabelOptions("co"))
    cnn = om.rankings_from_pairs(suite / "prmac" / "co" / f"pairs-{scene}.txt", co.names)
    return Scene(
        co=co,
        ct=om.load_gt(labels_root / scene, om.LabelOptions("ct")),
        cnn=cnn,
        database=suite / "work" / f"sift-{scene}" / "database.db",
        pairs=[(q, d) for q in co.names for d in cnn[q][:shortlist]],
    )


def run_variant(scene: Scene, shortlist: int, options: VerifyOptions) -> dict:
    default = options.max_ratio == VerifyOptions.max_ratio and options.feature_subset == SUBSET
    # the suite's own working database for the defaults (its matches resume), one per variant otherwise
    suffix = "" if default else f"-{options.feature_subset}-ratio{options.max_ratio}"
    work = scene.database.with_name(f"database-verify-{options.num_features}{suffix}.db")
    t0 = time.perf_counter()
    scores = verify_pairs(scene.database, scene.pairs, options, work_database=work)
    seconds = time.perf_counter() - t0
    # the same working database scored by inlier count: every pair is matched already, so nothing is matched again
    inliers = verify_pairs(scene.database, scene.pairs, replace(options, score="inliers"), work_database=work)
    ranked = ranking(scene.cnn, scores, shortlist)
    co, pairs = scene.co, scene.pairs
    return {
        "ap_co": om.score(ranked, co.positives, co.names, [10])["map"]["10"]["ap_at_k"],
        "ap_ct": om.score(ranked, scene.ct.positives, co.names, [10])["map"]["10"]["ap_at_k"],
        **pass_rates([inliers[_pair_key(q, d)] for q, d in pairs], [d in co.positives[q] for q, d in pairs]),
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("suite", type=Path, help="an overlap_suite.py output folder (with prmac/ and work/)")
    p.add_argument("--labels-root", type=Path, required=True)
    p.add_argument("--scenes", nargs="+", required=True)
    p.add_argument("--features", type=int, nargs="+", default=[VerifyOptions.num_features])
    p.add_argument("--subset", choices=SUBSETS, default=SUBSET, help="which F features of each image verify")
    p.add_argument("--ratios", type=float, nargs="+", default=[VerifyOptions.max_ratio])
    p.add_argument("--shortlist", type=int, default=30)
    args = p.parse_args(argv)
    resume = "working databases keep their matches; re-run to resume"
    return run_command("verify_variants", lambda: report(args), resume)


def report(args: argparse.Namespace) -> None:
    """Print the table, one row per scene and variant as it is measured (every scene's files read first)."""
    scenes = {name: load_scene(args.suite, args.labels_root, name, args.shortlist) for name in args.scenes}
    print(HEADER)
    for name, scene in scenes.items():
        for features in args.features:
            for ratio in args.ratios:
                options = VerifyOptions(num_features=features, feature_subset=args.subset, max_ratio=ratio)
                r = run_variant(scene, args.shortlist, options)
                print(
                    f"| {name} | {features} | {args.subset} | {ratio} | {r['ap_co']:.3f} | {r['ap_ct']:.3f} | "
                    f"{r['positives']} | {r['positives_failing']:.1%} | {r['positive_median']:.0f} | "
                    f"{r['negatives']} | {r['negatives_passing']:.1%} | {r['negative_median']:.0f} | "
                    f"{r['seconds']:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    sys.exit(main())
