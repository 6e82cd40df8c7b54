"""Training configuration: one dataclass per YAML section (data, augment, loss, model, optim, run)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import MirrorError
from .augment import AugmentOptions
from .data import DataOptions
from .losses import LossOptions


@dataclass
class ModelOptions:
    """`init`: starting weights (imagenet | a weights file). `freeze_blocks`: keep the stem and the first N
    backbone blocks fixed (cheaper steps on CPU; -1 freezes all blocks, training only the head).
    `freeze_bn`: BatchNorm keeps its ImageNet statistics (small batches). `mask_min_fraction`: share of a
    feature cell's pixels a mask must cover for the cell to count in masked MAC. `pooling` (mac | gem) and `gem_p`
    (GeM's exponent): the global descriptor trained, saved in the weights file and served by extraction."""

    backbone: str = "efficientnet-lite0"
    init: str = "imagenet"
    pooling: str = "mac"
    gem_p: float = 3.0
    freeze_blocks: int = 0
    freeze_bn: bool = True
    mask_min_fraction: float = 0.5


@dataclass
class OptimOptions:
    """SGD with momentum; the learning rate is multiplied by `lr_gamma` every `lr_step` steps."""

    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step: int = 10000
    lr_gamma: float = 0.9


@dataclass
class RunOptions:
    """Where and how long. `validate_every` 0 turns validation off; `export` (relative to `out`) receives
    the fp16 weights at the end; `export_whitening` also fits PCA whitening on the training scenes."""

    out: str = "outputs/train/run"
    steps: int = 100000
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch CPU threads (0: torch's default)
    checkpoint_every: int = 500
    log_every: int = 1  # CSV rows every N steps
    validate_every: int = 5000
    val_resize: int = 384
    val_ks: tuple[int, ...] = (10, 20)
    val_gt: tuple[str, ...] = ("co:0.5", "ct:0.2")
    val_rerank: str = "prmac"
    tensorboard: bool = False
    export: str = "weights.pt"
    export_whitening: bool = False
    whitening_dim: int = 256
    progress: bool = True


@dataclass
class TrainConfig:
    data: DataOptions = field(default_factory=DataOptions)
    augment: AugmentOptions = field(default_factory=AugmentOptions)
    loss: LossOptions = field(default_factory=LossOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    optim: OptimOptions = field(default_factory=OptimOptions)
    run: RunOptions = field(default_factory=RunOptions)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(current: Any, value: Any, where: str) -> Any:
    """Match a YAML value to the default's type (tuples from lists, floats from ints)."""
    if isinstance(current, tuple):
        if not isinstance(value, (list, tuple)):
            raise MirrorError(f"{where}: expected a list, got {value!r}")
        return tuple(value)
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise MirrorError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, float) and isinstance(value, str):
        try:  # YAML 1.1 reads 2e-3 (no dot) as a string; a float option takes it as the number it means
            return float(value)
        except ValueError:
            pass
    if isinstance(current, (int, float)) and not isinstance(value, (int, float)):
        raise MirrorError(f"{where}: expected a number, got {value!r}")
    if isinstance(current, str) and not isinstance(value, str):
        raise MirrorError(f"{where}: expected a string, got {value!r}")
    return value


def update_config(config: TrainConfig, data: dict, source: str = "config") -> TrainConfig:
    """Set the sections' fields from a nested dict; unknown sections or keys are errors."""
    for section, values in (data or {}).items():
        if not hasattr(config, section):
            raise MirrorError(
                f"{source}: unknown section {section!r} "
                f"(sections: {', '.join(f.name for f in dataclasses.fields(config))})"
            )
        obj = getattr(config, section)
        if not isinstance(values, dict):
            raise MirrorError(f"{source}: section {section!r} must be a mapping")
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in {f.name for f in dataclasses.fields(obj)}:
                raise MirrorError(f"{source}: unknown option {section}.{key}")
            setattr(obj, name, _coerce(getattr(obj, name), value, f"{source}: {section}.{key}"))
    return config


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults, then the YAML file, then 'section.key=value' overrides (values parsed as YAML)."""
    config = TrainConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise MirrorError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise MirrorError(f"{path}: not valid YAML ({exc})") from None
        update_config(config, data, str(path))
    for item in overrides or []:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise MirrorError(f"override must be 'section.key=value', got {item!r}")
        update_config(config, {section: {name: yaml.safe_load(value)}}, "--set")
    return config
