"""Training ablation of issue 4: ImageNet init vs fine-tuned variants, validation mAP (RESULTS.md §9).

Each variant is one `mirror_sfm train` run (configs/train.yaml plus the overrides below) followed by one
`mirror_sfm evaluate --split validation`; the ImageNet rows are evaluations only. Finished runs (weights.pt)
and evaluations (JSON) are skipped, so the script resumes; `--table-only` just prints the Markdown table.

    python benchmarks/train_ablation.py                 # all variants, CPU: ~1.5 h on 2 cores
    python benchmarks/train_ablation.py --only imagenet-mac-prmac B-mtl
    python benchmarks/train_ablation.py --table-only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CPU = ["run.threads=1", "run.validate_every=0", "run.checkpoint_every=100", "run.progress=false"]
# §9 ran with configs/train.yaml's crops of the time (224 px, 50-100 % of the image; the file now says 384 px, 70-100 %)
CPU += ["augment.size=224", "augment.scale=[0.5,1.0]"]

# name -> (description, train overrides or None for an evaluation-only row, steps, evaluate options)
VARIANTS: dict[str, tuple[str, list[str] | None, int, list[str]]] = {
    "imagenet-mac": ("ImageNet init, MAC", None, 0, ["--pooling", "mac", "--rerank", "none"]),
    "imagenet-rmac": ("ImageNet init, R-MAC", None, 0, ["--pooling", "rmac", "--rerank", "none"]),
    "imagenet-mac-prmac": (
        "ImageNet init, MAC + PR-MAC (the shipped default)",
        None,
        0,
        ["--pooling", "mac", "--rerank", "prmac"],
    ),
    "C-tl": (
        "TL: easy term only (eqs. 5-6), no masks, lr 2e-3, 8 blocks frozen",
        ["loss.use_masks=false", "loss.lambda_weak=0", "loss.lambda_hard=0", "model.freeze_blocks=8"],
        400,
        [],
    ),
    "A-batched": (
        "batched easy+weak+hard (eq. 8), no masks, lr 2e-3, 8 blocks frozen",
        ["loss.use_masks=false", "model.freeze_blocks=8"],
        400,
        [],
    ),
    "D-mtl-noweak": (
        "MTL (eq. 7) without weak/hard terms, lr 2e-3, 8 blocks frozen",
        ["loss.use_masks=true", "loss.lambda_weak=0", "loss.lambda_hard=0", "model.freeze_blocks=8"],
        400,
        [],
    ),
    "B-mtl": (
        "MTL + batched (eqs. 7-8, the paper's loss), lr 2e-3, 8 blocks frozen",
        ["loss.use_masks=true", "model.freeze_blocks=8"],
        400,
        [],
    ),
    "E-batched-lr2e-4": (
        "batched, no masks, lr 2e-4, 8 blocks frozen",
        ["loss.use_masks=false", "optim.lr=0.0002", "model.freeze_blocks=8"],
        300,
        [],
    ),
    "H-mtl-lr2e-4": (
        "MTL + batched, lr 2e-4, 8 blocks frozen",
        ["loss.use_masks=true", "optim.lr=0.0002", "model.freeze_blocks=8"],
        300,
        [],
    ),
    "I-mtl-lr1e-4": (
        "MTL + batched, lr 1e-4, 8 blocks frozen",
        ["loss.use_masks=true", "optim.lr=0.0001", "model.freeze_blocks=8"],
        300,
        [],
    ),
    "J-mtl-lr5e-5": (
        "MTL + batched, lr 5e-5, 8 blocks frozen",
        ["loss.use_masks=true", "optim.lr=0.00005", "model.freeze_blocks=8"],
        300,
        [],
    ),
    "F-batched-head-lr2e-4": (
        "batched, no masks, lr 2e-4, head conv only",
        ["loss.use_masks=false", "optim.lr=0.0002", "model.freeze_blocks=-1"],
        300,
        [],
    ),
    "G-mtl-head-lr2e-3": (
        "MTL + batched, lr 2e-3, head conv only",
        ["loss.use_masks=true", "model.freeze_blocks=-1"],
        300,
        [],
    ),
}
EVAL = ["--split", "validation", "-k", "10", "20", "100", "--gt", "co:0.5", "ct:0.2"]


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def run_variant(name: str, out: Path) -> None:
    _, overrides, steps, eval_opts = VARIANTS[name]
    report = out / f"{name}.json"
    if overrides is None:
        weights = "imagenet"
    else:
        run_dir = out / "runs" / name
        weights = str(run_dir / "weights.pt")
        if not Path(weights).exists():
            sets = [a for o in CPU + overrides for a in ("--set", o)]
            run(
                [
                    sys.executable,
                    "-m",
                    "mirror_sfm",
                    "train",
                    "--config",
                    "configs/train.yaml",
                    "--out",
                    str(run_dir),
                    "--steps",
                    str(steps),
                    *sets,
                ]
            )
        eval_opts = eval_opts or ["--pooling", "mac", "--rerank", "prmac"]
    if not report.exists():
        run(
            [sys.executable, "-m", "mirror_sfm", "evaluate", *EVAL, "--weights", weights, *eval_opts, "-o", str(report)]
        )


def table(out: Path) -> str:
    head = (
        "| variant | steps | AP@10 CO≥0.5 | mAP@10 CO≥0.5 | AP@100 CO≥0.5 | AP@10 CT≥0.2 | mAP@10 CT≥0.2 "
        "| AP@10 CO≥0.5 vs ImageNet+PR-MAC |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    base = None
    reports = {n: json.loads((out / f"{n}.json").read_text()) for n in VARIANTS if (out / f"{n}.json").exists()}
    if "imagenet-mac-prmac" in reports:
        base = reports["imagenet-mac-prmac"]["mean"]["co:0.5"]["AP@10"]
    for name, rep in reports.items():
        desc, _, steps, _ = VARIANTS[name]
        co, ct = rep["mean"]["co:0.5"], rep["mean"]["ct:0.2"]
        delta = f"{co['AP@10'] - base:+.3f}" if base is not None else "–"
        lines.append(
            f"| {desc} | {steps or '–'} | {co['AP@10']:.3f} | {co['mAP@10']:.3f} | {co['AP@100']:.3f} "
            f"| {ct['AP@10']:.3f} | {ct['mAP@10']:.3f} | {delta} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("outputs/ablation"))
    p.add_argument("--only", nargs="+", choices=list(VARIANTS), help="variants to run (default: all)")
    p.add_argument("--table-only", action="store_true", help="print the table from finished evaluations")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        for name in args.only or VARIANTS:
            run_variant(name, args.out)
    print(table(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
