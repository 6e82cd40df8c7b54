"""`mirror_sfm` command line: a thin layer over the library (extract, pairs, whiten, match, reconstruct, vocabtree,
train, evaluate).

Flags come from the option dataclasses (`cli_options`): their docstrings give the help, their defaults the
defaults. `--config FILE.yaml` sets defaults that flags given on the command line override.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import __version__
from .cli_options import (
    Flag,
    add_flags,
    command_parser,
    log_level,
    main_parser,
    options_from_args,
    parse_with_config,
)
from .colmap import CAMERA_MODES, MAPPERS, PAIR_METHODS, ReconstructionOptions
from .console import run_command
from .distributed import RAY_INSTALL, RayOptions
from .errors import MirrorError
from .extract import ExtractionOptions
from .learned_whitening import VECTORS, LearnedWhiteningOptions
from .pairs import PairsOptions
from .retrieval import RetrievalOptions
from .verify import RECONSTRUCT_SHORTLIST, SCORES, VERIFY_METHODS, VerifyOptions

logger = logging.getLogger("mirror_sfm")

EXTRACTION_FLAGS = (
    Flag("weights", ("--weights",), metavar="default|imagenet|PATH"),
    Flag("resize", ("--resize",), metavar="PX"),
    Flag("pooling", ("--pooling",), choices=("model", "mac", "gem", "rmac")),
    Flag("batch_size", ("--batch-size",)),
    Flag("device", ("--device",), metavar="auto|cpu|cuda"),
    Flag("num_workers", ("--num-workers",)),
)
RAY_FLAGS = (
    Flag("address", ("--ray",), metavar="ADDRESS"),
    Flag("workers", ("--ray-workers",), metavar="N"),
    Flag("cpus_per_worker", ("--ray-cpus-per-worker",), metavar="N"),
    Flag("gpus_per_worker", ("--ray-gpus-per-worker",), metavar="N"),
    Flag("shard_size", ("--ray-shard-size",), metavar="N"),
)
NUM_MATCHED = Flag("num_matched", ("--num-matched", "-k"), metavar="K")
RETRIEVAL_FLAGS = (
    Flag("rerank", ("--rerank",), choices=("prmac", "none")),
    Flag("shortlist", ("--prmac-shortlist",), metavar="N"),
    Flag("query_expansion", ("--query-expansion",), metavar="N"),
    Flag("whitening", ("--whitening",), choices=("auto", "none", "model", "database")),
    Flag("exact_max", ("--exact-max",), metavar="N"),
    Flag("index", ("--index",), metavar="FACTORY"),
    Flag("ivf_nlist", ("--index-nlist",), metavar="N"),
    Flag("ivf_nprobe", ("--index-nprobe",), metavar="N"),
    Flag("refine", ("--index-refine",), metavar="N"),
    Flag("train_per_list", ("--index-train-per-list",), metavar="N"),
    Flag("use_gpu", ("--faiss-gpu",), choices=("auto", "yes", "no")),
)
VERIFY_FLAGS = (
    Flag("method", ("--verify",), choices=VERIFY_METHODS),
    Flag("shortlist", ("--shortlist",), metavar="N"),
    Flag("num_features", ("--verify-features",), metavar="N"),
    Flag("score", ("--verify-score",), choices=SCORES),
    Flag("max_ratio", ("--verify-max-ratio",), metavar="R"),
)
LEARNED_WHITENING_FLAGS = (
    Flag("positives", ("--positives",), metavar="CRITERION:THRESHOLD"),
    Flag("vectors", ("--fit-on",), choices=VECTORS),
    Flag("pre_dim", ("--pre-dim",), metavar="N"),
    Flag("shrinkage", ("--shrinkage",)),
)
PAIRS_FLAGS = (
    Flag("sequential", ("--sequential",), metavar="W"),
    Flag("symmetric", ("--symmetric",)),
)
# ReconstructionOptions (mirror_sfm.colmap) documents its fields in comments: the help is given here.
RECONSTRUCTION_FLAGS = (
    Flag(
        "pairs",
        ("--pairs",),
        choices=PAIR_METHODS,
        help="how pairs are chosen: CNN retrieval (this package), a COLMAP vocabulary tree, all pairs, or a "
        "sliding window in name order",
    ),
    Flag(
        "num_matched", ("--num-matched", "-k"), metavar="K", help="neighbours per image (retrieval and vocabulary tree)"
    ),
    Flag(
        "vocab_tree",
        ("--vocab-tree",),
        type=Path,
        metavar="FILE",
        help="tree file from 'mirror_sfm vocabtree build' (for --pairs vocabtree)",
    ),
    Flag("mapper", ("--mapper",), choices=MAPPERS, help="COLMAP's incremental or global mapper"),
    Flag("sequential_overlap", ("--sequential-overlap",), metavar="W", help="window of --pairs sequential"),
    Flag("camera_mode", ("--camera-mode",), choices=tuple(CAMERA_MODES), help="COLMAP camera sharing"),
    Flag("max_image_size", ("--max-image-size",), metavar="PX", help="SIFT: long side limit"),
    Flag("max_num_features", ("--max-num-features",), metavar="N", help="SIFT features per image"),
)


def _add_extraction_args(p: argparse.ArgumentParser) -> None:
    add_flags(p.add_argument_group("descriptors"), ExtractionOptions, EXTRACTION_FLAGS)


def _add_ray_args(p: argparse.ArgumentParser) -> None:
    add_flags(p.add_argument_group(f"Ray cluster (optional: {RAY_INSTALL})"), RayOptions, RAY_FLAGS)


def _ray_options(args) -> RayOptions | None:
    options = options_from_args(RayOptions, RAY_FLAGS, args)
    return options if options.address else None


def _add_retrieval_args(p: argparse.ArgumentParser) -> None:
    add_flags(p.add_argument_group("retrieval"), RetrievalOptions, RETRIEVAL_FLAGS)


def _add_verify_args(p: argparse.ArgumentParser, database: bool, defaults: VerifyOptions | None = None) -> None:
    g = p.add_argument_group("geometric verification of the shortlist")
    add_flags(g, VerifyOptions, VERIFY_FLAGS, defaults)
    if database:
        g.add_argument(
            "--database",
            type=Path,
            metavar="DB",
            help="COLMAP database with SIFT for these images (colmap feature_extractor, "
            "pycolmap.extract_features): read-only, nothing is extracted. None: light SIFT "
            "(2048 features, 1024 px) cached in OUTPUT-sift.db",
        )


def _add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        metavar="YAML",
        help="option defaults, keys are long option names (e.g. configs/pairs.yaml); flags given "
        "on the command line win",
    )


def _verify_options(args) -> VerifyOptions:
    return options_from_args(VerifyOptions, VERIFY_FLAGS, args)


def _extraction_options(args) -> ExtractionOptions:
    return options_from_args(ExtractionOptions, EXTRACTION_FLAGS, args)


def _retrieval_options(args) -> RetrievalOptions:
    return options_from_args(RetrievalOptions, RETRIEVAL_FLAGS, args, num_matched=args.num_matched)


def _pairs_options(args, flags: tuple[Flag, ...] = PAIRS_FLAGS, **extra) -> PairsOptions:
    return options_from_args(
        PairsOptions,
        flags,
        args,
        extraction=_extraction_options(args),
        retrieval=_retrieval_options(args),
        verify=_verify_options(args),
        **extra,
    )


def cmd_extract(args) -> None:
    from .extract import extract

    res = extract(args.images, args.output, _extraction_options(args), ray=_ray_options(args))
    resumed = f", {res.num_resumed} from finished shards" if res.num_resumed else ""
    print(
        f"{res.num_extracted} described, {res.num_cached} cached{resumed}, {len(res.skipped)} unreadable -> {res.path}"
    )


def cmd_pairs(args) -> None:
    from .pairs import generate_pairs

    pairs = generate_pairs(
        args.images,
        args.output,
        features=args.features,
        options=_pairs_options(args),
        scores_output=args.scores,
        database=args.database,
        ray=_ray_options(args),
    )
    print(f"{len(pairs)} pairs -> {args.output}")


def cmd_whiten(args) -> None:
    from .io_utils import check_writable
    from .model import load_model, save_weights

    check_writable(args.output)
    if args.labels or args.split:
        from .learned_whitening import load_label_folders, whitening_from_labels

        options = options_from_args(LearnedWhiteningOptions, LEARNED_WHITENING_FLAGS, args)
        if args.dim is not None:
            options.dim = args.dim
        options.validate()
        scenes = list(args.labels or [])
        if args.split:
            from .train.data import split_scenes

            scenes += split_scenes(args.labels_root, args.splits, args.split)
        scenes = load_label_folders(scenes)  # every folder checked before the model loads
        work = args.work or args.output.with_name(args.output.stem + "-descriptors")
        model = load_model(args.weights)
        model.whitening, info = whitening_from_labels(scenes, options, model, work)
        model.meta["whitening"] = info
        save_weights(model, args.output)
        print(
            f"learned whitening to {model.whitening.dim}-d fitted on {info['pairs']} matching pairs "
            f"({info['positives']}, {info['vectors']} vectors) of {len(info['scenes'])} scenes -> {args.output}"
        )
        return
    from .features_io import read_descriptors
    from .whitening import fit_pca_whitening

    if args.features is None:
        raise MirrorError("whiten needs --features H5 (PCA whitening) or --labels DIR... (learned whitening)")
    _, glob, regional = read_descriptors(args.features, regional=True)
    model = load_model(args.weights)
    model.whitening = fit_pca_whitening(regional.reshape(-1, regional.shape[-1]), args.dim or 256)
    model.meta["whitening_fitted_on"] = str(args.features)
    save_weights(model, args.output)
    print(f"PCA whitening to {model.whitening.dim}-d fitted on {len(glob)} images -> {args.output}")


def cmd_match(args) -> None:
    from .colmap import match_pairs

    match_pairs(args.database, args.pairs)
    print(f"matched the pairs of {args.pairs} into {args.database}")


def cmd_reconstruct(args) -> None:
    from .colmap import reconstruct

    if args.output and args.output_opt and args.output != args.output_opt:
        raise MirrorError(f"two output folders given ({args.output} and -o {args.output_opt}): give one")
    output = args.output or args.output_opt
    if output is None:
        raise MirrorError("reconstruct needs an output folder: 'mirror_sfm reconstruct IMAGES OUTPUT' (or -o OUTPUT)")
    retrieval_kwargs = {"options": _pairs_options(args, PAIRS_FLAGS[:1])}
    options = options_from_args(
        ReconstructionOptions, RECONSTRUCTION_FLAGS, args, device=args.device, retrieval_kwargs=retrieval_kwargs
    )
    stats = reconstruct(args.images, output, options, verbose=bool(getattr(args, "verbose", False)))
    print(
        json.dumps(
            {
                k: stats[k]
                for k in (
                    "method",
                    "images",
                    "registered",
                    "pairs_to_match",
                    "sparse_points",
                    "mean_reprojection_error",
                )
                if k in stats
            }
        )
    )


def cmd_vocabtree_build(args) -> None:
    from .vocabtree import build_vocab_tree

    path = build_vocab_tree(args.images, args.output, num_words=args.words)
    print(f"vocabulary tree -> {path}")


def cmd_train(args) -> None:
    from .train.config import load_config
    from .train.loop import train

    overrides = list(args.set or [])
    for key, value in (("run.out", args.out), ("run.steps", args.steps), ("run.device", args.device)):
        if value is not None:
            overrides.append(f"{key}={value}")
    res = train(load_config(args.train_config, overrides))
    print(f"trained to step {res.step} -> {res.out}" + (f"; weights {res.weights}" if res.weights else ""))


def cmd_evaluate(args) -> None:
    from .io_utils import write_text_atomic
    from .scene_eval import EvaluationOptions, evaluate_scenes, format_table

    scenes = list(args.scenes)
    if args.split:
        from .train.data import split_scenes

        scenes += split_scenes(args.labels_root, args.splits, args.split)
    if not scenes:
        raise MirrorError("no scene to evaluate: give scene folders or --split NAME (with --labels-root)")
    options = EvaluationOptions(
        gt=tuple(args.gt),
        ks=tuple(args.k),
        t_sfm=args.t_sfm,
        extraction=_extraction_options(args),
        retrieval=_retrieval_options(args),
        features_dir=str(args.features_dir) if args.features_dir else None,
    )
    report = evaluate_scenes(scenes, options)
    print(format_table(report))
    if args.output:
        write_text_atomic(args.output, json.dumps(report, indent=1) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser, sub = main_parser(
        "mirror_sfm",
        f"mirror_sfm {__version__}",
        "Matchable image retrieval for Structure-from-Motion: COLMAP/hloc pair files ranked by a CNN "
        "that learnt which images share surface (MIRorR).",
        "mirror_sfm pairs images/ -o pairs.txt -k 20\nmirror_sfm reconstruct images/ out/",
    )

    p = command_parser(
        sub,
        "extract",
        "describe a folder of images into an h5 file (resumable)",
        "Global (and regional) descriptors in hloc's global-feats layout: a group per image name holding "
        "'global_descriptor'.\nA re-run skips unchanged images; an interrupted run resumes.\n--ray: "
        "the images are described in shards by the workers of a Ray cluster.",
        "mirror_sfm extract images/ -o global-feats.h5 --resize 512\n"
        "mirror_sfm extract /shared/images/ -o /shared/global-feats.h5 --ray auto --ray-gpus-per-worker 1",
    )
    p.add_argument("images", type=Path, help="image folder (searched recursively)")
    p.add_argument("-o", "--output", type=Path, required=True, help="descriptor file (.h5)")
    _add_extraction_args(p)
    _add_ray_args(p)
    p.set_defaults(func=cmd_extract)

    p = command_parser(
        sub,
        "pairs",
        "write a COLMAP/hloc pair file by matchable-image retrieval",
        "Each image's CNN shortlist (+ PR-MAC) is verified with SIFT (COLMAP's matching rule and two-view "
        "geometry)\nand its top K by inliers written as 'query neighbour' lines; --verify none keeps the "
        "CNN order (fast mode).",
        "mirror_sfm pairs images/ -o pairs.txt -k 20 --database database.db\n"
        "mirror_sfm pairs images/ -o pairs.txt --config configs/pairs.yaml --verify none",
    )
    p.add_argument("images", type=Path, help="image folder (searched recursively)")
    p.add_argument("-o", "--output", type=Path, required=True, help="pair file: 'name1 name2' a line")
    add_flags(p, RetrievalOptions, (NUM_MATCHED,))
    p.add_argument(
        "--features",
        type=Path,
        metavar="H5",
        help="descriptor file: mirror_sfm's cache (None: OUTPUT-global-feats.h5 beside the output), or "
        "an existing hloc global-feats file, which is ranked from and never overwritten",
    )
    p.add_argument(
        "--scores",
        type=Path,
        metavar="FILE",
        help="also write 'name1 name2 cnn_score inliers' lines here (inliers: verified SIFT inliers, "
        "0 = failed, -1 = not verified; no inliers field with --verify none)",
    )
    add_flags(p, PairsOptions, PAIRS_FLAGS)
    _add_config_arg(p)
    _add_extraction_args(p)
    _add_retrieval_args(p)
    _add_verify_args(p, database=True)
    _add_ray_args(p)
    p.set_defaults(func=cmd_pairs)

    p = command_parser(
        sub,
        "whiten",
        "fit descriptor whitening and save it with the weights",
        "--features: PCA whitening of the regional descriptors of a descriptor file. --labels / --split: learned\n"
        "whitening (Radenović et al.: whiten by the covariance of matching-pair differences, rotate by the PCA of\n"
        "all descriptors) fitted on labelled scenes. Use the result with --weights FILE: pairs and evaluate apply\n"
        "the file's whitening by default (--whitening auto; --whitening none turns it off).",
        "mirror_sfm whiten --features global-feats.h5 -o my-weights.pt\n"
        "mirror_sfm whiten --split train --labels-root outputs/labels --positives ct:0.2 -o my-weights.pt\n"
        "mirror_sfm pairs images/ -o pairs.txt --weights my-weights.pt",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--features", type=Path, metavar="H5", help="PCA whitening of this descriptor file from 'extract'")
    src.add_argument(
        "--labels",
        type=Path,
        nargs="+",
        metavar="DIR",
        help="learned whitening (Radenović et al.) from these labelled scene folders (gtgen output): their images "
        "are described at the extraction defaults, their positive pairs supervise the fit",
    )
    p.add_argument("--weights", default="default", metavar="default|imagenet|PATH", help="weights to add it to")
    p.add_argument(
        "--dim",
        type=int,
        metavar="N",
        help="output dimension (None: 256 for PCA, the descriptors' own for learned whitening)",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="new weights file (.pt)")
    g = p.add_argument_group("learned whitening (--labels or --split)")
    add_flags(g, LearnedWhiteningOptions, LEARNED_WHITENING_FLAGS)
    g.add_argument("--split", metavar="NAME", help="also the scenes of this split (e.g. train) under --labels-root")
    g.add_argument("--labels-root", type=Path, default=Path("outputs/labels"), help="labelled scene folders")
    g.add_argument("--splits", type=Path, metavar="YAML", help="split file (None: the checkout's configs/splits.yaml)")
    g.add_argument(
        "--work",
        type=Path,
        metavar="DIR",
        help="keep each scene's descriptors here, resumable (None: OUTPUT-descriptors/ beside the output)",
    )
    p.set_defaults(func=cmd_whiten)

    p = command_parser(
        sub,
        "match",
        "match the pairs of a pair file into a COLMAP database (pycolmap)",
        "The database must hold SIFT features for every image of the pair file.",
        "mirror_sfm match --database database.db --pairs pairs.txt",
    )
    p.add_argument("--database", type=Path, required=True, metavar="DB", help="COLMAP database (written)")
    p.add_argument("--pairs", type=Path, required=True, metavar="FILE", help="pair file, 'name1 name2' a line")
    p.set_defaults(func=cmd_match)

    p = command_parser(
        sub,
        "reconstruct",
        "SIFT, matching on a pair set, incremental mapping, stats.json",
        "Writes OUTPUT/database.db, the pair file, OUTPUT/sparse/ (the COLMAP model) and OUTPUT/stats.json.",
        "mirror_sfm reconstruct images/ out/ --pairs retrieval -k 20\n"
        "mirror_sfm reconstruct images/ -o out/ --pairs vocabtree --vocab-tree tree.bin",
    )
    p.add_argument("images", type=Path, help="image folder (searched recursively)")
    p.add_argument("output", type=Path, nargs="?", help="output folder (or -o)")
    p.add_argument(
        "-o",
        "--output",
        dest="output_opt",
        type=Path,
        metavar="OUTPUT",
        help="output folder (instead of the positional OUTPUT)",
    )
    add_flags(p, ReconstructionOptions, RECONSTRUCTION_FLAGS)
    add_flags(p, PairsOptions, PAIRS_FLAGS[:1])
    _add_config_arg(p)
    _add_extraction_args(p)
    _add_retrieval_args(p)
    _add_verify_args(p, database=False, defaults=VerifyOptions(shortlist=RECONSTRUCT_SHORTLIST))
    p.set_defaults(func=cmd_reconstruct)

    p = command_parser(
        sub,
        "train",
        "fine-tune the network on gtgen labels (batched mask triplet loss; resumable)",
        "Settings come from the training YAML; the flags below override single values.\nA re-run with "
        "the same output folder resumes from its last checkpoint.",
        "mirror_sfm train --config configs/train.yaml -o outputs/train/run1 --steps 400 --set optim.lr=0.0002",
    )
    p.add_argument(
        "--config", dest="train_config", type=Path, metavar="YAML", help="training YAML (e.g. configs/train.yaml)"
    )
    p.add_argument(
        "-o",
        "--output",
        "--out",
        dest="out",
        metavar="DIR",
        help="run folder (checkpoints, logs, weights); overrides run.out",
    )
    p.add_argument("--steps", type=int, help="overrides run.steps")
    p.add_argument("--device", metavar="auto|cpu|cuda", help="overrides run.device")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one option (repeatable)")
    p.set_defaults(func=cmd_train)

    p = command_parser(
        sub,
        "evaluate",
        "retrieval mAP@k on labelled scenes (gtgen output folders)",
        "Runs the real extraction + retrieval path and scores the ranking against the scenes' overlap "
        "labels\n(MIRorR's AP and the usual AP@k).",
        "mirror_sfm evaluate --split validation --weights outputs/train/run1/weights.pt -k 10 20\n"
        "mirror_sfm evaluate outputs/labels/alexander --gt co:0.5 ct:0.2",
    )
    p.add_argument("scenes", nargs="*", type=Path, help="scene folders (image_list.txt, geolabel/, triplets.json)")
    p.add_argument("--split", help="also evaluate this split of --splits under --labels-root (e.g. validation)")
    p.add_argument(
        "--labels-root",
        type=Path,
        default=Path("outputs/labels"),
        metavar="DIR",
        help="folder of labelled scenes, for --split",
    )
    p.add_argument(
        "--splits",
        type=Path,
        default=None,
        metavar="YAML",
        help="scene splits, for --split (None: configs/splits.yaml of the source checkout)",
    )
    p.add_argument(
        "--gt",
        nargs="+",
        default=["co:0.5", "ct:0.2"],
        metavar="CRITERION:THRESHOLD",
        help="relevant pairs, criterion co | ct | mo",
    )
    p.add_argument("-k", nargs="+", type=int, default=[10, 20], help="cut-offs of mAP@k")
    p.add_argument("--t-sfm", type=float, default=0.2, help="CO = 1 where the symmetric CT reaches this")
    p.add_argument("--features-dir", type=Path, metavar="DIR", help="keep descriptor files here (None: temporary)")
    p.add_argument("-o", "--output", type=Path, help="also write the report as JSON")
    _add_extraction_args(p)
    _add_retrieval_args(p)
    p.set_defaults(func=cmd_evaluate, num_matched=RetrievalOptions().num_matched)

    p = command_parser(
        sub,
        "vocabtree",
        "vocabulary trees for COLMAP, built locally",
        "COLMAP's default trees are internet downloads; this builds one from your own images.",
        "mirror_sfm vocabtree build other_images/ -o tree.bin --words 4096",
    )
    vsub = p.add_subparsers(dest="vocab_command", required=True, metavar="ACTION", help="build: make a tree file")
    b = command_parser(
        vsub,
        "build",
        "build a tree from the SIFT features of a folder of images",
        "Best built from images of other scenes like yours (the tree should not know the scene).",
        "mirror_sfm vocabtree build other_images/ -o tree.bin --words 4096\n"
        "mirror_sfm reconstruct images/ out/ --pairs vocabtree --vocab-tree tree.bin",
    )
    b.add_argument("images", type=Path, help="image folder (searched recursively)")
    b.add_argument("-o", "--output", type=Path, required=True, help="tree file")
    b.add_argument("--words", type=int, default=4096, help="number of visual words")
    b.set_defaults(func=cmd_vocabtree_build)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logger.level
    logger.setLevel(log_level(args))

    def run() -> None:
        final = parse_with_config(parser, argv, args)
        final.func(final)

    try:
        return run_command("mirror_sfm", run, "finished work is kept; re-run to resume")
    finally:
        logger.setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
