"""How much of verified pairs' gap is the CNN shortlist's (RESULTS.md §11): recall of the top N and the AP@10 of a
perfect re-ordering of it, beside what verification achieved, from an `overlap_suite.py` output folder.

    python benchmarks/shortlist_ceiling.py outputs/overlap_suite/batch1 --labels-root outputs/labels

For each scene and label (CO >= 0.5, symmetric CT >= 0.2): recall@N = mean over queries of the share of their
positives inside the CNN + PR-MAC top N (the `prmac` method's pair file, ranked to depth 50); oracle@N = AP@10 of
that top N with its positives moved first (the best any re-ranking of the shortlist can do); verified@N = the suite's
AP@10. Writes OUT/shortlist_ceiling.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import overlap_map  # noqa: E402

from mirror_sfm.evaluate import mean_average_precision  # noqa: E402

DEPTHS = (20, 30, 50)


def ceiling(ranked: dict[str, list[str]], positives: dict[str, set[str]], depth: int) -> tuple[float, float]:
    """(mean recall of the top `depth`, AP@10 of the top `depth` re-ordered positives first)."""
    queries = [q for q, pos in positives.items() if pos and q in ranked]
    recall = sum(len(set(ranked[q][:depth]) & positives[q]) / len(positives[q]) for q in queries) / len(queries)
    oracle = {q: sorted(ranked[q][:depth], key=lambda d: d not in positives[q]) for q in queries}
    return recall, mean_average_precision(oracle, positives, 10, queries).map_at_k


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("suite", type=Path, help="an overlap_suite.py --out folder")
    p.add_argument("--labels-root", type=Path, required=True, help="the labelled scene folders (ROOT/<scene>)")
    p.add_argument("--verified", default="verified@{n}", help="the suite's verified method for shortlist n")
    args = p.parse_args(argv)
    lines = []
    for label, options in (("co", overlap_map.LabelOptions()), ("ct", overlap_map.LabelOptions(label="ct"))):
        name = "CO ≥ 0.5" if label == "co" else "symmetric CT ≥ 0.2"
        lines += [
            f"AP@10 and recall, positives {name}:",
            "",
            "| scene | " + " | ".join(f"recall@{n} | oracle@{n} | verified@{n}" for n in DEPTHS) + " |",
            "|---|" + "---:|" * (3 * len(DEPTHS)),
        ]
        for pairs in sorted((args.suite / "prmac" / label).glob("pairs-*.txt")):
            scene = pairs.stem.removeprefix("pairs-")
            gt = overlap_map.load_gt(args.labels_root / scene, options)
            ranked = overlap_map.rankings_from_pairs(pairs, gt.names)
            cells = []
            for n in DEPTHS:
                recall, oracle = ceiling(ranked, gt.positives, n)
                path = args.suite / args.verified.format(n=n) / label / "overlap_map.json"
                result = json.loads(path.read_text()) if path.is_file() else {}
                verified = f"{result['scenes'][scene]['map']['10']['ap_at_k']:.3f}" if result else "–"
                cells.append(f"{recall:.3f} | {oracle:.3f} | {verified}")
            lines.append(f"| {scene} | " + " | ".join(cells) + " |")
        lines.append("")
    text = "\n".join(lines)
    (args.suite / "shortlist_ceiling.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
