"""Markdown table of benchmarks/choose_defaults.py results (JSON in, Markdown out).

Usage: python benchmarks/defaults_table.py [outputs/choose_defaults.json]
"""

import json
import sys
from pathlib import Path


def main():
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/choose_defaults.json")
    rows = json.loads(path.read_text())
    print(
        "| resize | pooling | re-rank | whitening | QE | mAP@10 CT≥0.05 | AP@10 CT≥0.05 | mAP@10 CT≥0.2 "
        "| AP@10 CT≥0.2 | pooled mAP@10 CT≥0.2 | img/s |"
    )
    print("|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        m = r["mean_per_scene"]
        pooled = r["pooled"]["ct>=0.2"]["mAP@10"] if r["pooled"] else float("nan")
        print(
            f"| {r['resize']} | {r['pooling']} | {r['rerank']} | {r['whitening']} | {r['qe']} "
            f"| {m['ct>=0.05']['mAP@10']:.3f} | {m['ct>=0.05']['AP@10']:.3f} | {m['ct>=0.2']['mAP@10']:.3f} "
            f"| {m['ct>=0.2']['AP@10']:.3f} | {pooled:.3f} | {r['img_per_s']} |"
        )


if __name__ == "__main__":
    main()
