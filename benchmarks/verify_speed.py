"""Speed and memory of verified pairs (RESULTS.md §11), every figure from one run on one machine.

    python benchmarks/verify_speed.py ../shared/data/scenes/mary_rose/images --out outputs/verify_speed/mary_rose \
        --tree outputs/trees/tree-without-mary_rose.bin

Each stage runs in its own process (so its peak RSS is its own) and reports wall seconds:
1. `sift`: COLMAP SIFT extraction of the images at `reconstruct`'s defaults (8,192 features, 1,600 px), the
   database every later stage reads;
2. `pairs`: the whole `mirror_sfm pairs IMAGES --database DB` (CNN description from scratch + verification of
   the default shortlist with the default 2,048 features) — the target is ≤ 0.5× `sift`;
3. `grid`: verification alone (CNN descriptors cached; the working database made from scratch) for each
   shortlist N and feature count F;
4. `match-full`: matching twice (verify the shortlist at F, then the K kept pairs at all features, as
   `reconstruct` does) against once (the whole shortlist at all features);
5. `vocabtree-sv`: COLMAP's vocab tree retrieval + spatial verification of its top 100
   (`num_images_after_verification`) on the same database, with all features (COLMAP's default, the setting
   whose quality RESULTS §7 reports) and with the first F — the target is `pairs` ≤ 0.2× of it.
Writes OUT/verify_speed.json and OUT/verify_speed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def stage_sift(a: dict) -> dict:
    from mirror_sfm.colmap import ReconstructionOptions, extract_sift
    from mirror_sfm.images import list_images

    names = list_images(a["images"])
    t0 = time.perf_counter()
    extract_sift(Path(a["database"]), Path(a["images"]), names, ReconstructionOptions())
    return {"seconds": time.perf_counter() - t0, "images": len(names)}


def stage_pairs(a: dict) -> dict:
    from mirror_sfm.pairs import PairsOptions, generate_pairs
    from mirror_sfm.verify import VerifyOptions

    out = Path(a["work"]) / "pairs" / "pairs.txt"
    shutil.rmtree(out.parent, ignore_errors=True)
    options = PairsOptions(verify=VerifyOptions(shortlist=a["shortlist"], num_features=a["features"]))
    t0 = time.perf_counter()
    pairs = generate_pairs(a["images"], out, num_matched=a["k"], options=options, database=a["database"])
    return {"seconds": time.perf_counter() - t0, "pairs": len(pairs)}


def _candidates(a: dict, depth: int):
    from dataclasses import replace

    from mirror_sfm.extract import extract
    from mirror_sfm.features_io import read_descriptors
    from mirror_sfm.pairs import PairsOptions, retrieval_pairs

    options = PairsOptions()
    feats = Path(a["work"]) / "global-feats.h5"
    extract(a["images"], feats, options.extraction)
    names, glob, regional = read_descriptors(feats, regional=True)
    retrieval = replace(options.retrieval, num_matched=depth, shortlist=max(100, depth))
    return names, retrieval_pairs(names, glob, regional, replace(options, retrieval=retrieval))[0]


def stage_grid(a: dict) -> dict:
    from mirror_sfm.verify import VerifyOptions, verify_pairs

    names, candidates = _candidates(a, a["shortlist"])
    t0 = time.perf_counter()
    work = Path(a["work"]) / f"grid-{a['shortlist']}x{a['features']}.db"
    work.unlink(missing_ok=True)
    options = VerifyOptions(shortlist=a["shortlist"], num_features=a["features"])
    scores = verify_pairs(a["database"], candidates, options, work_database=work)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "per_image_s": seconds / len(names),
        "unique_pairs": len(scores),
        "per_pair_ms": 1000 * seconds / max(1, len(scores)),
        "passed": sum(1 for v in scores.values() if v),
    }


def stage_vocabtree_sv(a: dict) -> dict:
    import pycolmap

    pairing = pycolmap.VocabTreePairingOptions()
    pairing.vocab_tree_path = str(a["tree"])
    pairing.num_images = 100
    pairing.num_images_after_verification = a["k"] + 1
    pairing.max_num_features = a["sv_features"]
    t0 = time.perf_counter()
    with pycolmap.Database.open(str(a["database"])) as db:
        n = len(db.read_all_images())
        pairs = pycolmap.VocabTreePairGenerator(pairing, db).all_pairs()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "per_image_s": seconds / n, "pairs": len(pairs)}


def stage_match_full(a: dict) -> dict:
    """Matching twice or once: verify the shortlist at F, then match the K kept pairs at all features (what
    `reconstruct` does), against matching the whole shortlist at all features (verification that is the matching)."""
    from mirror_sfm.pairs_io import read_pairs
    from mirror_sfm.verify import VerifyOptions, verify_pairs

    names, candidates = _candidates(a, a["shortlist"])
    kept = read_pairs(Path(a["work"]) / "pairs" / "pairs.txt")
    every = 1 << 20  # more than any image's features: the working database holds them all
    result = {}
    for label, pairs, features in (
        ("shortlist_at_f", candidates, a["features"]),
        ("kept_at_all", kept, every),
        ("shortlist_at_all", candidates, every),
    ):
        work = Path(a["work"]) / f"match-full-{label}.db"
        work.unlink(missing_ok=True)
        t0 = time.perf_counter()
        scores = verify_pairs(
            a["database"], pairs, VerifyOptions(shortlist=a["shortlist"], num_features=features), work_database=work
        )
        result[label] = {"seconds": time.perf_counter() - t0, "unique_pairs": len(scores)}
        work.unlink(missing_ok=True)
    return result


STAGES = {
    "sift": stage_sift,
    "pairs": stage_pairs,
    "grid": stage_grid,
    "vocabtree-sv": stage_vocabtree_sv,
    "match-full": stage_match_full,
}


def run_stage(name: str, **kwargs) -> dict:
    """Run one stage in a fresh process; its result plus the process's peak RSS."""
    proc = subprocess.run(
        [sys.executable, __file__, "--stage", name, json.dumps(kwargs, default=str)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"stage {name} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{name} {kwargs.get('shortlist', '')} {kwargs.get('features', '')}: {result}", file=sys.stderr)
    return result


def markdown(r: dict) -> str:
    s, p, v = r["sift"]["seconds"], r["pairs"]["seconds"], r["vocabtree_sv"]["seconds"]
    vf = r["vocabtree_sv_f"]["seconds"]
    lines = [
        f"Scene: {r['images']} ({r['num_images']} images). Machine: {r['machine']}.",
        "",
        "| stage | seconds | per image (s) | peak RSS (MB) | ratio |",
        "|---|---:|---:|---:|---:|",
        f"| COLMAP SIFT (8,192 features, 1,600 px) | {s:.1f} | {s / r['num_images']:.3f} | "
        f"{r['sift']['peak_rss_mb']:.0f} | 1 |",
        f"| `pairs --database` (CNN + verify N={r['shortlist']}, F={r['features']}) | {p:.1f} | "
        f"{p / r['num_images']:.3f} | {r['pairs']['peak_rss_mb']:.0f} | **{p / s:.2f}× SIFT** |",
        f"| vocab tree + spatial verification (top 100, all features: COLMAP's default) | {v:.1f} | "
        f"{v / r['num_images']:.3f} | {r['vocabtree_sv']['peak_rss_mb']:.0f} | pairs = **{p / v:.2f}×** |",
        f"| vocab tree + spatial verification (top 100, F={r['features']}) | {vf:.1f} | "
        f"{vf / r['num_images']:.3f} | {r['vocabtree_sv_f']['peak_rss_mb']:.0f} | pairs = **{p / vf:.2f}×** |",
        "",
    ]
    if len(r.get("repeats", [])) > 1:
        lines += [
            "SIFT and `pairs --database` run alternately (the table shows the run of median ratio):",
            "",
            "| run | SIFT (s) | pairs (s) | ratio |",
            "|---:|---:|---:|---:|",
        ]
        for i, rep in enumerate(r["repeats"]):
            lines.append(
                f"| {i + 1} | {rep['sift']['seconds']:.1f} | {rep['pairs']['seconds']:.1f} | {rep['ratio']:.2f}× |"
            )
        lines.append("")
    if "grid" in r:
        lines += [
            "Verification alone (CNN descriptors cached), seconds per image / ms per unique pair / peak RSS MB:",
            "",
            "| N \\ F | " + " | ".join(str(f) for f in r["grid_features"]) + " |",
            "|---|" + "---:|" * len(r["grid_features"]),
        ]
    for n in r["grid_shortlists"] if "grid" in r else []:
        cells = [r["grid"][f"{n}x{f}"] for f in r["grid_features"]]
        lines.append(
            f"| {n} | "
            + " | ".join(f"{c['per_image_s']:.3f} / {c['per_pair_ms']:.1f} / {c['peak_rss_mb']:.0f}" for c in cells)
            + " |"
        )
    m = r.get("match_full")
    if m:
        twice = m["shortlist_at_f"]["seconds"] + m["kept_at_all"]["seconds"]
        once = m["shortlist_at_all"]["seconds"]
        lines += [
            "",
            f"Matching twice or once (one process, N={r['shortlist']}, K={r['k']}):",
            "",
            "| step | unique pairs | seconds |",
            "|---|---:|---:|",
            f"| verify the shortlist at F={r['features']} | {m['shortlist_at_f']['unique_pairs']} | "
            f"{m['shortlist_at_f']['seconds']:.1f} |",
            f"| match + verify the K kept pairs at all features (reconstruct) | "
            f"{m['kept_at_all']['unique_pairs']} | {m['kept_at_all']['seconds']:.1f} |",
            f"| **twice: both** | | **{twice:.1f}** |",
            f"| once: the whole shortlist at all features | {m['shortlist_at_all']['unique_pairs']} | "
            f"**{once:.1f}** ({once / twice:.2f}× twice) |",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--stage":
        result = STAGES[argv[1]](json.loads(argv[2]))
        result["peak_rss_mb"] = _peak_rss_mb()
        print(json.dumps(result))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("images", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tree", type=Path, required=True, help="vocab tree made without this scene")
    p.add_argument("-k", type=int, default=20)
    p.add_argument("--shortlist", type=int, default=30)
    p.add_argument("--features", type=int, default=2048)
    p.add_argument("--grid-shortlists", type=int, nargs="+", default=[20, 30, 50])
    p.add_argument("--grid-features", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run SIFT and `pairs --database` alternately this many times (a fresh database each time) and report "
        "each run's ratio and the median: on a shared machine the ratio of neighbouring runs is what holds",
    )
    p.add_argument(
        "--only-speed",
        action="store_true",
        help="the targets only: SIFT / pairs (--repeats) and the vocab tree + spatial verification, no grid",
    )
    p.add_argument(
        "--only-match-full",
        action="store_true",
        help="run only the match-twice-or-once stage on OUT's database and pairs from an earlier run",
    )
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    database = args.out / "database.db"
    common = {"images": str(args.images), "database": str(database), "work": str(args.out), "k": args.k}
    if args.only_match_full:
        r = json.loads((args.out / "verify_speed.json").read_text())
        r["match_full"] = run_stage("match-full", **common, shortlist=args.shortlist, features=args.features)
        return _write(args.out, r)
    if database.exists():
        database.unlink()
    r = {
        "images": str(args.images),
        "shortlist": args.shortlist,
        "features": args.features,
        "k": args.k,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU only",
        "grid_shortlists": args.grid_shortlists,
        "grid_features": args.grid_features,
    }
    r["repeats"] = []
    for rep in range(args.repeats):
        if rep:  # a fresh database each time, so each SIFT run extracts everything
            database.unlink()
        sift = run_stage("sift", **common)
        pairs = run_stage("pairs", **common, shortlist=args.shortlist, features=args.features)
        r["repeats"].append({"sift": sift, "pairs": pairs, "ratio": pairs["seconds"] / sift["seconds"]})
    median = sorted(r["repeats"], key=lambda x: x["ratio"])[(len(r["repeats"]) - 1) // 2]
    r["sift"], r["pairs"] = median["sift"], median["pairs"]  # the run with the median ratio
    r["num_images"] = r["sift"]["images"]
    r["vocabtree_sv"] = run_stage("vocabtree-sv", **common, tree=str(args.tree), sv_features=-1)
    r["vocabtree_sv_f"] = run_stage("vocabtree-sv", **common, tree=str(args.tree), sv_features=args.features)
    if args.only_speed:
        return _write(args.out, r)
    r["grid"] = {
        f"{n}x{f}": run_stage("grid", **common, shortlist=n, features=f)
        for n in args.grid_shortlists
        for f in args.grid_features
    }
    r["match_full"] = run_stage("match-full", **common, shortlist=args.shortlist, features=args.features)
    return _write(args.out, r)


def _write(out: Path, r: dict) -> int:
    r.setdefault("k", 20)
    (out / "verify_speed.json").write_text(json.dumps(r, indent=1) + "\n")
    (out / "verify_speed.md").write_text(markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
