"""Markdown tables from whatever `benchmarks/reconstruct_scenes.py` has finished (reads stats.json files).

Usage: python benchmarks/summarize_reconstruct.py [outputs/bench_reconstruct]
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reconstruct_scenes import markdown  # noqa: E402


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/bench_reconstruct")
    records = []
    for stats in sorted(root.glob("*/*/stats.json")):
        timing = stats.parent.parent / "base" / "timing.json"
        shared = json.loads(timing.read_text())["features_s"] if timing.exists() else 0.0
        record = {"scene": stats.parts[-3], "features_shared_s": shared, **json.loads(stats.read_text())}
        if stats.parent.name != record.get("method"):  # a kept earlier run, e.g. retrieval_512px
            record["method"] = stats.parent.name
        records.append(record)
    print(markdown(records))


if __name__ == "__main__":
    main()
