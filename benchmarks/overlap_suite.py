"""Every ranking method on every labelled scene, one table (RESULTS.md §11: verified pairs vs the vocab tree).

    python benchmarks/overlap_suite.py outputs/labels/* --image-root ../shared/data/scenes --out outputs/overlap_suite

Methods (each an `overlap_map.py` run over all the given scenes, per scene, never pooled):
  cnn            CNN global descriptor alone (--rerank none), the fast mode without PR-MAC
  prmac          CNN + PR-MAC re-ranking (`pairs --verify none`, the fast mode)
  verified@N     CNN + PR-MAC, top N re-ranked by verification (`pairs`' default at N = 30); verified@N:F with F
                 features per image instead of --verify-features; +largest / +spread / +first picks which F (pairs'
                 default: the largest scales); a -inliers / -effective suffix picks the score
  vocabtree      COLMAP's vocab tree, a tree never trained on the scene (two folds, below)
  vocabtree-sv   the same, top 100 spatially verified (COLMAP's num_images_after_verification), all features
  vocabtree-sv@F the same with the F largest-scale features per image (COLMAP's max_num_features; F = 1024: its
                 middle preset)
Two vocabulary trees (4,096 words) are trained on the SIFT of two halves of the scenes (scenes sharing photos, like
statue_of_liberty and its 40-photo subset, stay in one half); each scene is ranked by the other half's tree.
SIFT is extracted once per scene (2,048 features, 1,600 px, OUT/work/sift-<scene>; a label folder's own
reconstruction/database.db, made with the same settings, is copied instead when present) and shared by the
verified methods and the trees. Each method's rankings are scored at CO >= 0.5 and at symmetric CT >= 0.2.
Writes OUT/<method>/{co,ct}/overlap_map.json and OUT/suite.md (AP@10 per scene and method, both labels).
Resumable: a method whose overlap_map.json exists is not run again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import overlap_map  # noqa: E402

GROUPS = [("statue_of_liberty", "statue_of_liberty_40")]


def folds(scenes: list[str]) -> tuple[list[str], list[str]]:
    """Two halves of the scenes (alternating by name), scenes that share photos kept together."""
    units: list[list[str]] = []
    for s in sorted(scenes):
        group = next((g for g in GROUPS if s in g), None)
        if group and any(s in u for u in units):
            continue
        units.append([m for m in group if m in scenes] if group else [s])
    a = [s for i, u in enumerate(units) for s in u if i % 2 == 0]
    return a, [s for s in scenes if s not in a]


def seed_sift(label_dir: Path, work: Path) -> None:
    """Reuse the label's exhaustive reconstruction SIFT (same settings) instead of extracting it again.

    Only the labelled images are copied (every feature row, in order): the label's database also holds the photos
    its reconstruction did not register, and a database holding images outside the run is extracted again
    (`prepare_database`'s resume rule), which cost seneca and skull a second SIFT extraction.
    """
    from mirror_sfm.working_database import working_database

    src = label_dir / "reconstruction"
    dst = work / f"sift-{label_dir.name}"
    if (dst / "database.db").exists() or not (src / "database.db").is_file() or not (src / "features.json").is_file():
        return
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "features.json", dst / "features.json")
    names = overlap_map.gt_image_names(label_dir)
    working_database(src / "database.db", dst / "database.db", 1 << 30, images=names, subset="first")
    (dst / "database.db.json").unlink()  # the copy's key: not a working copy, so not kept beside it


def build_trees(labels: list[Path], work: Path, args: argparse.Namespace) -> Path:
    """OUT/trees/tree-without-<scene>.bin for every scene: the tree of the other fold."""
    from mirror_sfm.colmap import ReconstructionOptions, prepare_database
    from mirror_sfm.vocabtree import build_vocab_tree

    trees = args.out / "trees"
    trees.mkdir(parents=True, exist_ok=True)
    names = [p.name for p in labels]
    fold_a, fold_b = folds(names)
    sift = ReconstructionOptions(max_num_features=args.max_num_features, max_image_size=args.max_image_size)
    by_name = {p.name: p for p in labels}
    for fold, other in ((fold_a, fold_b), (fold_b, fold_a)):
        tree = trees / f"tree-{'-'.join(fold)[:80]}.bin"
        if not tree.exists():
            dbs = []
            for scene in fold:  # the labelled images, the set every method of the suite extracts for
                names = overlap_map.gt_image_names(by_name[scene])
                dbs.append(prepare_database(work / f"sift-{scene}", args.image_root / scene / "images", names, sift)[0])
            build_vocab_tree(None, tree, num_words=args.words, database=dbs)
        for scene in other:
            link = trees / f"tree-without-{scene}.bin"
            if not link.exists():
                link.symlink_to(tree.name)
    return trees / "tree-without-{scene}.bin"


def run(method: str, labels: list[Path], args: argparse.Namespace, template: Path | None) -> None:
    out = args.out / method
    common = [
        "--gt",
        *map(str, labels),
        "--image-root",
        str(args.image_root),
        "--work",
        str(args.out / "work"),
        "--k",
        "10",
        "50",
        "--grid-queries",
        "0",
        "--max-num-features",
        str(args.max_num_features),
        "--max-image-size",
        str(args.max_image_size),
    ]
    whiten = ["--whitening", args.whitening]
    if method == "cnn":
        extra = ["--method", "retrieval", "--weights", args.weights, "--rerank", "none", *whiten]
    elif method == "prmac":
        extra = ["--method", "retrieval", "--weights", args.weights, "--rerank", "prmac", *whiten]
    elif method.startswith("verified@"):  # verified@N[:F][+SUBSET][-effective|-inliers]: F features, which, score
        spec, _, score = method.split("@")[1].partition("-")
        spec, _, subset = spec.partition("+")
        shortlist, _, features = spec.partition(":")
        extra = ["--method", "retrieval", "--weights", args.weights, "--rerank", "prmac", *whiten, "--verify", "sift"]
        extra += ["--verify-shortlist", shortlist, "--verify-features", features or str(args.verify_features)]
        extra += ["--verify-score", score] if score else []
        extra += ["--verify-subset", subset] if subset else []
    else:
        extra = ["--method", "vocabtree", "--vocab-tree", str(template)]
        if method.startswith("vocabtree-sv"):
            extra += ["--sv-candidates", "100"]
        if method.startswith("vocabtree-sv@"):  # vocabtree-sv@F: verification with the F largest-scale features
            extra += ["--sv-features", method.split("@")[1]]
    if not (out / "co" / "overlap_map.json").exists():
        if overlap_map.main(common + extra + ["--out", str(out / "co"), "--name", method]) != 0:
            raise SystemExit(f"{method} failed")
    if not (out / "ct" / "overlap_map.json").exists():
        pairs = [str(out / "co" / f"pairs-{p.name}.txt") for p in labels]
        rescore = [
            "--gt",
            *map(str, labels),
            "--pairs",
            *pairs,
            "--label",
            "ct",
            "--k",
            "10",
            "50",
            "--grid-queries",
            "0",
            "--name",
            method,
            "--out",
            str(out / "ct"),
        ]
        if overlap_map.main(rescore) != 0:
            raise SystemExit(f"{method} (ct) failed")


def table(methods: list[str], labels: list[Path], out: Path) -> str:
    lines = []
    for label, title in (("co", "CO ≥ 0.5"), ("ct", "symmetric CT ≥ 0.2")):
        res = {m: json.loads((out / m / label / "overlap_map.json").read_text()) for m in methods}
        lines += [
            f"AP@10, positives {title}:",
            "",
            "| scene | queries | " + " | ".join(methods) + " |",
            "|---|---:|" + "---:|" * len(methods),
        ]
        for p in labels:
            cells = []
            for m in methods:
                s = res[m]["scenes"][p.name]
                cells.append(f"{s['map']['10']['ap_at_k']:.3f}" if s.get("num_queries") else "–")
            q = res[methods[0]]["scenes"][p.name].get("num_queries", 0)
            lines.append(f"| {p.name} | {q} | " + " | ".join(cells) + " |")
        lines.append(
            "| **all queries** | "
            + str(res[methods[0]]["overall"]["num_queries"])
            + " | "
            + " | ".join(f"**{res[m]['overall']['map']['10']['ap_at_k']:.3f}**" for m in methods)
            + " |"
        )
        times = [res[m].get("time_s", {}) for m in methods]
        lines.append(
            "| time (s): features / ranking / verification | | "
            + " | ".join(
                " / ".join(f"{t.get(k, 0):.0f}" for k in ("features", "ranking", "verification")) for t in times
            )
            + " |"
        )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("labels", type=Path, nargs="+", help="labelled scene folders (gtgen output)")
    p.add_argument("--image-root", type=Path, required=True, help="ROOT/<scene>/images")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--methods",
        nargs="+",
        default=[
            "cnn",
            "prmac",
            "verified@20",
            "verified@30",
            "verified@50",
            "vocabtree",
            "vocabtree-sv",
            "vocabtree-sv@1024",
        ],
    )
    p.add_argument("--weights", default="default")
    p.add_argument(
        "--whitening",
        choices=["none", "model", "database"],
        default="none",
        help="descriptor whitening of the CNN methods (model: the --weights file's own)",
    )
    p.add_argument("--verify-features", type=int, default=2048, help="verified@N's features (pairs' default)")
    p.add_argument("--max-num-features", type=int, default=2048)
    p.add_argument("--max-image-size", type=int, default=1600)
    p.add_argument("--words", type=int, default=4096)
    p.add_argument(
        "--vocab-tree",
        help="rank with this tree (a file, or a template with {scene}) instead of building two-fold trees: e.g. "
        "another suite's tree that never saw these scenes' photos",
    )
    args = p.parse_args(argv)
    labels = [lbl for lbl in args.labels if (lbl / "geolabel").is_dir()]
    work = args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    for lbl in labels:
        seed_sift(lbl, work)
    template = None
    if any(m.startswith("vocabtree") for m in args.methods):
        template = Path(args.vocab_tree) if args.vocab_tree else build_trees(labels, work, args)
    for method in args.methods:
        run(method, labels, args, template)
    text = table(args.methods, labels, args.out)
    (args.out / "suite.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
