"""Overlap-retrieval mAP@k against GL3D-format ground truth, with both AP definitions (mirror_sfm.evaluate).

    python benchmarks/overlap_map.py --gt outputs/labels/alexander --pairs pairs.txt --out OUT
    python benchmarks/overlap_map.py --gt outputs/labels/* --method retrieval --weights imagenet --rerank prmac \
        --image-root ../shared/data/scenes --pooled --out OUT
    python benchmarks/overlap_map.py --gt outputs/labels/* --method vocabtree --vocab-tree 'trees/without-{scene}.bin' \
        --image-root ../shared/data/scenes --pooled --out OUT

A GT folder is gtgen output (image_list.txt + geolabel/{common_track.txt, mesh_overlap.txt}) or a GL3D
scene (geolabel/ + undist_images/<8-digit>.jpg, image k = line k of cameras.txt). A database image is a
positive of a query when the combined overlap CO (MIRorR eq. 4: 1 where the symmetric common-track ratio
is >= --t-sfm, else the symmetric mesh overlap) is >= --threshold (default 0.5); `--label ct` uses the
symmetric common-track ratio alone (>= --ct-threshold). Every GT image is a query; queries with no
positive are counted and left out of the mean.

Rankings: `--pairs FILE` (one per --gt; rank order = line order per query, hloc's convention; names not
in the GT image list are dropped) or `--method retrieval|vocabtree`, run here over the GT images (pair
files of the rankings are written to OUT so they can be scored again). `--pooled`: all scenes' images
form one database, names prefixed `<scene>/`, so every query is searched against every image (as in the
paper); with --pairs it takes one file with prefixed names. Positives never cross scenes.

--method vocabtree: COLMAP's vocab-tree retrieval over SIFT of the GT images. `{scene}` in --vocab-tree
is replaced by each scene's name, so every scene's queries are ranked with a tree made without that
scene (pooled, that tree indexes all scenes' images); `--sv-candidates 100` spatially verifies the
tree's top 100 and re-ranks them by inliers, as COLMAP's num_images_after_verification does.

Writes OUT/overlap_map.json (per scene and overall: mAP@k for each k, both definitions; with --method also
the seconds spent describing the images and ranking them), overlap_map.md,
pr.png (mean precision vs mean recall at ranks 1..max k) and topk.png (top 10 of a few queries; green =
positive, red = not).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gtgen.gl3d import read_cameras, read_image_list, read_ratios  # noqa: E402
from gtgen.ratios import combined_ratios, symmetric_ratios  # noqa: E402
from mirror_sfm.console import run_command  # noqa: E402
from mirror_sfm.database_reader import SUBSET, SUBSETS  # noqa: E402
from mirror_sfm.errors import MirrorError  # noqa: E402
from mirror_sfm.evaluate import dedupe, mean_average_precision, precision_recall  # noqa: E402
from mirror_sfm.images import IMAGE_EXTENSIONS  # noqa: E402
from mirror_sfm.io_utils import atomic_path, write_text_atomic  # noqa: E402
from mirror_sfm.pairs_io import read_pairs, write_pairs  # noqa: E402

logger = logging.getLogger("mirror_sfm.bench")

GRID_TOP = 10


# --------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------


@dataclass
class LabelOptions:
    """Which pairs are positives."""

    label: str = "co"  # co | ct
    threshold: float = 0.5  # CO >= threshold (label co)
    ct_threshold: float = 0.2  # symmetric CT >= ct_threshold (label ct)
    t_sfm: float = 0.2  # CO = 1 where the symmetric CT >= t_sfm


@dataclass
class SceneGT:
    name: str
    names: list[str]  # image k of the GT files
    positives: dict[str, set[str]]  # every image is a query; its positive database images
    image_dir: Path | None  # where the images are (None: unknown; needed by --method and the grid)


def gt_image_names(gt_dir: Path) -> list[str]:
    """Image k's name: image_list.txt (gtgen), else GL3D's undist_images/ or cameras.txt indices."""
    if (gt_dir / "image_list.txt").is_file():
        return read_image_list(gt_dir / "image_list.txt")
    undist = gt_dir / "undist_images"
    if undist.is_dir():
        names = sorted(p.name for p in undist.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if names:
            return names
    cameras = gt_dir / "geolabel" / "cameras.txt"
    if cameras.is_file():
        return [f"{c.idx:08d}.jpg" for c in read_cameras(cameras)]
    raise MirrorError(f"{gt_dir}: no image_list.txt, undist_images/ or geolabel/cameras.txt to name the images")


def find_image_dir(gt_dir: Path, given: Path | None, image_root: Path | None) -> Path | None:
    """The images of a GT folder: --images, the triplet manifest's image_dir, GT/images, GT/undist_images,
    IMAGE_ROOT/<scene>/images (in that order)."""
    if given is not None:
        if not given.is_dir():
            raise MirrorError(f"image folder not found: {given}")
        return given
    manifest = gt_dir / "triplets.json"
    candidates = []
    if manifest.is_file():
        try:
            if json.loads(manifest.read_text()).get("image_dir"):
                candidates.append(Path(json.loads(manifest.read_text())["image_dir"]))
        except ValueError:
            pass
    candidates += [gt_dir / "images", gt_dir / "undist_images"]
    if image_root is not None:
        candidates.append(image_root / gt_dir.name / "images")
    return next((c for c in candidates if c.is_dir()), None)


def positive_matrix(gt_dir: Path, n: int, options: LabelOptions):
    """Sparse symmetric (n, n) ratio matrix whose entries >= the threshold are positives, and that threshold."""
    import scipy.sparse as sp

    geo = gt_dir / "geolabel"
    ct_path, mo_path = geo / "common_track.txt", geo / "mesh_overlap.txt"
    ct = read_ratios(ct_path, n) if ct_path.is_file() else None
    if options.label == "ct":
        if ct is None:
            raise MirrorError(f"label ct needs {ct_path}")
        return symmetric_ratios(ct), options.ct_threshold
    if not mo_path.is_file():
        raise MirrorError(f"label co needs {mo_path} (or use --label ct)")
    if ct is None:
        logger.warning("%s missing: CO is the mesh overlap alone", ct_path)
        ct = sp.csr_matrix((n, n))
    return combined_ratios(ct, read_ratios(mo_path, n), options.t_sfm), options.threshold


def load_gt(gt_dir: Path, options: LabelOptions, image_dir: Path | None = None) -> SceneGT:
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise MirrorError(f"ground-truth folder not found: {gt_dir}")
    names = gt_image_names(gt_dir)
    ratios, threshold = positive_matrix(gt_dir, len(names), options)
    coo = ratios.tocoo()
    positives: dict[str, set[str]] = {n: set() for n in names}
    for i, j, r in zip(coo.row, coo.col, coo.data):
        if i != j and r >= threshold:
            positives[names[i]].add(names[j])
    return SceneGT(gt_dir.name, names, positives, image_dir)


def pooled_gt(scenes: list[SceneGT]) -> SceneGT:
    """One database of all scenes; names become `<scene>/<name>`."""
    names, positives = [], {}
    for s in scenes:
        names += [f"{s.name}/{n}" for n in s.names]
        for q, pos in s.positives.items():
            positives[f"{s.name}/{q}"] = {f"{s.name}/{p}" for p in pos}
    return SceneGT("pooled", names, positives, None)


def scene_names_unique(scenes: list[SceneGT]) -> None:
    seen = [s.name for s in scenes]
    dup = sorted({n for n in seen if seen.count(n) > 1})
    if dup:
        raise MirrorError(f"GT folders share the scene name {dup[0]}: rename one (names prefix pooled images)")


# --------------------------------------------------------------------------------------------
# Rankings
# --------------------------------------------------------------------------------------------


def rankings_from_pairs(path: Path, names: list[str]) -> dict[str, list[str]]:
    """Per query, its database images in line order; names outside `names` are dropped (logged)."""
    known = set(names)
    ranked: dict[str, list[str]] = {}
    unknown = 0
    for q, d in read_pairs(path):
        if q not in known or d not in known:
            unknown += 1
            continue
        ranked.setdefault(q, []).append(d)
    if unknown:
        logger.warning("%s: %d pair(s) name images outside the ground truth and are ignored", path, unknown)
    if not ranked:
        raise MirrorError(f"{path}: no pair names two images of the ground truth ({len(names)} images)")
    return {q: dedupe(v, q) for q, v in ranked.items()}


def _group(pairs) -> dict[str, list[str]]:
    ranked: dict[str, list[str]] = {}
    for q, d in pairs:
        ranked.setdefault(q, []).append(d)
    return {q: dedupe(v, q) for q, v in ranked.items()}


def retrieval_rankings(
    scenes: list[SceneGT], pooled: bool, depth: int, work: Path, args: argparse.Namespace
) -> tuple[dict[str, dict[str, list[str]]], dict[str, float]]:
    """mirror_sfm retrieval over each scene's GT images (or all of them pooled): (rankings per database,
    seconds of describing the images (0-ish when cached in `work`) and of ranking them)."""
    from mirror_sfm.extract import ExtractionOptions, extract
    from mirror_sfm.features_io import read_descriptors
    from mirror_sfm.model import load_model
    from mirror_sfm.pairs import PairsOptions, rank_pairs
    from mirror_sfm.retrieval import RetrievalOptions

    verified = args.verify == "sift"
    cnn_depth = max(depth, args.verify_shortlist) if verified else depth
    options = PairsOptions(
        ExtractionOptions(resize=args.resize, weights=args.weights, device=args.torch_device),
        RetrievalOptions(
            num_matched=cnn_depth,
            rerank=args.rerank,
            shortlist=max(args.shortlist, cnn_depth),
            whitening=args.whitening,
        ),
    )
    t0 = time.perf_counter()
    model = load_model(args.weights)
    regional = args.rerank == "prmac"
    described = []
    for s in scenes:
        feats = work / f"global-feats-{s.name}.h5"
        result = extract(s.image_dir, feats, options.extraction, image_names=s.names, model=model)
        good = [n for n in s.names if n not in result.skipped]
        names, glob, reg = read_descriptors(feats, good, regional=regional)
        described.append((s.name, names, glob, reg))
    t_features, t0 = time.perf_counter() - t0, time.perf_counter()
    groups = [("pooled", described)] if pooled else [(d[0], [d]) for d in described]
    out = {}
    t_verify = 0.0
    for key, parts in groups:
        names = [f"{p[0]}/{n}" if pooled else n for p in parts for n in p[1]]
        glob = np.concatenate([p[2] for p in parts])
        reg = np.concatenate([p[3] for p in parts]) if regional else None
        pairs, cnn = rank_pairs(
            names,
            glob,
            reg,
            replace(options, retrieval=replace(options.retrieval, num_matched=min(cnn_depth, len(names) - 1))),
            model,
        )
        if verified:
            t1 = time.perf_counter()
            pairs = verified_ranking(
                pairs,
                cnn,
                sift_database(key, [s for s in scenes if s.name in {p[0] for p in parts}], pooled, work, args),
                args,
                depth,
            )
            t_verify += time.perf_counter() - t1
        out[key] = _group(pairs)
    timing = {"features": t_features, "ranking": time.perf_counter() - t0 - t_verify}
    if verified:
        timing["verification"] = t_verify
        timing["sift"] = _SIFT_SECONDS[0]
    return out, timing


_SIFT_SECONDS = [0.0]  # seconds spent making SIFT databases (0-ish when cached in the work folder)


def sift_database(key: str, scenes: list[SceneGT], pooled: bool, work: Path, args: argparse.Namespace) -> Path:
    """The SIFT database of one ranking group (a scene, or all scenes merged with names <scene>/<name>), shared with
    --method vocabtree (same work folder, same SIFT settings: extracted once)."""
    from mirror_sfm.colmap import DATABASE_NAME, ReconstructionOptions, merge_databases, prepare_database

    t0 = time.perf_counter()
    sift = ReconstructionOptions(max_num_features=args.max_num_features, max_image_size=args.max_image_size)
    dbs = {s.name: prepare_database(work / f"sift-{s.name}", s.image_dir, s.names, sift)[0] for s in scenes}
    if pooled:
        database = work / "sift-pooled" / DATABASE_NAME
        database.parent.mkdir(parents=True, exist_ok=True)
        merge_databases([(s.name, dbs[s.name]) for s in scenes], database)
    else:
        database = dbs[key]
    _SIFT_SECONDS[0] += time.perf_counter() - t0
    return database


def verified_ranking(pairs, cnn, database: Path, args: argparse.Namespace, depth: int):
    """Each query's CNN top --verify-shortlist re-ranked by SIFT inliers, then the rest of its CNN ranking."""
    from mirror_sfm.verify import VerifyOptions, rerank_by_geometry, verify_pairs

    options = VerifyOptions(
        shortlist=args.verify_shortlist,
        num_features=args.verify_features,
        score=args.verify_score,
        feature_subset=args.verify_subset,
    )
    per_query: dict[str, list[int]] = {}
    for i, (q, _) in enumerate(pairs):
        per_query.setdefault(q, []).append(i)
    head = [i for idx in per_query.values() for i in idx[: options.shortlist]]
    scores = verify_pairs(database, [pairs[i] for i in head], options)
    # every candidate kept (own shortlist + verified reverse ones), then the rest of the CNN ranking
    top, _, _ = rerank_by_geometry([pairs[i] for i in head], [cnn[i] for i in head], scores, len(head))
    tails = {q: [pairs[i] for i in idx[options.shortlist :]] for q, idx in per_query.items()}
    out = []
    for q, ranked in _group(top).items():
        out += [(q, d) for d in ranked] + tails[q]
    return [(q, d) for q, ranked in _group(out).items() for d in ranked[:depth]]


def method_label(args: argparse.Namespace) -> str:
    """How the reports name a method run here (when --name is not given)."""
    if args.method == "retrieval":
        verified = (
            f", top {args.verify_shortlist} verified by SIFT ({args.verify_features} features)"
            if args.verify == "sift"
            else ""
        )
        whitening = f", whitening {args.whitening}" if args.whitening != "none" else ""
        return f"retrieval (weights {args.weights}, rerank {args.rerank}, resize {args.resize}{whitening}{verified})"
    verified = f", top {args.sv_candidates} verified" if args.sv_candidates else ""
    if args.sv_candidates and args.sv_features > 0:
        verified += f" with {args.sv_features} features"
    return f"vocabtree ({args.vocab_tree}{verified})"


def vocab_tree_for(args: argparse.Namespace, scene: str) -> Path:
    """The tree that ranks `scene`'s queries: --vocab-tree with `{scene}` replaced by the scene's name."""
    if args.vocab_tree is None:
        raise MirrorError("--method vocabtree needs --vocab-tree FILE (or a template with {scene})")
    path = Path(str(args.vocab_tree).replace("{scene}", scene))
    if not path.is_file():
        raise MirrorError(
            f"vocab tree not found: {path} (for scene {scene}; build it with 'mirror_sfm vocabtree build')"
        )
    return path


def vocabtree_rankings(
    scenes: list[SceneGT], pooled: bool, depth: int, work: Path, args: argparse.Namespace
) -> tuple[dict[str, dict[str, list[str]]], dict[str, float]]:
    """COLMAP vocab-tree retrieval over SIFT of the GT images; pooled, one database merged from the scenes'.
    Returns the rankings and the seconds of SIFT (0-ish when cached in `work`) and of ranking, as
    `retrieval_rankings` does.

    With a `{scene}` template in --vocab-tree each scene's queries are ranked with the tree made without that
    scene; pooled, that tree indexes every scene's images and only that scene's queries are kept.
    """
    import pycolmap

    from mirror_sfm.colmap import DATABASE_NAME, ReconstructionOptions, merge_databases, prepare_database

    for s in scenes:
        vocab_tree_for(args, s.name)  # fail before any SIFT is extracted
    t0 = time.perf_counter()
    sift = ReconstructionOptions(max_num_features=args.max_num_features, max_image_size=args.max_image_size)
    databases = {s.name: prepare_database(work / f"sift-{s.name}", s.image_dir, s.names, sift)[0] for s in scenes}
    if pooled:  # the per-scene SIFT, images renamed <scene>/<name>: extracted once for both settings
        pooled_db = work / "sift-pooled" / DATABASE_NAME
        pooled_db.parent.mkdir(parents=True, exist_ok=True)
        merge_databases([(s.name, databases[s.name]) for s in scenes], pooled_db)
        jobs = [("pooled", pooled_db, scenes)]
    else:
        jobs = [(s.name, databases[s.name], [s]) for s in scenes]
    t_features, t0 = time.perf_counter() - t0, time.perf_counter()
    out = {}
    for key, database, members in jobs:
        trees: dict[Path, list[SceneGT]] = {}
        for s in members:
            trees.setdefault(vocab_tree_for(args, s.name), []).append(s)
        ranked: dict[str, list[str]] = {}
        with pycolmap.Database.open(str(database)) as db:
            by_id = {img.image_id: img.name for img in db.read_all_images()}
            for tree, tree_scenes in trees.items():
                pairing = pycolmap.VocabTreePairingOptions()
                pairing.vocab_tree_path = str(tree)
                pairing.num_images = depth + 1
                if args.sv_candidates > 0:  # COLMAP verifies the top N by geometry and re-ranks them by inliers
                    pairing.num_images = max(args.sv_candidates, depth + 1)
                    pairing.num_images_after_verification = depth + 1
                    pairing.max_num_features = args.sv_features
                queries = {f"{s.name}/{n}" if pooled else n for s in tree_scenes for n in s.names}
                if len(queries) < len(by_id):  # only these queries (the tree still indexes every image)
                    match_list = database.parent / f"queries-{tree.stem}.txt"
                    write_text_atomic(match_list, "".join(f"{q}\n" for q in sorted(queries)))
                    pairing.match_list_path = str(match_list)
                pairs = pycolmap.VocabTreePairGenerator(pairing, db).all_pairs()  # per query, in rank order
                # num_images counts the query itself; when a tie pushes it out, COLMAP returns one image more
                ranked.update(
                    {q: ds[:depth] for q, ds in _group((by_id[a], by_id[b]) for a, b in pairs).items() if q in queries}
                )
        out[key] = ranked
    return out, {"features": t_features, "ranking": time.perf_counter() - t0}


# --------------------------------------------------------------------------------------------
# Scores and reports
# --------------------------------------------------------------------------------------------


def score(rankings: dict[str, list[str]], gt: dict[str, set[str]], queries: list[str], ks: list[int]) -> dict:
    """mAP@k for each k (both definitions) over `queries`, with query counts."""
    res = {"num_queries": 0, "num_empty_gt": 0, "map": {}}
    for k in ks:
        m = mean_average_precision(rankings, gt, k, queries)
        res["num_queries"], res["num_empty_gt"] = m.num_queries, m.num_empty_gt
        res["map"][str(k)] = {"mirror": m.map_mirror, "ap_at_k": m.map_at_k}
    return res


def mean_pr_curve(rankings: dict[str, list[str]], gt: dict[str, set[str]], queries: list[str], k: int):
    """Mean precision and mean recall at ranks 1..k over queries with positives (None when there are none)."""
    curves = [precision_recall(rankings.get(q, []), gt[q], k) for q in queries if gt.get(q)]
    if not curves:
        return None
    return np.mean([c[0] for c in curves], axis=0), np.mean([c[1] for c in curves], axis=0)


def markdown(result: dict) -> str:
    ks = result["ks"]
    head = " | ".join(f"mAP@{k} (mirror) | AP@{k}" for k in ks)
    database = "pooled database" if result["pooled"] else "each scene searched alone"
    lines = [
        f"## {result['name']}",
        "",
        f"Positives: {result['positives']}; {database}.",
        "",
        f"| scene | images | queries | empty GT | {head} |",
        "|---|---:|---:|---:|" + "---:|" * (2 * len(ks)),
    ]
    rows = list(result["scenes"].items()) + [("**all queries**", result["overall"])]
    for scene, r in rows:
        vals = " | ".join(f"{r['map'][str(k)]['mirror']:.3f} | {r['map'][str(k)]['ap_at_k']:.3f}" for k in ks)
        lines.append(
            f"| {scene} | {r.get('num_images', result['num_images'])} | {r['num_queries']} "
            f"| {r['num_empty_gt']} | {vals} |"
        )
    if "time_s" in result:
        t = result["time_s"]
        lines += [
            "",
            f"Time: features {t['features']:.1f} s (SIFT or CNN descriptors; near 0 when cached in --work), "
            f"ranking {t['ranking']:.1f} s.",
        ]
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def pr_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for label, (p, r) in curves.items():
        ax.plot(r, p, marker=".", ms=3, label=label)
    ax.set_xlabel("mean recall")
    ax.set_ylabel("mean precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def topk_grid(examples: list[tuple[str, Path, list[tuple[Path, bool]]]], path: Path, title: str) -> None:
    """Rows: a query, then its top results with a green (positive) or red frame."""
    from PIL import Image

    plt = _pyplot()
    rows, cols = len(examples), GRID_TOP + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.3 * rows), squeeze=False)
    for r, (label, query, results) in enumerate(examples):
        cells = [(query, None)] + results
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(cells):
                ax.axis("off")
                continue
            img_path, positive = cells[c]
            try:
                with Image.open(img_path) as im:
                    im.thumbnail((160, 160))
                    ax.imshow(np.asarray(im.convert("RGB")))
            except OSError:
                ax.text(0.5, 0.5, "?", ha="center", va="center")
            colour = "tab:blue" if positive is None else ("tab:green" if positive else "tab:red")
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3)
            ax.set_title("query" if c == 0 else str(c), fontsize=7)
            if c == 0:
                ax.set_xlabel(label[-28:], fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def grid_examples(
    scene_of: dict[str, SceneGT], pooled: bool, rankings: dict[str, list[str]], gt: dict[str, set[str]], count: int
) -> list:
    """`count` queries spread over the query list (those with positives), with their top-10 image paths."""

    def path(name: str) -> Path | None:
        scene_name, _, bare = name.partition("/") if pooled else (None, None, name)
        s = scene_of[scene_name] if pooled else next(iter(scene_of.values()))
        return s.image_dir / bare if s.image_dir is not None else None

    queries = sorted(q for q in gt if gt[q] and path(q) is not None)
    if not queries or count <= 0:
        return []
    picks = [queries[int(i)] for i in np.linspace(0, len(queries) - 1, min(count, len(queries)))]
    return [(q, path(q), [(path(d), d in gt[q]) for d in rankings.get(q, [])[:GRID_TOP]]) for q in dict.fromkeys(picks)]


def evaluate(args: argparse.Namespace) -> dict:
    ks = sorted(set(args.k))
    labels = LabelOptions(args.label, args.threshold, args.ct_threshold, args.t_sfm)
    if args.images and len(args.images) != len(args.gt):
        raise MirrorError(f"--images takes one folder per --gt ({len(args.gt)}), got {len(args.images)}")
    scenes = [
        load_gt(g, labels, find_image_dir(Path(g), args.images[i] if args.images else None, args.image_root))
        for i, g in enumerate(args.gt)
    ]
    scene_names_unique(scenes)
    positives = (
        f"CO >= {labels.threshold} (t_sfm {labels.t_sfm})"
        if labels.label == "co"
        else f"symmetric CT >= {labels.ct_threshold}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    databases = [pooled_gt(scenes)] if args.pooled else scenes

    # rankings, one dict per database
    if args.pairs:
        expected = 1 if args.pooled else len(scenes)
        if len(args.pairs) != expected:
            which = "one, names <scene>/<name>" if args.pooled else "one per --gt"
            raise MirrorError(f"--pairs takes {expected} file(s) here ({which}), got {len(args.pairs)}")
        rankings = {db.name: rankings_from_pairs(p, db.names) for db, p in zip(databases, args.pairs)}
        name = args.name or ", ".join(str(p) for p in args.pairs)
    else:
        missing = [s.name for s in scenes if s.image_dir is None]
        if missing:
            raise MirrorError(f"no image folder for {', '.join(missing)}: give --images or --image-root")
        work = args.work or args.out / "work"
        runner = retrieval_rankings if args.method == "retrieval" else vocabtree_rankings
        rankings, timing = runner(scenes, args.pooled, max(ks), work, args)
        for key, ranked in rankings.items():
            write_pairs(args.out / f"pairs-{key}.txt", [(q, d) for q, ds in ranked.items() for d in ds])
        name = args.name or method_label(args)

    result = {"name": name, "positives": positives, "pooled": args.pooled, "ks": ks, "scenes": {}}
    if not args.pairs:
        result["time_s"] = {k: round(v, 3) for k, v in timing.items()}
    all_gt, all_rank, all_queries = {}, {}, []
    curves, examples = {}, []
    for db in databases:
        ranked = rankings[db.name]
        members = [
            (s, [f"{s.name}/{n}" for n in s.names] if args.pooled else s.names)
            for s in (scenes if args.pooled else [db])
        ]
        for s, queries in members:
            r = score(ranked, db.positives, queries, ks)
            result["scenes"][s.name] = {"num_images": len(s.names), **r}
            curve = mean_pr_curve(ranked, db.positives, queries, max(ks))
            if curve is not None:
                curves[s.name] = curve
            all_queries += [(db.name, q) for q in queries]
        all_gt.update({(db.name, q): v for q, v in db.positives.items()})
        all_rank.update({(db.name, q): v for q, v in ranked.items()})
        scene_of = {s.name: s for s in scenes} if args.pooled else {db.name: db}
        if len(examples) < args.grid_queries:
            examples += grid_examples(
                scene_of, args.pooled, ranked, db.positives, max(1, args.grid_queries // len(databases))
            )
    # overall: every query of every scene, each with its own scene's positives
    all_gt_keyed = {k: {(k[0], d) for d in v} for k, v in all_gt.items()}
    all_rank_keyed = {k: [(k[0], d) for d in v] for k, v in all_rank.items()}
    result["overall"] = score(all_rank_keyed, all_gt_keyed, all_queries, ks)
    result["num_images"] = sum(len(s.names) for s in scenes)
    if len(curves) > 1:
        overall_curve = mean_pr_curve(all_rank_keyed, all_gt_keyed, all_queries, max(ks))
        if overall_curve is not None:
            curves["all queries"] = overall_curve

    write_text_atomic(args.out / "overlap_map.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(args.out / "overlap_map.md", markdown(result))
    if curves:
        pr_plot(curves, args.out / "pr.png", f"{name}\n{positives}")
    if examples:
        topk_grid(examples[: args.grid_queries], args.out / "topk.png", f"top {GRID_TOP}: {name}")
    else:
        logger.warning("no image folder known: topk.png not drawn (give --images or --image-root)")
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("--gt", type=Path, nargs="+", required=True, help="GT folders (gtgen output or GL3D scenes)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pairs", type=Path, nargs="+", help="pair files to score (one per --gt; one with --pooled)")
    src.add_argument("--method", choices=["retrieval", "vocabtree"], help="run this retrieval method here")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--name", help="label of the method in the reports")
    p.add_argument("--pooled", action="store_true", help="one database of all scenes' images")
    p.add_argument("--k", type=int, nargs="+", default=[10, 50, 100], help="mAP@k cut-offs (default 10 50 100)")
    g = p.add_argument_group("positives")
    g.add_argument("--label", choices=["co", "ct"], default="co")
    g.add_argument("--threshold", type=float, default=0.5, help="CO threshold (default %(default)s)")
    g.add_argument("--ct-threshold", type=float, default=0.2, help="symmetric CT threshold of --label ct")
    g.add_argument("--t-sfm", type=float, default=0.2, help="CT at which CO is 1 (default %(default)s)")
    g = p.add_argument_group("images (for --method and the top-k grid)")
    g.add_argument("--images", type=Path, nargs="+", help="image folder of each --gt, in order")
    g.add_argument("--image-root", type=Path, help="find images at ROOT/<scene>/images")
    g.add_argument("--grid-queries", type=int, default=4, help="queries shown in topk.png (0 = none)")
    g.add_argument("--work", type=Path, help="descriptor/SIFT cache (default OUT/work)")
    g = p.add_argument_group("--method retrieval")
    g.add_argument("--weights", default="default")
    g.add_argument("--rerank", choices=["prmac", "none"], default="prmac")
    g.add_argument("--shortlist", type=int, default=100)
    g.add_argument(
        "--whitening",
        choices=["none", "model", "database"],
        default="none",
        help="descriptor whitening (model: the --weights file's own, e.g. learned whitening)",
    )
    g.add_argument("--resize", type=int, default=384)
    g.add_argument("--torch-device", default="auto")
    g.add_argument(
        "--verify",
        choices=["none", "sift"],
        default="none",
        help="sift: re-rank each query's top --verify-shortlist by SIFT inliers (mirror_sfm.verify), "
        "with --verify-features of the SIFT below per image (shared with --method vocabtree)",
    )
    g.add_argument("--verify-shortlist", type=int, default=30)
    g.add_argument("--verify-features", type=int, default=2048)  # pairs' default (VerifyOptions.num_features)
    g.add_argument(
        "--verify-subset",
        choices=SUBSETS,
        default=SUBSET,
        help="which --verify-features of each image's SIFT (largest scales: pairs' default; first: the finest)",
    )
    g.add_argument(
        "--verify-score",
        choices=["effective", "inliers"],
        default="effective",
        help="order of verified candidates: effective inliers (grid cells) or the inlier count",
    )
    g = p.add_argument_group("--method vocabtree (and the SIFT of --verify sift)")
    g.add_argument(
        "--vocab-tree",
        type=Path,
        help="tree file; '{scene}' in it is replaced by each scene's name (a tree made without that scene)",
    )
    g.add_argument(
        "--sv-candidates",
        type=int,
        default=0,
        help="spatially verify the tree's top N and re-rank them by inliers (COLMAP's "
        "num_images_after_verification; 0 = plain tree)",
    )
    g.add_argument(
        "--sv-features",
        type=int,
        default=-1,
        help="features per image used by the spatial verification, largest scale first "
        "(VocabTreePairingOptions.max_num_features; -1 = all, COLMAP's default)",
    )
    g.add_argument(
        "--max-num-features",
        type=int,
        default=2048,
        help="SIFT per image (default %(default)s keeps a CPU run of a ~100-image scene under 30 min; "
        "COLMAP's own default is 8192)",
    )
    g.add_argument("--max-image-size", type=int, default=1600)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_command("overlap_map", lambda: print(markdown(evaluate(args))), "re-run to resume")


if __name__ == "__main__":
    sys.exit(main())
