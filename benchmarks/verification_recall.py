"""How often COLMAP's verification passes truly overlapping and non-overlapping shortlisted pairs (RESULTS.md §11).

    python benchmarks/verification_recall.py outputs/overlap_suite/batch1 --labels-root outputs/labels \
        --scenes alexander coal_oil_point --features 1024 2048

For each scene: the CNN + PR-MAC top N (`--shortlist`, 30) of every query, from an `overlap_suite.py` output folder
(its `prmac` pair file and the scene's SIFT database under work/), verified by `mirror_sfm.verify.verify_pairs` with
the first F features (a copy of the database; the suite's files are not touched). Positives: CO >= 0.5. Reports the
share of positives that fail verification, of negatives that pass, and the median inliers of the passing ones.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import overlap_map  # noqa: E402

from mirror_sfm.verify import VerifyOptions, verify_pairs  # noqa: E402


def pass_rates(suite: Path, labels_root: Path, scene: str, features: int, shortlist: int, work: Path) -> dict:
    gt = overlap_map.load_gt(labels_root / scene, overlap_map.LabelOptions())
    ranked = overlap_map.rankings_from_pairs(suite / "prmac" / "co" / f"pairs-{scene}.txt", gt.names)
    pairs = [(q, d) for q, ds in ranked.items() for d in ds[:shortlist]]
    database = work / f"{scene}.db"
    if not database.exists():
        shutil.copyfile(suite / "work" / f"sift-{scene}" / "database.db", database)
    options = VerifyOptions(shortlist=shortlist, num_features=features, score="inliers")
    scores = verify_pairs(database, pairs, options, work_database=work / f"{scene}-verify-{features}.db")
    key = lambda a, b: (a, b) if a < b else (b, a)  # noqa: E731
    pos = np.array([scores[key(q, d)] for q, d in pairs if d in gt.positives[q]])
    neg = np.array([scores[key(q, d)] for q, d in pairs if d not in gt.positives[q]])
    median = lambda x: float(np.median(x[x > 0])) if (x > 0).any() else 0.0  # noqa: E731
    return {
        "positives": len(pos),
        "positives_failing": float((pos == 0).mean()),
        "positive_median": median(pos),
        "negatives": len(neg),
        "negatives_passing": float((neg > 0).mean()),
        "negative_median": median(neg),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("suite", type=Path, help="an overlap_suite.py --out folder")
    p.add_argument("--labels-root", type=Path, required=True)
    p.add_argument("--scenes", nargs="+", required=True)
    p.add_argument("--features", type=int, nargs="+", default=[1024, 2048])
    p.add_argument("--shortlist", type=int, default=30)
    args = p.parse_args(argv)
    lines = [
        "| scene | F | positives | positives failing | median inliers (pos.) | negatives | negatives passing "
        "| median inliers (neg.) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for scene in args.scenes:
            for features in args.features:
                r = pass_rates(args.suite, args.labels_root, scene, features, args.shortlist, Path(tmp))
                lines.append(
                    f"| {scene} | {features} | {r['positives']} | {r['positives_failing']:.1%} | "
                    f"{r['positive_median']:.0f} | {r['negatives']} | {r['negatives_passing']:.1%} | "
                    f"{r['negative_median']:.0f} |"
                )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
