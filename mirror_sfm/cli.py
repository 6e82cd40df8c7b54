"""`mirror_sfm` command line: a thin layer over the library (extract, pairs, whiten, match, reconstruct, vocabtree,
train, evaluate)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml

from . import __version__
from .console import run_command
from .errors import MirrorError
from .extract import ExtractionOptions
from .pairs import PairsOptions
from .retrieval import RetrievalOptions
from .verify import VerifyOptions

logger = logging.getLogger("mirror_sfm")


def _add_extraction_args(p: argparse.ArgumentParser) -> None:
    d = ExtractionOptions()
    g = p.add_argument_group("descriptors")
    g.add_argument("--weights", default=d.weights,
                   help="'default' (shipped fine-tuned weights, else ImageNet), 'imagenet', or a checkpoint path")
    g.add_argument("--resize", type=int, default=d.resize, help="long side in px of the whole image (default %(default)s)")
    g.add_argument("--pooling", choices=["mac", "gem", "rmac"], default=d.pooling, help="global descriptor (default %(default)s)")
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--device", default=d.device, help="auto | cpu | cuda (default %(default)s)")
    g.add_argument("--num-workers", type=int, default=d.num_workers, help="image decoding processes")


def _add_retrieval_args(p: argparse.ArgumentParser) -> None:
    d = RetrievalOptions()
    g = p.add_argument_group("retrieval")
    g.add_argument("--rerank", choices=["prmac", "none"], default=d.rerank,
                   help="re-rank a shortlist by PR-MAC regional matching (default %(default)s)")
    g.add_argument("--prmac-shortlist", type=int, default=d.shortlist,
                   help="CNN candidates re-ranked by PR-MAC per query (default %(default)s)")
    g.add_argument("--query-expansion", type=int, default=d.query_expansion, metavar="N",
                   help="alpha query expansion over the top N (0 = off, default)")
    g.add_argument("--whitening", choices=["none", "model", "database"], default=d.whitening,
                   help="descriptor whitening: none, the model's own, or PCA fitted on these images (default %(default)s)")
    g.add_argument("--exact-max", type=int, default=d.exact_max, help="exact search up to this many images, IVF above")


def _add_verify_args(p: argparse.ArgumentParser, database: bool) -> None:
    d = VerifyOptions()
    g = p.add_argument_group("geometric verification of the shortlist")
    g.add_argument("--verify", choices=["sift", "none"], default=d.method,
                   help="sift: re-rank each image's CNN shortlist by SIFT inliers (COLMAP's matching rule and "
                        "two-view geometry); none: CNN + PR-MAC order only, the fast mode (default %(default)s)")
    g.add_argument("--shortlist", type=int, default=d.shortlist, metavar="N",
                   help="CNN candidates per image that are verified (default %(default)s)")
    g.add_argument("--verify-features", type=int, default=d.num_features, metavar="N",
                   help="SIFT features per image used to verify, largest scale first (default %(default)s)")
    if database:
        g.add_argument("--database", type=Path,
                       help="COLMAP database with SIFT for these images (colmap feature_extractor, "
                            "pycolmap.extract_features): read-only, nothing is extracted. Default: light SIFT "
                            "(1024 features, 1024 px) cached in OUTPUT-sift.db")


def _verify_options(args) -> VerifyOptions:
    return VerifyOptions(method=args.verify, shortlist=args.shortlist, num_features=args.verify_features)


def _extraction_options(args) -> ExtractionOptions:
    return ExtractionOptions(resize=args.resize, pooling=args.pooling, weights=args.weights,
                             batch_size=args.batch_size, device=args.device, num_workers=args.num_workers)


def _retrieval_options(args) -> RetrievalOptions:
    return RetrievalOptions(num_matched=args.num_matched, rerank=args.rerank, shortlist=args.prmac_shortlist,
                            query_expansion=args.query_expansion, whitening=args.whitening, exact_max=args.exact_max)


def _apply_config(args: argparse.Namespace, argv: list[str]) -> None:
    """`--config FILE.yaml` fills options (keys are long option names) that the command line did not give."""
    path = getattr(args, "config", None)
    if not path:
        return
    path = Path(path)
    if not path.is_file():
        raise MirrorError(f"config file not found: {path}")
    conf = yaml.safe_load(path.read_text()) or {}
    tokens = {a.split("=")[0] for a in argv if a.startswith("-")}
    given = {a.dest for a in _SUBPARSERS[args.command]._actions if tokens & set(a.option_strings)}
    for key, value in conf.items():
        dest = key.replace("-", "_")
        if not hasattr(args, dest):
            raise MirrorError(f"{path}: unknown option {key!r} for '{args.command}'")
        if dest not in given:
            setattr(args, dest, value)


def cmd_extract(args) -> None:
    from .extract import extract
    res = extract(args.images, args.output, _extraction_options(args))
    print(f"{res.num_extracted} described, {res.num_cached} cached, {len(res.skipped)} unreadable -> {res.path}")


def cmd_pairs(args) -> None:
    from .pairs import generate_pairs
    options = PairsOptions(_extraction_options(args), _retrieval_options(args), args.sequential, args.symmetric,
                           _verify_options(args))
    pairs = generate_pairs(args.images, args.output, args.num_matched, features=args.features,
                           options=options, scores_output=args.scores, database=args.database)
    print(f"{len(pairs)} pairs -> {args.output}")


def cmd_whiten(args) -> None:
    from .features_io import read_descriptors
    from .model import load_model, save_weights
    from .io_utils import check_writable
    from .whitening import fit_pca_whitening
    check_writable(args.output)
    _, glob, regional = read_descriptors(args.features, regional=True)
    model = load_model(args.weights)
    model.whitening = fit_pca_whitening(regional.reshape(-1, regional.shape[-1]), args.dim)
    model.meta["whitening_fitted_on"] = str(args.features)
    save_weights(model, args.output)
    print(f"PCA whitening to {model.whitening.dim}-d fitted on {len(glob)} images -> {args.output}")


def cmd_match(args) -> None:
    from .colmap import match_pairs
    match_pairs(args.database, args.pairs)
    print(f"matched the pairs of {args.pairs} into {args.database}")


def cmd_reconstruct(args) -> None:
    from .colmap import ReconstructionOptions, reconstruct
    retrieval_kwargs = {"options": PairsOptions(_extraction_options(args), _retrieval_options(args),
                                                args.sequential, False, _verify_options(args))}
    options = ReconstructionOptions(pairs=args.pairs, num_matched=args.num_matched, vocab_tree=args.vocab_tree,
                                    sequential_overlap=args.sequential_overlap, max_image_size=args.max_image_size,
                                    max_num_features=args.max_num_features, camera_mode=args.camera_mode,
                                    device=args.device, mapper=args.mapper, retrieval_kwargs=retrieval_kwargs)
    stats = reconstruct(args.images, args.output, options)
    print(json.dumps({k: stats[k] for k in ("method", "images", "registered", "pairs_to_match",
                                            "sparse_points", "mean_reprojection_error") if k in stats}))


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
    options = EvaluationOptions(gt=tuple(args.gt), ks=tuple(args.k), t_sfm=args.t_sfm,
                                extraction=_extraction_options(args), retrieval=_retrieval_options(args),
                                features_dir=str(args.features_dir) if args.features_dir else None)
    report = evaluate_scenes(scenes, options)
    print(format_table(report))
    if args.output:
        write_text_atomic(args.output, json.dumps(report, indent=1) + "\n")


_SUBPARSERS: dict[str, argparse.ArgumentParser] = {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mirror_sfm", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mirror_sfm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("extract", help="describe a folder of images into an h5 file (resumable)")
    p.add_argument("images", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="descriptor file (.h5)")
    _add_extraction_args(p)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("pairs", help="write a COLMAP/hloc pair file by matchable-image retrieval")
    p.add_argument("images", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="pair file: 'name1 name2' a line")
    p.add_argument("--num-matched", "-k", type=int, default=20, help="neighbours per image (default %(default)s)")
    p.add_argument("--features", type=Path, help="descriptor cache (default: OUTPUT-global-feats.h5 beside it)")
    p.add_argument("--scores", type=Path,
                   help="also write 'name1 name2 cnn_score inliers' lines here (inliers: verified SIFT inliers, "
                        "0 = failed, -1 = not verified; no inliers field with --verify none)")
    p.add_argument("--sequential", type=int, default=0, metavar="W", help="add the next W images in name order")
    p.add_argument("--symmetric", action="store_true", help="drop (b, a) when (a, b) is listed")
    p.add_argument("--config", type=Path, help="YAML file of option defaults (e.g. configs/pairs.yaml)")
    _add_extraction_args(p)
    _add_retrieval_args(p)
    _add_verify_args(p, database=True)
    p.set_defaults(func=cmd_pairs)
    _SUBPARSERS["pairs"] = p

    p = sub.add_parser("whiten", help="fit PCA whitening on a descriptor file and save it with the weights")
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--weights", default="default")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("-o", "--output", type=Path, required=True, help="new weights file (.pt)")
    p.set_defaults(func=cmd_whiten)

    p = sub.add_parser("match", help="match the pairs of a pair file into a COLMAP database (pycolmap)")
    p.add_argument("--database", type=Path, required=True)
    p.add_argument("--pairs", type=Path, required=True)
    p.set_defaults(func=cmd_match)

    p = sub.add_parser("reconstruct", help="SIFT, matching on a pair set, incremental mapping, stats.json")
    p.add_argument("images", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--pairs", choices=["retrieval", "vocabtree", "exhaustive", "sequential"], default="retrieval")
    p.add_argument("--num-matched", "-k", type=int, default=20)
    p.add_argument("--vocab-tree", type=Path, help="tree file from 'mirror_sfm vocabtree build' (for --pairs vocabtree)")
    p.add_argument("--mapper", choices=["incremental", "global"], default="incremental")
    p.add_argument("--sequential", type=int, default=0, metavar="W", help="with retrieval: add the next W images")
    p.add_argument("--sequential-overlap", type=int, default=10, help="window of --pairs sequential (default %(default)s)")
    p.add_argument("--camera-mode", choices=["auto", "single", "per_image"], default="auto", help="COLMAP camera sharing")
    p.add_argument("--max-image-size", type=int, default=1600, help="SIFT: long side limit (default %(default)s)")
    p.add_argument("--max-num-features", type=int, default=8192, help="SIFT features per image (default %(default)s)")
    p.add_argument("--config", type=Path, help="YAML file of option defaults")
    _add_extraction_args(p)
    _add_retrieval_args(p)
    _add_verify_args(p, database=False)
    p.set_defaults(func=cmd_reconstruct)
    _SUBPARSERS["reconstruct"] = p

    p = sub.add_parser("train", help="fine-tune the network on gtgen labels (batched mask triplet loss; resumable)")
    p.add_argument("--config", dest="train_config", type=Path, help="training YAML (e.g. configs/train.yaml)")
    p.add_argument("--out", help="run folder (checkpoints, logs, weights); overrides run.out")
    p.add_argument("--steps", type=int, help="overrides run.steps")
    p.add_argument("--device", help="auto | cpu | cuda; overrides run.device")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one option (repeatable)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="retrieval mAP@k on labelled scenes (gtgen output folders)")
    p.add_argument("scenes", nargs="*", type=Path, help="scene folders (image_list.txt, geolabel/, triplets.json)")
    p.add_argument("--split", help="also evaluate this split of --splits under --labels-root (e.g. validation)")
    p.add_argument("--labels-root", type=Path, default=Path("outputs/labels"))
    p.add_argument("--splits", type=Path, default=Path("configs/splits.yaml"))
    p.add_argument("--gt", nargs="+", default=["co:0.5", "ct:0.2"],
                   help="relevant pairs, CRITERION:THRESHOLD with co | ct | mo (default %(default)s)")
    p.add_argument("-k", nargs="+", type=int, default=[10, 20], help="cut-offs of mAP@k (default %(default)s)")
    p.add_argument("--t-sfm", type=float, default=0.2, help="CO = 1 where the symmetric CT reaches this")
    p.add_argument("--features-dir", type=Path, help="keep descriptor files here (default: temporary)")
    p.add_argument("-o", "--output", type=Path, help="also write the report as JSON")
    _add_extraction_args(p)
    _add_retrieval_args(p)
    p.set_defaults(func=cmd_evaluate, num_matched=20)

    p = sub.add_parser("vocabtree", help="vocabulary trees for COLMAP, built locally")
    vsub = p.add_subparsers(dest="vocab_command", required=True)
    b = vsub.add_parser("build", help="build a tree from the SIFT features of a folder of images")
    b.add_argument("images", type=Path)
    b.add_argument("-o", "--output", type=Path, required=True)
    b.add_argument("--words", type=int, default=4096, help="number of visual words (default %(default)s)")
    b.set_defaults(func=cmd_vocabtree_build)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.verbose:
        logger.setLevel(logging.DEBUG)

    def run() -> None:
        _apply_config(args, argv)
        args.func(args)

    return run_command("mirror_sfm", run, "finished work is kept; re-run to resume")


if __name__ == "__main__":
    sys.exit(main())
