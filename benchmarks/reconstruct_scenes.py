"""Compare pair methods by full COLMAP reconstructions: CNN retrieval vs exhaustive vs vocab tree.

For each scene folder under --root (each holds `images/`), SIFT is extracted once into a base
database, which every method starts from (a copy), so time differences are pair generation +
matching + mapping alone; the SIFT time is reported separately. The vocabulary tree for a scene
is trained on the OTHER scenes' SIFT (never on the evaluated scene) and cached under --out.

Writes <out>/results.json (one record per scene and method) and <out>/results.md. Resumes:
a scene/method whose stats.json exists is not run again.

    python benchmarks/reconstruct_scenes.py --scenes mary_rose alexander
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mirror_sfm.colmap import ReconstructionOptions, list_usable_images, prepare_database, reconstruct  # noqa: E402
from mirror_sfm.errors import MirrorError  # noqa: E402
from mirror_sfm.io_utils import write_text_atomic  # noqa: E402
from mirror_sfm.vocabtree import build_vocab_tree  # noqa: E402

logger = logging.getLogger("mirror_sfm.bench")

METHODS = ("retrieval", "exhaustive", "vocabtree")


def find_scenes(root: Path) -> dict[str, Path]:
    """Scene name -> its images folder, for every folder under `root` that has `images/`."""
    if not root.is_dir():
        raise MirrorError(f"scene root not found: {root}")
    scenes = {d.name: d / "images" for d in sorted(root.iterdir()) if (d / "images").is_dir()}
    if not scenes:
        raise MirrorError(f"no scene with an images/ folder under {root}")
    return scenes


def base_options(args: argparse.Namespace, **kw) -> ReconstructionOptions:
    """Reconstruction options shared by all methods (SIFT, device, threads, mapper)."""
    return ReconstructionOptions(
        num_matched=args.num_matched,
        max_image_size=args.max_image_size,
        max_num_features=args.max_num_features,
        device=args.device,
        num_threads=args.num_threads,
        mapper=args.mapper,
        **kw,
    )


def base_database(scene: str, image_dir: Path, out: Path, args: argparse.Namespace) -> tuple[Path, float]:
    """Extract SIFT for a scene once (resumable); return (database, SIFT seconds of the first extraction)."""
    base = out / scene / "base"
    timing_path = base / "timing.json"
    if timing_path.exists() and (base / "database.db").exists():
        timing = json.loads(timing_path.read_text())
        return base / "database.db", timing["features_s"]
    _, names, skipped = list_usable_images(image_dir)
    base.mkdir(parents=True, exist_ok=True)
    logger.info("[%s] SIFT for %d images", scene, len(names))
    database, seconds, _ = prepare_database(base, image_dir, names, base_options(args))
    timing = {"features_s": round(seconds, 3), "images": len(names) + len(skipped), "skipped": skipped}
    write_text_atomic(timing_path, json.dumps(timing, indent=2) + "\n")
    return database, timing["features_s"]


def vocab_tree_for(scene: str, scenes: dict[str, Path], out: Path, args: argparse.Namespace) -> tuple[Path, float]:
    """A tree trained on every scene but `scene` (cached); return (path, build seconds)."""
    others = [s for s in scenes if s != scene]
    if not others:
        raise MirrorError(f"vocab tree for {scene} needs at least one other scene under {args.root}")
    path = out / "vocab" / f"tree-{args.vocab_words}-without-{scene}.bin"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return path, json.loads(meta.read_text())["build_s"]
    databases = [base_database(s, scenes[s], out, args)[0] for s in others]
    t0 = time.perf_counter()
    build_vocab_tree(
        None,
        path,
        num_words=args.vocab_words,
        database=databases,
        max_descriptors=args.vocab_max_descriptors,
        num_threads=args.num_threads,
    )
    build_s = round(time.perf_counter() - t0, 3)
    write_text_atomic(
        meta, json.dumps({"trained_on": others, "num_words": args.vocab_words, "build_s": build_s}, indent=2) + "\n"
    )
    return path, build_s


def run_method(scene: str, method: str, scenes: dict[str, Path], out: Path, args: argparse.Namespace) -> dict:
    """Reconstruct one scene with one pair method (or load its earlier stats) and return the record."""
    run_dir = out / scene / method
    record = {"scene": scene}
    database, record["features_shared_s"] = base_database(scene, scenes[scene], out, args)
    if method == "vocabtree":
        tree, record["vocab_tree_build_s"] = vocab_tree_for(scene, scenes, out, args)
    else:
        tree = None
    if (run_dir / "stats.json").exists():
        logger.info("[%s] %s: done before, loading stats", scene, method)
        return {**record, **json.loads((run_dir / "stats.json").read_text())}
    opts = base_options(args, pairs=method, vocab_tree=tree, database_template=database)
    logger.info("[%s] %s", scene, method)
    return {**record, **reconstruct(scenes[scene], run_dir, opts)}


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "–"


def _pipeline_s(rec: dict) -> float:
    """Time that depends on the pair method: pair generation + matching + mapping."""
    t = rec["time_s"]
    return t["pairs"] + t["matching"] + t["mapping"]


def markdown(records: list[dict]) -> str:
    """A table per scene: pairs, registered images, points, time and ratios vs exhaustive."""
    lines = [
        "# Reconstruction by pair method",
        "",
        "Time = pair generation + matching + mapping (SIFT is shared and listed per scene).",
        "",
    ]
    for scene in sorted({r["scene"] for r in records}):
        rows = [r for r in records if r["scene"] == scene]
        exh = next((r for r in rows if r.get("method") == "exhaustive" and "error" not in r), None)
        lines += [
            f"## {scene} (SIFT {rows[0].get('features_shared_s', 0):.1f} s)",
            "",
            "| method | pairs to match | verified pairs | registered / images | models | points | observations "
            "| track length | reproj. error (px) | time (s) | pairs vs exh. | time vs exh. |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['method']} | failed: {r['error']} | | | | | | | | | | |")
                continue
            t = _pipeline_s(r)
            lines.append(
                f"| {r['method']} | {r['pairs_to_match']} | {r['verified_pairs']} | {r['registered']} / {r['images']} "
                f"| {r['num_models']} | {r['sparse_points']} | {r['observations']} | {r['mean_track_length']:.2f} "
                f"| {r['mean_reprojection_error']:.3f} | {t:.1f} "
                f"| {_ratio(r['pairs_to_match'], exh and exh['pairs_to_match'])} "
                f"| {_ratio(t, exh and _pipeline_s(exh))} |"
            )
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--root",
        type=Path,
        default=REPO.parent / "shared" / "data" / "scenes",
        help="folder of scenes, each with images/ (default: ../shared/data/scenes)",
    )
    p.add_argument("--out", type=Path, default=Path("outputs/bench_reconstruct"))
    p.add_argument("--scenes", nargs="+", metavar="NAME", help="scene names to evaluate (default: all)")
    p.add_argument(
        "--exclude",
        nargs="+",
        default=[],
        metavar="NAME",
        help="scenes to leave out entirely, also from vocab-tree training (e.g. a subset of another scene)",
    )
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--num-matched", type=int, default=20, help="K for retrieval and vocab tree")
    p.add_argument("--vocab-words", type=int, default=4096)
    p.add_argument(
        "--vocab-max-descriptors", type=int, default=None, help="k-means training sample (default 64 per word)"
    )
    p.add_argument("--max-image-size", type=int, default=1600)
    p.add_argument("--max-num-features", type=int, default=8192)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--num-threads", type=int, default=-1)
    p.add_argument("--mapper", default="incremental", choices=["incremental", "global"])
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        scenes = {k: v for k, v in find_scenes(args.root).items() if k not in args.exclude}
        selected = args.scenes or list(scenes)
        unknown = [s for s in selected if s not in scenes]
        if unknown:
            raise MirrorError(f"unknown scene(s) {', '.join(unknown)} under {args.root} (have: {', '.join(scenes)})")
    except MirrorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    records = []
    for scene in selected:
        for method in args.methods:
            try:
                records.append(run_method(scene, method, scenes, args.out, args))
            except MirrorError as exc:
                logger.error("[%s] %s failed: %s", scene, method, exc)
                records.append({"scene": scene, "method": method, "error": str(exc)})
    write_text_atomic(args.out / "results.json", json.dumps(records, indent=2) + "\n")
    write_text_atomic(args.out / "results.md", markdown(records))
    print(markdown(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
