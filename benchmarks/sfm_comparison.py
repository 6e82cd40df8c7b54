"""Compare pair methods by pycolmap reconstructions of one scene: MIRorR's 1DSfM table (paper, Table 3).

    python benchmarks/sfm_comparison.py DATASET_DIR --out OUT_DIR \
        --methods exhaustive vocabtree vocabtree-sv retrieval@20 retrieval-imagenet@20 \
                  retrieval@match-vocabtree sequential --vocab-images OTHER_IMAGES...

DATASET_DIR is a 1DSfM scene (an `images/` folder, optional `list.txt` naming the images to use, first
field of each line, relative to DATASET_DIR) or a plain folder of images. SIFT is extracted once
(OUT_DIR/features) and every method starts from a copy of that database, so time differences are pair
generation, matching and mapping alone. Per method, the columns of the paper's table: images, registered,
pairs to match, sparse points, observations, mean track length, mean reprojection error, plus the time
of each stage -> OUT_DIR/results.json (one record per method), results.md and results.png.

Methods (K defaults to --num-matched):
  exhaustive                  every pair
  sequential[@W]              each image with the next W in name order (COLMAP's sequential pairing)
  vocabtree[@K]               local vocabulary tree (--vocab-tree FILE, or built from --vocab-images /
                              --vocab-databases, which must not hold the evaluated scene)
  vocabtree-sv[@K]            vocab tree, top --sv-candidates (100) spatially verified, best K kept
  retrieval[@K]               mirror_sfm pairs with --weights, CNN (+ PR-MAC) order (--verify none);
                              retrieval-WEIGHTS[@K] picks the weights ('imagenet', 'default' or a checkpoint
                              path), e.g. retrieval-imagenet@20
  retrieval-verified[@K]      mirror_sfm reconstruct's default: each image's CNN top --verify-shortlist (50, as
                              reconstruct; runs before RESULTS §11's sixth session used 30) re-ranked by SIFT
                              inliers (the run's own SIFT, its --verify-features largest scales), best K kept
  retrieval[-WEIGHTS]@match-M K chosen so that the pair count matches that of vocab-tree method M
                              (e.g. retrieval@match-vocabtree): the paper's "fix the number of pairs"
Resumable: a method whose record is in results.json is not run again (--force runs it again); a method stopped
midway keeps the mapping seeds it finished (each in methods/METHOD/repeat-S/row.json) and maps only the rest.
--repeats R maps each method's matches R times with mapper seeds 0..R-1 (the record keeps every run and the
spread of registered images): on scenes whose largest model varies from run to run one mapping cannot rank methods.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mirror_sfm.colmap import (  # noqa: E402
    DATABASE_NAME,
    ReconstructionOptions,
    list_usable_images,
    prepare_database,
    reconstruct,
)
from mirror_sfm.console import run_command  # noqa: E402
from mirror_sfm.errors import MirrorError  # noqa: E402
from mirror_sfm.images import IMAGE_EXTENSIONS, list_images  # noqa: E402
from mirror_sfm.io_utils import atomic_path, write_text_atomic  # noqa: E402
from mirror_sfm.verify import RECONSTRUCT_SHORTLIST  # noqa: E402

logger = logging.getLogger("mirror_sfm.bench")

KINDS = ("exhaustive", "sequential", "vocabtree", "vocabtree-sv", "retrieval", "retrieval-verified")
VOCAB_KINDS = ("vocabtree", "vocabtree-sv")
ROW_NAME = "row.json"  # one mapping seed's row, saved in its repeat-S folder


# --------------------------------------------------------------------------------------------
# Method names
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One pair method of the comparison, parsed from its name (e.g. 'retrieval-imagenet@20')."""

    name: str  # as given on the command line: the record's key
    kind: str  # one of KINDS
    k: int | None = None  # K (retrieval, vocab tree) or W (sequential)
    weights: str | None = None  # retrieval weights; None = --weights
    match: str | None = None  # retrieval@match-M: the vocab-tree method whose pair count to match

    @property
    def slug(self) -> str:
        """Folder name for this method's run."""
        return method_slug(self.name)


def method_slug(name: str) -> str:
    """OUT_DIR/methods/<slug>: the method's name with characters unsafe in a folder name replaced."""
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", name).strip("_") or "method"


def parse_method(name: str, default_k: int, default_window: int) -> Method:
    """Parse a method name; MirrorError naming the method when it is not one of the forms in the docstring."""
    base, _, arg = name.partition("@")
    weights = None
    if base.startswith("retrieval-") and base != "retrieval-verified":
        base, weights = "retrieval", base[len("retrieval-") :]
        if not weights:
            raise MirrorError(f"method {name!r}: no weights after 'retrieval-'")
    if base not in KINDS:
        raise MirrorError(
            f"unknown method {name!r}: use {', '.join(KINDS)} (with @K), retrieval-WEIGHTS@K "
            f"or retrieval@match-vocabtree"
        )
    if base == "exhaustive":
        if arg:
            raise MirrorError(f"method {name!r}: exhaustive takes no @ argument")
        return Method(name, base)
    if arg.startswith("match-"):
        if base != "retrieval":
            raise MirrorError(f"method {name!r}: only (unverified) retrieval can match another method's pair count")
        target = parse_method(arg[len("match-") :], default_k, default_window)
        if target.kind not in VOCAB_KINDS:
            raise MirrorError(f"method {name!r}: can only match a vocab-tree method's pair count")
        return Method(name, base, None, weights, target.name)
    if arg:
        try:
            k = int(arg)
        except ValueError:
            raise MirrorError(f"method {name!r}: expected an integer after '@', got {arg!r}") from None
        if k < 1:
            raise MirrorError(f"method {name!r}: K must be >= 1")
    else:
        k = default_window if base == "sequential" else default_k
    return Method(name, base, k, weights)


def canonical(method: Method) -> tuple:
    """Two names for the same run (e.g. 'vocabtree' and 'vocabtree@20' at K=20) compare equal."""
    return method.kind, method.k, method.weights, method.match


# --------------------------------------------------------------------------------------------
# Dataset and shared inputs
# --------------------------------------------------------------------------------------------


def dataset_images(dataset: Path) -> tuple[Path, list[str] | None]:
    """(image folder, names or None = all) of a 1DSfM scene (images/ + optional list.txt) or a plain folder."""
    dataset = Path(dataset)
    if not dataset.is_dir():
        raise MirrorError(f"dataset folder not found: {dataset}")
    image_dir = dataset / "images" if (dataset / "images").is_dir() else dataset
    list_file = dataset / "list.txt"
    if not list_file.is_file():
        return image_dir, None
    names, missing = [], 0
    for line in list_file.read_text().splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#") or Path(fields[0]).suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        path = (dataset / fields[0]).resolve()
        try:
            name = path.relative_to(image_dir.resolve()).as_posix()
        except ValueError:
            raise MirrorError(f"{list_file}: {fields[0]} is not inside {image_dir}") from None
        if path.is_file():
            names.append(name)
        else:
            missing += 1
    if missing:
        logger.warning("%d image(s) of %s are not on disk and are left out", missing, list_file)
    if not names:
        raise MirrorError(f"{list_file} names no image that exists under {image_dir}")
    return image_dir, list(dict.fromkeys(names))


def base_options(args: argparse.Namespace, **kw) -> ReconstructionOptions:
    """Options shared by every method (SIFT, camera mode, device, threads, mapper)."""
    return ReconstructionOptions(
        max_image_size=args.max_image_size,
        max_num_features=args.max_num_features,
        camera_mode=args.camera_mode,
        device=args.device,
        num_threads=args.num_threads,
        mapper=args.mapper,
        **kw,
    )


def shared_features(
    image_dir: Path, names: list[str] | None, out: Path, args: argparse.Namespace
) -> tuple[Path, float, str | None]:
    """SIFT for the scene, once (resumable): (database, seconds of the extraction that made it, the database it was
    copied from with --features-from or None)."""
    base = out / "features"
    timing_path = base / "timing.json"
    if timing_path.exists() and (base / DATABASE_NAME).exists():
        timing = json.loads(timing_path.read_text())
        return base / DATABASE_NAME, timing["sift_s"], timing.get("from")
    _, readable, skipped = list_usable_images(image_dir, names)
    if args.features_from:  # e.g. a label's exhaustive reconstruction: same SIFT settings, extracted once
        return seed_features(Path(args.features_from), base, readable, skipped, args)
    logger.info("SIFT for %d images of %s (shared by all methods)", len(readable), image_dir)
    database, seconds, _ = prepare_database(base, image_dir, readable, base_options(args))
    write_text_atomic(
        timing_path,
        json.dumps({"sift_s": round(seconds, 3), "images": len(readable) + len(skipped), "skipped": skipped}, indent=2)
        + "\n",
    )
    return database, round(seconds, 3), None


def seed_features(
    source: Path, base: Path, readable: list[str], skipped: list[str], args: argparse.Namespace
) -> tuple[Path, float, str]:
    """The shared database from another run's (its matches dropped); its SIFT time is that run's stats.json's.
    Returns (database, that time, `source`)."""
    from mirror_sfm.colmap import FEATURES_SIDECAR, clear_matches, database_images

    run = source.parent
    sidecar = run / FEATURES_SIDECAR
    if not source.is_file() or not sidecar.is_file():
        raise MirrorError(
            f"--features-from {source}: needs a reconstruct database with its {FEATURES_SIDECAR} beside it"
        )
    want = {
        "max_image_size": args.max_image_size,
        "max_num_features": args.max_num_features,
        "camera_mode": args.camera_mode,
    }
    if json.loads(sidecar.read_text()) != want:
        raise MirrorError(
            f"--features-from {source}: made with other SIFT settings ({json.dumps(json.loads(sidecar.read_text()))})"
        )
    if set(database_images(source)) != set(readable):
        raise MirrorError(f"--features-from {source}: holds other images than the readable images of this scene")
    base.mkdir(parents=True, exist_ok=True)
    with atomic_path(base / DATABASE_NAME) as tmp:
        shutil.copyfile(source, tmp)
        clear_matches(tmp)
    shutil.copyfile(sidecar, base / FEATURES_SIDECAR)
    stats = run / "stats.json"
    sift_s = json.loads(stats.read_text())["time_s"]["features"] if stats.is_file() else 0.0
    write_text_atomic(
        base / "timing.json",
        json.dumps(
            {"sift_s": sift_s, "images": len(readable) + len(skipped), "skipped": skipped, "from": str(source)},
            indent=2,
        )
        + "\n",
    )
    return base / DATABASE_NAME, sift_s, str(source)


def _inside(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents or a in b.parents


def vocab_tree(image_dir: Path, out: Path, args: argparse.Namespace) -> tuple[Path, float]:
    """The tree file (given, or built once from images/databases outside the scene): (path, build seconds)."""
    if args.vocab_tree:
        if not args.vocab_tree.is_file():
            raise MirrorError(f"vocabulary tree not found: {args.vocab_tree}")
        return args.vocab_tree, 0.0
    sources = [Path(p) for p in (args.vocab_images or [])] + [Path(p) for p in (args.vocab_databases or [])]
    if not sources:
        raise MirrorError("vocab-tree methods need --vocab-tree FILE, --vocab-images DIR... or --vocab-databases DB...")
    for src in sources:
        if _inside(src, image_dir) or (src.suffix == ".db" and _inside(src, out)):
            raise MirrorError(f"vocab-tree training data {src} overlaps the evaluated scene {image_dir}")
    path = out / "vocab" / f"tree-{args.vocab_words}.bin"
    meta_path = path.with_suffix(".json")
    meta = {
        "num_words": args.vocab_words,
        "sources": sorted(str(s.resolve()) for s in sources),
        "max_descriptors": args.vocab_max_descriptors,
        "max_num_features": args.max_num_features,
    }
    if path.exists() and meta_path.exists():
        old = json.loads(meta_path.read_text())
        if {k: old.get(k) for k in meta} == meta:
            return path, old["build_s"]
        logger.info("vocab-tree settings changed; building %s again", path)
    from mirror_sfm.vocabtree import build_vocab_tree

    t0 = time.perf_counter()
    databases = list(args.vocab_databases or [])
    for i, folder in enumerate(args.vocab_images or []):
        _, names, _ = list_usable_images(folder)
        db, _, _ = prepare_database(out / "vocab" / f"sift-{i}", folder, names, base_options(args))
        databases.append(db)
    build_vocab_tree(
        None,
        path,
        num_words=args.vocab_words,
        database=databases,
        max_descriptors=args.vocab_max_descriptors,
        num_threads=args.num_threads,
    )
    meta["build_s"] = round(time.perf_counter() - t0, 3)
    write_text_atomic(meta_path, json.dumps(meta, indent=2) + "\n")
    return path, meta["build_s"]


# --------------------------------------------------------------------------------------------
# Retrieval K that matches a pair count
# --------------------------------------------------------------------------------------------


def pair_count_by_k(ranked: dict[str, list[str]], k_max: int) -> list[int]:
    """counts[k - 1] = distinct unordered pairs when every query keeps its top k (k = 1..k_max)."""
    seen: set[tuple[str, str]] = set()
    counts = []
    for k in range(1, k_max + 1):
        for q, neighbours in ranked.items():
            if k <= len(neighbours) and neighbours[k - 1] != q:
                a, b = q, neighbours[k - 1]
                seen.add((a, b) if a < b else (b, a))
        counts.append(len(seen))
    return counts


def closest_k(counts: list[int], target: int) -> int:
    """The K whose pair count is closest to `target` (the smaller K on a tie)."""
    return min(range(1, len(counts) + 1), key=lambda k: (abs(counts[k - 1] - target), k))


def retrieval_options(args: argparse.Namespace, weights: str | None, verified: bool = False):
    from mirror_sfm.extract import ExtractionOptions
    from mirror_sfm.pairs import PairsOptions
    from mirror_sfm.retrieval import RetrievalOptions
    from mirror_sfm.verify import VerifyOptions

    return PairsOptions(
        ExtractionOptions(resize=args.resize, weights=weights or args.weights, device=args.torch_device),
        RetrievalOptions(rerank=args.rerank, shortlist=args.shortlist),
        verify=VerifyOptions(
            method="sift" if verified else "none", shortlist=args.verify_shortlist, num_features=args.verify_features
        ),
    )


def resolved_weights(weights: str) -> str:
    """What `--weights` loads: "default" names the shipped file, or ImageNet when none ships."""
    from mirror_sfm.model import PACKAGED_WEIGHTS

    if weights != "default":
        return weights
    return f"default ({PACKAGED_WEIGHTS.name})" if PACKAGED_WEIGHTS.is_file() else "default (imagenet: none shipped)"


def k_for_pair_count(
    image_dir: Path, names: list[str], run_dir: Path, target: int, weights: str | None, args: argparse.Namespace
) -> tuple[int, int, float]:
    """Rank once at a large K and return (K, its pair count, seconds) so the count is closest to `target`."""
    from mirror_sfm.pairs import generate_pairs

    t0 = time.perf_counter()
    n = len(names)
    k_max = max(1, min(n - 1, max(args.shortlist, math.ceil(2 * target / max(n, 1)) + 5)))
    work = run_dir / "k_search"  # own descriptor cache: the method's run describes the images itself
    pairs = generate_pairs(
        image_dir,
        work / f"pairs-top{k_max}.txt",
        num_matched=k_max,
        image_names=names,
        features=work / "global-feats.h5",
        options=retrieval_options(args, weights),
    )
    ranked: dict[str, list[str]] = {}
    for q, d in pairs:
        ranked.setdefault(q, []).append(d)
    counts = pair_count_by_k(ranked, k_max)
    k = closest_k(counts, target)
    if k == k_max and counts[-1] < target:
        logger.warning("even K=%d gives only %d pairs (< %d)", k_max, counts[-1], target)
    return k, counts[k - 1], round(time.perf_counter() - t0, 3)


# --------------------------------------------------------------------------------------------
# Running one method
# --------------------------------------------------------------------------------------------


def run_method(
    method: Method,
    image_dir: Path,
    names: list[str] | None,
    out: Path,
    records: dict[str, dict],
    args: argparse.Namespace,
) -> dict:
    """Reconstruct the scene with one method from the shared SIFT database; return its record."""
    database, sift_s, sift_from = shared_features(image_dir, names, out, args)
    run_dir = out / "methods" / method.slug
    record: dict = {"method": method.name}
    opts = base_options(args, database_template=database, image_names=names)
    if method.kind == "exhaustive":
        opts = replace(opts, pairs="exhaustive")
    elif method.kind == "sequential":
        opts = replace(opts, pairs="sequential", sequential_overlap=method.k)
        record["window"] = method.k
    elif method.kind in VOCAB_KINDS:
        tree, record["vocab_tree_build_s"] = vocab_tree(image_dir, out, args)
        verify = args.sv_candidates if method.kind == "vocabtree-sv" else 0
        opts = replace(opts, pairs="vocabtree", vocab_tree=tree, num_matched=method.k, vocab_tree_verify=verify)
        record.update(vocab_tree=str(tree), vocab_tree_verify=verify)
    else:
        k = method.k
        if method.match:
            target = records.get(method.match, {})
            if "pairs_to_match" not in target:
                raise MirrorError(f"cannot match the pair count of {method.match}: it has no result")
            usable = list_usable_images(image_dir, names)[1]
            k, count, record["k_search_s"] = k_for_pair_count(
                image_dir, usable, run_dir, target["pairs_to_match"], method.weights, args
            )
            record.update(matched_method=method.match, target_pairs=target["pairs_to_match"], expected_pairs=count)
            logger.info(
                "%s: K=%d gives %d pairs (target %d, from %s)",
                method.name,
                k,
                count,
                target["pairs_to_match"],
                method.match,
            )
        verified = method.kind == "retrieval-verified"
        ropts = retrieval_options(args, method.weights, verified)
        opts = replace(opts, pairs="retrieval", num_matched=k, retrieval_kwargs={"options": ropts})
        record["weights"] = resolved_weights(ropts.extraction.weights)
        if verified:
            record.update(verify_shortlist=args.verify_shortlist, verify_features=args.verify_features)
    logger.info("running %s", method.name)
    if args.repeats > 1:
        opts = replace(opts, mapper_seed=0)
    stats = reconstruct(image_dir, run_dir, opts)
    if args.repeats > 1:
        record["repeats"] = repeat_mapping(run_dir, image_dir, opts, stats, args.repeats, keep_saved=not args.force)
        registered = [r["registered"] for r in record["repeats"]]
        record.update(
            registered_min=min(registered),
            registered_max=max(registered),
            registered_mean=round(sum(registered) / len(registered), 2),
        )
    if not args.keep_databases:
        (run_dir / DATABASE_NAME).unlink(missing_ok=True)
    t = stats["time_s"]
    method_s = round(t["pairs"] + t["matching"] + t["mapping"], 3)
    return {
        **record,
        **{k: v for k, v in stats.items() if k != "method"},
        "pair_method": stats["method"],
        "sift_shared_s": sift_s,
        "sift_from": sift_from,
        "method_s": method_s,
        "total_with_sift_s": round(method_s + sift_s, 3),
    }


def repeat_mapping(
    run_dir: Path, image_dir: Path, opts: ReconstructionOptions, first: dict, repeats: int, keep_saved: bool = True
) -> list[dict]:
    """Map the method's matches again with seeds 1..repeats-1 (the first run used seed 0); one row per run.

    Each seed's row is saved in its folder (`repeat-S/row.json`) as soon as it is mapped, so a killed run resumes:
    a saved row is kept while the matches it was mapped from (pairs matched and verified) are the same, unless
    `keep_saved` is False (--force)."""
    from mirror_sfm.colmap import model_stats, run_mapping

    keys = ("registered", "registered_any_model", "num_models", "sparse_points")
    matches = {k: first.get(k) for k in ("pairs_to_match", "verified_pairs")}
    rows = [{"seed": 0, **{k: first.get(k) for k in keys}}]
    for seed in range(1, repeats):
        seed_dir = run_dir / f"repeat-{seed}"
        saved = _saved_row(seed_dir / ROW_NAME, matches) if keep_saved else None
        if saved is not None:
            rows.append(saved)
            logger.info("repeat %d: %d registered (kept from an earlier run)", seed, saved["registered"])
            continue
        t0 = time.perf_counter()
        models = run_mapping(run_dir / DATABASE_NAME, image_dir, seed_dir, replace(opts, mapper_seed=seed))
        rows.append(
            {
                "seed": seed,
                **{k: model_stats(models).get(k) for k in keys},
                "mapping_s": round(time.perf_counter() - t0, 3),
            }
        )
        write_text_atomic(seed_dir / ROW_NAME, json.dumps({"matches": matches, "row": rows[-1]}, indent=2) + "\n")
        logger.info("repeat %d: %d registered", seed, rows[-1]["registered"])
    return rows


def _saved_row(path: Path, matches: dict) -> dict | None:
    """A seed's row saved by an earlier run from the same matches, else None (none saved, or unreadable)."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("matches") != matches or not isinstance(saved.get("row"), dict):
        return None
    return saved["row"]


def run_order(methods: list[Method], by_name: dict[str, Method]) -> list[Method]:
    """Methods in the given order, a match target before the methods that need it (added when missing)."""
    order: list[Method] = []
    for m in methods:
        if m.match and by_name[m.match] not in order:
            order.append(by_name[m.match])
        if m not in order:
            order.append(m)
    return order


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


def _fmt(value, spec: str = "") -> str:
    return "–" if value is None else format(value, spec)


def markdown(records: list[dict], title: str) -> str:
    """The paper's table columns plus per-stage time; failed methods get one line with the error."""
    ok = [r for r in records if "error" not in r]
    sift = ok[0]["sift_shared_s"] if ok else 0.0
    source = ok[0].get("sift_from") if ok else None
    where = (
        f"SIFT copied from {source} (--features-from; its extraction took {sift:.1f} s and was not repeated here)"
        if source
        else f"SIFT extracted once for all methods in {sift:.1f} s"
    )
    lines = [
        f"## {title}",
        "",
        f"{where}, not in the times below. Total = pair generation + matching + mapping.",
        "",
        "| method | K | images | registered | pairs to match | verified pairs | sparse points | observations "
        "| mean track length | mean reproj. error (px) | pairs (s) | matching (s) | mapping (s) | total (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error']} |" + " |" * 12)
            continue
        t = r["time_s"]
        k = r.get("num_matched") or r.get("window")
        lines.append(
            f"| {r['method']} | {_fmt(k)} | {r['images']} | {_registered(r)} | {r['pairs_to_match']} "
            f"| {r['verified_pairs']} | {r['sparse_points']} | {r['observations']} "
            f"| {_fmt(r['mean_track_length'], '.2f')} "
            f"| {_fmt(r['mean_reprojection_error'], '.3f')} | {t['pairs']:.1f} | {t['matching']:.1f} "
            f"| {t['mapping']:.1f} | {r['method_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _registered(r: dict) -> str:
    """Registered images; with --repeats, also their range over the mapper seeds."""
    if "repeats" not in r:
        return str(r["registered"])
    return f"{r['registered']} ({r['registered_min']}–{r['registered_max']} over {len(r['repeats'])} seeds)"


def bar_chart(records: list[dict], path: Path, title: str) -> None:
    """Registered images, pairs to match, sparse points and stacked stage times per method (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if "error" not in r]
    if not ok:
        return
    names = [r["method"] for r in ok]
    x = range(len(ok))
    fig, axes = plt.subplots(1, 4, figsize=(4 + 2.2 * len(ok), 4), squeeze=False)
    axes = axes[0]
    panels = [
        ("registered images", [r["registered"] for r in ok]),
        ("pairs to match", [r["pairs_to_match"] for r in ok]),
        ("sparse points", [r["sparse_points"] for r in ok]),
    ]
    for ax, (label, values) in zip(axes, panels):
        bars = ax.bar(x, values, color="tab:blue")
        ax.bar_label(bars, fontsize=7)
        ax.set_title(label)
    axes[0].axhline(ok[0]["images"], color="grey", ls="--", lw=1, label="images")
    axes[0].legend(fontsize=7)
    bottom = [0.0] * len(ok)
    for stage, colour in (("pairs", "tab:orange"), ("matching", "tab:green"), ("mapping", "tab:purple")):
        values = [r["time_s"][stage] for r in ok]
        axes[3].bar(x, values, bottom=bottom, color=colour, label=stage)
        bottom = [b + v for b, v in zip(bottom, values)]
    axes[3].set_title("time (s, SIFT shared)")
    axes[3].legend(fontsize=7)
    for ax in axes:
        ax.set_xticks(list(x), names, rotation=30, ha="right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_reports(records: list[dict], out: Path, title: str) -> None:
    write_text_atomic(out / "results.json", json.dumps(records, indent=2) + "\n")
    write_text_atomic(out / "results.md", markdown(records, title))
    bar_chart(records, out / "results.png", title)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("dataset", type=Path, help="1DSfM scene (images/ + optional list.txt) or a folder of images")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--methods", nargs="+", default=["exhaustive", "retrieval@20", "sequential"])
    p.add_argument("--force", action="store_true", help="run the methods again even if their records exist")
    p.add_argument("--keep-databases", action="store_true", help="keep each method's copy of database.db")
    p.add_argument("--num-matched", type=int, default=20, help="default K for retrieval and vocab tree")
    p.add_argument("--sequential-overlap", type=int, default=10, help="default W for sequential")
    p.add_argument("--repeats", type=int, default=1, help="map each method's matches R times (seeds 0..R-1)")
    p.add_argument(
        "--features-from",
        type=Path,
        metavar="DB",
        help="start the shared SIFT from this reconstruct database (same SIFT settings; e.g. a label's "
        "reconstruction/database.db) instead of extracting it",
    )
    g = p.add_argument_group("vocabulary tree (never trained on the evaluated scene)")
    g.add_argument("--vocab-tree", type=Path, help="tree file from 'mirror_sfm vocabtree build'")
    g.add_argument("--vocab-images", type=Path, nargs="+", help="build the tree from these image folders")
    g.add_argument("--vocab-databases", type=Path, nargs="+", help="... or from these COLMAP databases' SIFT")
    g.add_argument("--vocab-words", type=int, default=4096)
    g.add_argument("--vocab-max-descriptors", type=int, default=None, help="k-means sample (default 64 per word)")
    g.add_argument("--sv-candidates", type=int, default=100, help="vocabtree-sv: candidates spatially verified")
    g = p.add_argument_group("retrieval")
    g.add_argument("--weights", default="default", help="weights of plain 'retrieval' methods")
    g.add_argument("--resize", type=int, default=384)
    g.add_argument("--rerank", choices=["prmac", "none"], default="prmac")
    g.add_argument("--shortlist", type=int, default=100, help="PR-MAC re-ranking depth")
    g.add_argument(
        "--verify-shortlist",
        type=int,
        default=RECONSTRUCT_SHORTLIST,
        help="retrieval-verified: CNN candidates verified (reconstruct's default)",
    )
    g.add_argument("--verify-features", type=int, default=2048, help="retrieval-verified: SIFT features per image")
    g.add_argument("--torch-device", default="auto", help="CNN device: auto | cpu | cuda")
    g = p.add_argument_group("COLMAP")
    g.add_argument("--max-image-size", type=int, default=1600)
    g.add_argument(
        "--max-num-features",
        type=int,
        default=2048,
        help="SIFT per image (default %(default)s keeps a CPU run of a ~100-image scene under 30 min; "
        "COLMAP's own default is 8192)",
    )
    g.add_argument("--camera-mode", default="auto", choices=["auto", "single", "per_image"])
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    g.add_argument("--num-threads", type=int, default=-1)
    g.add_argument("--mapper", default="incremental", choices=["incremental", "global"])
    return p.parse_args(argv)


def resolve_methods(names: list[str], args: argparse.Namespace) -> list[Method]:
    """Parse the method names; a retrieval@match-M target is the listed method that means M (added if none)."""
    methods = [parse_method(m, args.num_matched, args.sequential_overlap) for m in names]
    resolved, extra = [], []
    for m in methods:
        if m.match:
            target = parse_method(m.match, args.num_matched, args.sequential_overlap)
            same = [x for x in methods + extra if canonical(x) == canonical(target)]
            if not same:
                extra.append(target)
                same = [target]
            m = replace(m, match=same[0].name)
        resolved.append(m)
    return run_order(resolved, {m.name: m for m in resolved + extra})


def compare(args: argparse.Namespace) -> list[dict]:
    """Run (or load) every method and write the reports; return the records in run order."""
    methods = resolve_methods(args.methods, args)
    image_dir, names = dataset_images(args.dataset)
    if names is None:
        list_images(image_dir)  # MirrorError now for an empty or missing folder
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    done = {
        r["method"]: r
        for r in (json.loads(results_path.read_text()) if results_path.exists() else [])
        if "error" not in r
    }
    scene = args.dataset.resolve()
    scene = scene.parent if scene.name == "images" else scene
    title = f"{scene.name}: {args.max_num_features} SIFT features"
    records: dict[str, dict] = {}
    for method in methods:
        if method.name in done and not args.force:
            logger.info("%s: done before, record kept", method.name)
            records[method.name] = done[method.name]
        else:
            try:
                records[method.name] = run_method(method, image_dir, names, args.out, records, args)
            except MirrorError as exc:
                logger.error("%s failed: %s", method.name, exc)
                records[method.name] = {"method": method.name, "error": str(exc)}
        others = [r for n, r in done.items() if n not in records]  # earlier runs' methods not asked for now
        write_reports(list(records.values()) + others, args.out, title)
    return list(records.values())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_command(
        "sfm_comparison",
        lambda: print(markdown(compare(args), args.dataset.name)),
        "finished methods are kept in results.json; re-run to resume",
    )


if __name__ == "__main__":
    sys.exit(main())
