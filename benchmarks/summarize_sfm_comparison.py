"""One Markdown table across scenes from `benchmarks/sfm_comparison.py` outputs, as ratios against exhaustive.

    python benchmarks/summarize_sfm_comparison.py outputs/sfm_comparison/*/

Each OUT_DIR holds results.json (one record per method). Per scene and method: registered / images (largest
model), images registered in any model (COLMAP's models may share images), number of models, pairs to match,
verified pairs, points (largest model) and total time (pairs + matching + mapping; SIFT is shared and not
counted), with pairs, points and time also as a fraction of the same scene's exhaustive row when there is one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sfm_comparison import method_slug  # noqa: E402

COLUMNS = (
    "scene | method | registered / images | in any model | models | pairs | verified | points | total (s) "
    "| pairs vs exh. | points vs exh. | time vs exh."
)


def any_model(out_dir: Path, record: dict) -> int | str:
    """The record's registered_any_model; for records made before it existed, read from the saved models."""
    if "registered_any_model" in record:
        return record["registered_any_model"]
    import pycolmap

    from mirror_sfm.colmap import registered_any_model

    folders = sorted((out_dir / "methods" / method_slug(record["method"]) / "sparse").glob("[0-9]*"))
    return registered_any_model(pycolmap.Reconstruction(str(f)) for f in folders) if folders else "–"


def seconds(record: dict) -> float:
    """Pairs + matching + mapping (sfm_comparison's method_s; older records: the run's total)."""
    return record.get("method_s", record["time_s"]["total"])


def rows(out_dir: Path) -> list[str]:
    records = json.loads((out_dir / "results.json").read_text())
    base = next((r for r in records if r["method"] == "exhaustive" and "error" not in r), None)

    def ratio(r: dict, key: str) -> str:
        if base is None:
            return "–"
        a, b = (seconds(r), seconds(base)) if key == "time" else (r[key], base[key])
        return f"{a / b:.2f}" if b else "–"

    return [
        f"| {out_dir.name} | {r['method']} | failed: {r['error']} |" + " |" * 9
        if "error" in r
        else f"| {out_dir.name} | {r['method']} | {r['registered']} / {r['images']} | {any_model(out_dir, r)} "
        f"| {r['num_models']} | {r['pairs_to_match']} "
        f"| {r['verified_pairs']} | {r['sparse_points']} | {seconds(r):.1f} "
        f"| {ratio(r, 'pairs_to_match')} | {ratio(r, 'sparse_points')} | {ratio(r, 'time')} |"
        for r in records
    ]


def markdown(out_dirs: list[Path]) -> str:
    lines = [f"| {COLUMNS} |", "|---|---|" + "---:|" * 10]
    for d in out_dirs:
        lines += rows(d)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dirs", type=Path, nargs="+", help="sfm_comparison --out folders")
    args = p.parse_args(argv)
    found = [d for d in args.out_dirs if (d / "results.json").is_file()]
    for d in args.out_dirs:
        if d not in found:
            print(f"skipped {d}: no results.json", file=sys.stderr)
    if not found:
        print("error: no results.json in any folder given", file=sys.stderr)
        return 2
    print(markdown(found), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
