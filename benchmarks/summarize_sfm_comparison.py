"""One Markdown table across scenes from `benchmarks/sfm_comparison.py` outputs, as ratios against exhaustive.

    python benchmarks/summarize_sfm_comparison.py outputs/sfm_comparison/*/

Each OUT_DIR holds results.json (one record per method). Per scene and method: registered / images (largest
model), images registered in any model (COLMAP's models may share images), number of models, pairs to match,
verified pairs, points (largest model) and total time (pairs + matching + mapping; SIFT is shared and not
counted), with pairs, points and time also as a fraction of the same scene's exhaustive row when there is one.

Scenes run with `--repeats R` get a second table: each method's largest model over the mapper seeds, their mean,
and that mean as a fraction of exhaustive's mean, with a 95 % bootstrap interval (the seeds of each method resampled
independently): how the issue's "≥ 99 % of what exhaustive registers" reads on a scene whose mapping varies by seed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

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


def rows(out_dir: Path, records: list[dict]) -> list[str]:
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


def ratio_interval(values: list[int], base: list[int], samples: int = 10_000, seed: int = 0) -> tuple[float, ...]:
    """mean(values) / mean(base) and its 95 % bootstrap interval (each list resampled on its own)."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(values, float), np.asarray(base, float)
    ma = a[rng.integers(0, len(a), (samples, len(a)))].mean(axis=1)
    mb = b[rng.integers(0, len(b), (samples, len(b)))].mean(axis=1)
    lo, hi = np.percentile(ma / mb, [2.5, 97.5])
    return float(a.mean() / b.mean()), float(lo), float(hi)


def seed_rows(out_dir: Path, records: list[dict]) -> list[str]:
    """One row per method mapped with several seeds: largest model per seed, mean, mean vs exhaustive's mean."""
    records = [r for r in records if r.get("repeats")]
    base = next((r for r in records if r["method"] == "exhaustive"), None)
    base_values = [s["registered"] for s in base["repeats"]] if base else None
    out = []
    for r in records:
        values = [s["registered"] for s in r["repeats"]]
        versus = "–"
        if base_values and r is not base:
            mean, lo, hi = ratio_interval(values, base_values)
            versus = f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"
        out.append(
            f"| {out_dir.name} | {r['method']} | {len(values)} | {' / '.join(map(str, values))} "
            f"| {np.mean(values):.1f} | {min(values)}–{max(values)} | {versus} |"
        )
    return out


def markdown(out_dirs: list[Path]) -> str:
    lines = [f"| {COLUMNS} |", "|---|---|" + "---:|" * 10]
    records = {d: json.loads((d / "results.json").read_text()) for d in out_dirs}
    for d in out_dirs:
        lines += rows(d, records[d])
    seeds = [row for d in out_dirs for row in seed_rows(d, records[d])]
    if seeds:
        lines += [
            "",
            "| scene | method | seeds | largest model per seed | mean | range | mean vs exhaustive's [95 % CI] |",
            "|---|---|---:|---|---:|---|---|",
            *seeds,
        ]
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
