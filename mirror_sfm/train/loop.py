"""`mirror_sfm train`: fine-tune the retrieval backbone with the batched mask triplet loss (MIRorR sec. 4).

OUT/ receives checkpoints/last.pt (every `checkpoint_every` steps, atomic; a re-run resumes from it),
log.csv (loss terms, learning rate, step and data times), val.csv (mAP on the validation scenes every
`validate_every` steps) and finally the fp16 weights file that `load_model` reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..errors import MirrorError
from ..extract import resolve_device
from ..model import RetrievalModel, load_model, save_weights
from .checkpoint import load_checkpoint, save_checkpoint
from .config import ModelOptions, TrainConfig
from .data import TripletBatches, load_pseudo_scene, load_scenes, pseudo_label_scenes, split_scenes
from .logs import CSVLog, TensorBoard
from .losses import batched_loss, masked_descriptors

logger = logging.getLogger(__name__)

LOG_FIELDS = [
    "step",
    "loss",
    "easy",
    "weak",
    "hard",
    "mask",
    "d_pos",
    "d_neg",
    "rank_ok",
    "same",
    "d_same",
    "lr",
    "step_time",
    "data_time",
]
VAL_FIELDS = ["step", "scene", "gt", "queries", "metric", "value"]
TRAIN_POOLINGS = ("mac", "gem")


@dataclass
class TrainResult:
    out: Path
    step: int
    weights: Path | None
    last_terms: dict = field(default_factory=dict)
    resumed_from: int = 0


# ----------------------------------------------------------------------------- model set-up


def build_model(options: ModelOptions) -> RetrievalModel:
    """Backbone from ImageNet or a weights file, with the training pooling (saved with the weights, so the model is
    served as trained); any whitening it carries is dropped (descriptors change)."""
    if options.pooling not in TRAIN_POOLINGS:
        raise MirrorError(f"training pooling must be mac or gem, got {options.pooling!r}")
    model = load_model(options.init, backbone=options.backbone)
    if model.backbone.info.name != options.backbone:
        logger.info("initial weights %s hold backbone %s", options.init, model.backbone.info.name)
    model.whitening = None
    model.pooling, model.gem_p = options.pooling, float(options.gem_p)
    return model


def freeze_early_blocks(model: RetrievalModel, num_blocks: int) -> int:
    """Freeze the stem and the first `num_blocks` blocks (-1: all blocks); returns the trainable parameter count."""
    bb = model.backbone
    blocks = getattr(bb, "blocks", None)
    if num_blocks != 0:
        if blocks is None or not hasattr(bb, "stem"):
            raise MirrorError(f"backbone {bb.info.name} has no stem/blocks layout to freeze")
        n = len(blocks) if num_blocks < 0 else min(num_blocks, len(blocks))
        for module in [bb.stem, *list(blocks)[:n]]:
            for p in module.parameters():
                p.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    """Train mode, with BatchNorm layers kept in eval mode (running ImageNet statistics) when `freeze_bn`."""
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def batch_loss(model: RetrievalModel, batch: dict, config: TrainConfig, device: torch.device):
    """Forward a (3, N) batch and return (loss, terms)."""
    images = batch["images"].to(device, non_blocking=True)
    r, n = images.shape[:2]
    fmap = model(images.flatten(0, 1))
    desc = model.describe_map(fmap)[0].reshape(r, n, -1)  # the descriptor extraction serves
    masked = None
    if config.loss.use_masks:
        fm = fmap.reshape(r, n, *fmap.shape[1:])
        masks = batch["masks"].to(device)
        valid = batch["mask_valid"].to(device)
        masked = {}
        for p, (key, row) in enumerate((("strong", 1), ("weak", 2))):
            if key not in config.loss.mask_pairs:
                continue
            da, va = masked_descriptors(fm[0], masks[:, 2 * p], config.model.mask_min_fraction)
            dp, vp = masked_descriptors(fm[row], masks[:, 2 * p + 1], config.model.mask_min_fraction)
            masked[key] = (da, dp, valid[:, p] & va & vp)
    negative_valid = batch.get("negative_valid")
    return batched_loss(desc, masked, config.loss, negative_valid.to(device) if negative_valid is not None else None)


# ----------------------------------------------------------------------------- validation / export


def validate(model: RetrievalModel, scene_dirs: list[Path], config: TrainConfig, device: torch.device) -> dict:
    """Retrieval mAP on the validation scenes (real extraction + retrieval code path)."""
    from ..extract import ExtractionOptions
    from ..retrieval import RetrievalOptions
    from ..scene_eval import EvaluationOptions, evaluate_scenes

    run = config.run
    options = EvaluationOptions(
        gt=tuple(run.val_gt),
        ks=tuple(run.val_ks),
        extraction=ExtractionOptions(resize=run.val_resize, pooling="model", device=str(device), num_workers=0),
        retrieval=RetrievalOptions(rerank=run.val_rerank),
    )
    model.eval()
    try:
        return evaluate_scenes(scene_dirs, options, model)
    finally:
        set_train_mode(model, config.model.freeze_bn)


def fit_training_whitening(model: RetrievalModel, scene_dirs: list[Path], config: TrainConfig, device) -> None:
    """PCA whitening fitted on the regional descriptors of the training scenes' images (optional)."""
    import tempfile

    from ..extract import ExtractionOptions, extract
    from ..features_io import read_descriptors
    from ..labels import load_scene_labels
    from ..whitening import fit_pca_whitening

    vectors = []
    opts = ExtractionOptions(resize=config.run.val_resize, pooling="model", device=str(device), num_workers=0)
    model.eval()
    with tempfile.TemporaryDirectory(prefix="mirror_whiten_") as tmp:
        for d in scene_dirs:
            labels = load_scene_labels(d)
            names = [nm for nm in labels.names if (labels.image_dir / nm).is_file()]
            h5 = Path(tmp) / f"{labels.name}.h5"
            extract(labels.image_dir, h5, opts, image_names=names, model=model)
            _, _, reg = read_descriptors(h5, names, regional=True)
            vectors.append(reg.reshape(-1, reg.shape[-1]).astype("float32"))
    import numpy as np

    model.whitening = fit_pca_whitening(np.concatenate(vectors), config.run.whitening_dim)
    logger.info(
        "PCA whitening to %d-d fitted on %d regional vectors", model.whitening.dim, sum(len(v) for v in vectors)
    )


# ----------------------------------------------------------------------------- loop


def train(
    config: TrainConfig,
    train_scenes: list[Path] | None = None,
    val_scenes: list[Path] | None = None,
    callback: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Train until `config.run.steps`, resuming from OUT/checkpoints/last.pt when it exists.

    `train_scenes` / `val_scenes` default to the splits file's train / validation scenes under data.root.
    `callback(step, terms)` runs after every step (tests use it to interrupt a run).
    """
    run = config.run
    out = Path(run.out)
    out.mkdir(parents=True, exist_ok=True)
    threads_before = torch.get_num_threads()
    if run.threads > 0:
        torch.set_num_threads(run.threads)
    try:
        return _train(config, out, train_scenes, val_scenes, callback)
    finally:
        torch.set_num_threads(threads_before)


def _train(config: TrainConfig, out: Path, train_scenes, val_scenes, callback) -> TrainResult:
    run = config.run
    torch.manual_seed(run.seed)
    device = resolve_device(run.device)

    pseudo: list[Path] = []
    if train_scenes is None:
        train_scenes = split_scenes(config.data.root, config.data.splits, config.data.train_split)
        pseudo = pseudo_label_scenes(
            config.data.root, config.data.splits, config.data.train_split, config.data.pseudo_labels
        )
        train_scenes = [p for p in train_scenes if Path(p).name not in {q.name for q in pseudo}]
    if val_scenes is None:
        val_scenes = (
            split_scenes(config.data.root, config.data.splits, config.data.val_split) if run.validate_every > 0 else []
        )
        if run.validate_every > 0 and not val_scenes:
            logger.info("no labelled validation scene under %s: validation off", config.data.root)
    if not train_scenes and not pseudo:
        raise MirrorError(
            f"no labelled training scene under {config.data.root} (split {config.data.train_split!r} "
            f"of {config.data.splits}): write labels with gtgen first"
        )
    scenes = load_scenes(list(train_scenes), config.data.negative_max_co)
    for p in pseudo:
        scene = load_pseudo_scene(p, config.data)
        logger.info(
            "scene %s (pseudo-labels from geometric verification): %d images, %d of %d anchors have strong and "
            "weak positives, %d with a same-scene negative",
            scene.name,
            len(scene.names),
            len(scene.anchors),
            scene.num_listed_anchors,
            sum(1 for a in scene.anchors if a.negatives),
        )
        scenes.append(scene)
    train_scenes = [*train_scenes, *pseudo]
    dataset = TripletBatches(scenes, config.data, config.augment, run.seed)
    scene_names = [s.name for s in dataset.scenes]

    model = build_model(config.model)
    trainable = freeze_early_blocks(model, config.model.freeze_blocks)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    o = config.optim
    optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=o.lr_step, gamma=o.lr_gamma)
    ckpt = out / "checkpoints" / "last.pt"
    step = 0
    if ckpt.is_file():
        step = load_checkpoint(ckpt, model, optimizer, scheduler, config.to_dict(), scene_names)
        logger.info("resuming from %s at step %d", ckpt, step)
    resumed_from = step
    logger.info(
        "training %s on %s: %d trainable parameters, %d scenes, %d columns x %d rows at %d px, steps %d -> %d",
        model.backbone.info.name,
        device,
        trainable,
        len(dataset.scenes),
        config.data.columns,
        4 if config.data.same_scene_negatives else 3,
        config.augment.size,
        step,
        run.steps,
    )

    log = CSVLog(out / "log.csv", LOG_FIELDS, step)
    val_log = CSVLog(out / "val.csv", VAL_FIELDS, step)
    tb = TensorBoard(out / "tensorboard", run.tensorboard)
    loader = DataLoader(
        dataset,
        batch_size=None,
        sampler=range(step, max(step, run.steps)),
        num_workers=config.data.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    set_train_mode(model, config.model.freeze_bn)
    terms_out: dict = {}
    try:
        t_data = time.perf_counter()
        bar = tqdm(loader, total=max(0, run.steps - step), desc="train", unit="step", disable=not run.progress)
        for batch in bar:
            t0 = time.perf_counter()
            data_time = t0 - t_data
            lr = optimizer.param_groups[0]["lr"]
            loss, terms = batch_loss(model, batch, config, device)
            if not torch.isfinite(loss):
                raise MirrorError(f"loss is {loss.item()} at step {step + 1}: lower optim.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if device.type == "cuda":
                torch.cuda.synchronize()
            step_time = time.perf_counter() - t0
            terms_out = {"loss": loss.item(), **{k: v.item() for k, v in terms.items()}}
            if step % max(1, run.log_every) == 0 or step == run.steps:
                log.write({"step": step, **terms_out, "lr": lr, "step_time": step_time, "data_time": data_time})
                tb.scalars(step, {f"train/{k}": v for k, v in terms_out.items()} | {"train/lr": lr})
            bar.set_postfix(loss=f"{terms_out['loss']:.3f}", s_step=f"{step_time:.2f}")
            if step % max(1, run.checkpoint_every) == 0 or step == run.steps:
                save_checkpoint(ckpt, step, model, optimizer, scheduler, config.to_dict(), scene_names)
            if run.validate_every > 0 and val_scenes and step % run.validate_every == 0:
                _log_validation(validate(model, list(val_scenes), config, device), step, val_log, tb)
            if callback is not None:
                callback(step, terms_out)
            t_data = time.perf_counter()
    finally:
        log.close()
        val_log.close()
        tb.close()

    weights = None
    if run.export:
        if run.export_whitening:
            fit_training_whitening(model, list(train_scenes), config, device)
        weights = out / run.export
        model.meta = {
            "name": f"{model.backbone.info.name}-mirror-{Path(run.out).name}",
            "trained_steps": step,
            "train_scenes": [Path(p).name for p in train_scenes],
            "pseudo_labelled_scenes": [p.name for p in pseudo],
            "same_scene_negatives": config.data.same_scene_negatives,
            "pooling": model.pooling,
            "train_size": config.augment.size,
        }
        save_weights(model.cpu(), weights)
        logger.info("weights (fp16) -> %s", weights)
    return TrainResult(out, step, weights, terms_out, resumed_from)


def _log_validation(report: dict, step: int, val_log: CSVLog, tb: TensorBoard) -> None:
    for s in report["scenes"] + [{"scene": "mean", "results": report["mean"]}]:
        for spec, res in s["results"].items():
            for metric, value in res.items():
                if metric in ("queries", "scenes"):
                    continue
                val_log.write(
                    {
                        "step": step,
                        "scene": s["scene"],
                        "gt": spec,
                        "queries": res.get("queries", res.get("scenes")),
                        "metric": metric,
                        "value": value,
                    }
                )
                if s["scene"] == "mean":
                    tb.scalars(step, {f"val/{spec}/{metric}": value})
    logger.info(
        "step %d validation: %s",
        step,
        {spec: {k: round(v, 4) for k, v in r.items() if k != "scenes"} for spec, r in report["mean"].items()},
    )
