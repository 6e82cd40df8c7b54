"""Retrieval mAP on labelled scenes (gtgen output folders, read by `mirror_sfm.labels`), through the real
extraction + retrieval code.

A scene folder holds ``image_list.txt``, ``geolabel/{common_track.txt, mesh_overlap.txt}`` and
``triplets.json`` (whose ``image_dir`` names the photos; else ``SCENE/images``). Every image is a query
against all others of its scene; a database image is relevant when the pair's ratio reaches a threshold:
``co:0.5`` = combined overlap CO >= 0.5 (MIRorR's strong positives), ``ct:0.2`` = symmetric common-track
ratio, ``mo:T`` = symmetric mesh overlap. Both AP definitions of `mirror_sfm.evaluate` are reported.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import MirrorError
from .evaluate import mean_average_precision
from .extract import ExtractionOptions, extract, pooling_of
from .features_io import read_descriptors
from .labels import SceneLabels, load_scene_labels, scene_image_dir  # noqa: F401 (scene_image_dir: API)
from .model import RetrievalModel, load_model
from .retrieval import RetrievalOptions, choose_whitening, retrieve

logger = logging.getLogger(__name__)

CRITERIA = ("co", "ct", "mo")


@dataclass
class EvaluationOptions:
    gt: tuple[str, ...] = ("co:0.5", "ct:0.2")  # ground-truth definitions, 'criterion:threshold'
    ks: tuple[int, ...] = (10, 20)
    t_sfm: float = 0.2  # CO = 1 where the symmetric CT reaches this (MIRorR eq. 4)
    extraction: ExtractionOptions = field(default_factory=ExtractionOptions)
    retrieval: RetrievalOptions = field(default_factory=RetrievalOptions)
    features_dir: str | None = None  # keep descriptor files here (default: a temporary folder)


def parse_gt(spec: str) -> tuple[str, float]:
    """'co:0.5' -> ('co', 0.5)."""
    crit, _, thr = spec.partition(":")
    try:
        value = float(thr)
    except ValueError:
        value = float("nan")
    if crit not in CRITERIA or not 0.0 <= value <= 1.0:
        raise MirrorError(
            f"ground truth must be 'criterion:threshold' with criterion in {'|'.join(CRITERIA)} "
            f"and threshold in [0, 1], got {spec!r}"
        )
    return crit, value


def rank_scene(
    labels: SceneLabels, options: EvaluationOptions, model: RetrievalModel, features: Path
) -> dict[str, list[str]]:
    """Each image's ranked neighbours (names) by the extraction + retrieval code path."""
    present = [nm for nm in labels.names if (labels.image_dir / nm).is_file()]
    if len(present) < len(labels.names):
        logger.warning(
            "scene %s: %d of %d listed images are missing from %s",
            labels.name,
            len(labels.names) - len(present),
            len(labels.names),
            labels.image_dir,
        )
    if len(present) < 2:
        raise MirrorError(f"scene {labels.name}: fewer than two images found in {labels.image_dir}")
    result = extract(labels.image_dir, features, options.extraction, image_names=present, model=model)
    good = [nm for nm in present if nm not in result.skipped]
    names, glob, regional = read_descriptors(features, good, regional=options.retrieval.rerank == "prmac")
    whitening = choose_whitening(options.retrieval, model.whitening, regional, glob)
    ropts = RetrievalOptions(**{**options.retrieval.__dict__, "num_matched": max(options.ks)})
    rmac_global = pooling_of(options.extraction, model) == "rmac"
    nn = retrieve(glob, regional, ropts, whitening=whitening, rmac_global=rmac_global)
    return {names[q]: [names[j] for j in nn.indices[q] if j >= 0] for q in range(len(names))}


def evaluate_scene(
    scene_dir: str | Path, options: EvaluationOptions | None = None, model: RetrievalModel | None = None
) -> dict:
    """{"scene", "images", "seconds", "results": {gt spec: {"queries", "mAP@k" (MIRorR AP), "AP@k"}}}."""
    options = options or EvaluationOptions()
    specs = [(s, *parse_gt(s)) for s in options.gt]
    labels = load_scene_labels(scene_dir)
    model = model or load_model(options.extraction.weights)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="mirror_eval_") as tmp:
        folder = Path(options.features_dir) if options.features_dir else Path(tmp)
        rankings = rank_scene(labels, options, model, folder / f"{labels.name}-global-feats.h5")
    out = {"scene": labels.name, "images": len(rankings), "seconds": round(time.time() - t0, 2), "results": {}}
    for spec, crit, thr in specs:
        gt = labels.ground_truth(crit, thr, options.t_sfm)
        res: dict = {}
        for k in options.ks:
            m = mean_average_precision(rankings, gt, k, queries=list(rankings))
            res["queries"] = m.num_queries
            res[f"mAP@{k}"] = m.map_mirror
            res[f"AP@{k}"] = m.map_at_k
        out["results"][spec] = res
    return out


def evaluate_scenes(
    scene_dirs: list[str | Path], options: EvaluationOptions | None = None, model: RetrievalModel | None = None
) -> dict:
    """Per-scene results and their mean over scenes (scenes with no query for a GT are left out of it)."""
    options = options or EvaluationOptions()
    if not scene_dirs:
        raise MirrorError("no scene to evaluate")
    for spec in options.gt:
        parse_gt(spec)
    model = model or load_model(options.extraction.weights)
    scenes = [evaluate_scene(d, options, model) for d in scene_dirs]
    mean: dict = {}
    for spec in options.gt:
        rows = [s["results"][spec] for s in scenes if s["results"][spec]["queries"] > 0]
        mean[spec] = {
            key: float(np.mean([r[key] for r in rows])) if rows else float("nan")
            for key in (scenes[0]["results"][spec])
            if key != "queries"
        }
        mean[spec]["scenes"] = len(rows)
    return {"model": model.name, "scenes": scenes, "mean": mean}


def format_table(report: dict) -> str:
    """Plain-text table: one line per scene and GT, then the means."""
    lines = []
    for s in report["scenes"]:
        for spec, res in s["results"].items():
            vals = "  ".join(f"{k} {v:.4f}" for k, v in res.items() if k != "queries")
            lines.append(f"{s['scene']:<24} {spec:<8} {s['images']:>5} img {res['queries']:>5} q  {vals}")
    for spec, res in report["mean"].items():
        vals = "  ".join(f"{k} {v:.4f}" for k, v in res.items() if k != "scenes")
        lines.append(f"{'mean (' + str(res['scenes']) + ' scenes)':<24} {spec:<8} {'':>17}  {vals}")
    return "\n".join(lines)
