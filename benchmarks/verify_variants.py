"""Verification variants on the labelled scenes of an `overlap_suite.py` run (RESULTS.md §11): the matcher's ratio test.

    python benchmarks/verify_variants.py outputs/overlap_suite/batch1 --labels-root outputs/labels \
        --scenes alexander coal_oil_point --ratios 0.8 0.9

For each scene, the suite's fast-mode ranking (`prmac/co/pairs-<scene>.txt`) gives each query's CNN + PR-MAC top N;
those pairs are verified by COLMAP on the scene's SIFT database (`work/sift-<scene>/database.db`, first F features)
with each ratio, in a working database per ratio, and re-ranked as `mirror_sfm pairs` does (`rerank_by_geometry`:
effective inliers, verified reverse candidates, the rest of the CNN ranking after). Reported per scene and ratio:
AP@10 at CO >= 0.5 and at symmetric CT >= 0.2, the share of shortlisted positives (CO >= 0.5) that fail verification
and of shortlisted negatives that pass, and the verified-pairs time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import overlap_map as om  # noqa: E402

from mirror_sfm.verify import VerifyOptions, _pair_key, rerank_by_geometry, verify_pairs  # noqa: E402


def ranking(cnn: dict[str, list[str]], scores: dict, shortlist: int) -> dict[str, list[str]]:
    candidates = [(q, d) for q, ranked in cnn.items() for d in ranked[:shortlist]]
    cnn_scores = [-cnn[q].index(d) for q, d in candidates]  # CNN order breaks ties
    pairs, _, _ = rerank_by_geometry(candidates, cnn_scores, scores, shortlist)
    out: dict[str, list[str]] = {}
    for q, d in pairs:
        out.setdefault(q, []).append(d)
    return {q: out.get(q, []) + [d for d in ranked if d not in out.get(q, [])] for q, ranked in cnn.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("suite", type=Path, help="an overlap_suite.py output folder (with prmac/ and work/)")
    p.add_argument("--labels-root", type=Path, required=True)
    p.add_argument("--scenes", nargs="+", required=True)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.8, 0.9])
    p.add_argument("--shortlist", type=int, default=30)
    p.add_argument("--features", type=int, default=2048)
    args = p.parse_args(argv)
    print("| scene | ratio | AP@10 CO ≥ 0.5 | AP@10 CT ≥ 0.2 | positives failing | negatives passing | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for scene in args.scenes:
        co = om.load_gt(args.labels_root / scene, om.LabelOptions("co"))
        ct = om.load_gt(args.labels_root / scene, om.LabelOptions("ct"))
        cnn = om.rankings_from_pairs(args.suite / "prmac" / "co" / f"pairs-{scene}.txt", co.names)
        database = args.suite / "work" / f"sift-{scene}" / "database.db"
        pairs = [(q, d) for q in co.names for d in cnn[q][: args.shortlist]]
        for ratio in args.ratios:
            options = VerifyOptions(num_features=args.features, max_ratio=ratio)
            default = ratio == VerifyOptions.max_ratio  # the suite's own working database (its matches resume)
            work = database.with_name(f"database-verify-{args.features}{'' if default else f'-ratio{ratio}'}.db")
            t0 = time.perf_counter()
            scores = verify_pairs(database, pairs, options, work_database=work)
            seconds = time.perf_counter() - t0
            ranked = ranking(cnn, scores, args.shortlist)
            ap_co = om.score(ranked, co.positives, co.names, [10])["map"]["10"]["ap_at_k"]
            ap_ct = om.score(ranked, ct.positives, co.names, [10])["map"]["10"]["ap_at_k"]
            positive = [scores.get(_pair_key(q, d), 0) for q, d in pairs if d in co.positives[q]]
            negative = [scores.get(_pair_key(q, d), 0) for q, d in pairs if d not in co.positives[q]]
            fail = sum(s == 0 for s in positive) / max(1, len(positive))
            passing = sum(s > 0 for s in negative) / max(1, len(negative))
            print(f"| {scene} | {ratio} | {ap_co:.3f} | {ap_ct:.3f} | {fail:.1%} | {passing:.1%} | {seconds:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
