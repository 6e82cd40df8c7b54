"""Training state on disk: model, optimizer, scheduler, step and RNG states, written atomically.

A kill at any moment leaves either the previous checkpoint or the new one, never a partial file; a
resumed run continues from the saved step with the same batches (they are a function of seed and step).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..io_utils import atomic_path
from ..model import load_torch_file

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "mirror_sfm-train-1"


def save_checkpoint(
    path: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    config: dict,
    scenes: list[str] | None = None,
) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "config": config,
        "scenes": list(scenes or []),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    config: dict | None = None,
    scenes: list[str] | None = None,
) -> int:
    """Restore everything saved by `save_checkpoint`; returns the step. Warns when the config or the training
    scenes differ (labels written since: the batches drawn from here on differ from the first run's)."""
    path = Path(path)
    state = load_torch_file(path, CHECKPOINT_FORMAT, "training checkpoint", "training checkpoint")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    if config is not None and state.get("config") != config:
        changed = sorted(
            f"{s}.{k}" for s in config for k in config[s] if state.get("config", {}).get(s, {}).get(k) != config[s][k]
        )
        logger.warning("resuming %s with changed options: %s", path, ", ".join(changed) or "(layout)")
    if scenes is not None and state.get("scenes") and sorted(state["scenes"]) != sorted(scenes):
        added = sorted(set(scenes) - set(state["scenes"]))
        removed = sorted(set(state["scenes"]) - set(scenes))
        logger.warning(
            "resuming %s with other training scenes (added: %s; removed: %s)",
            path,
            ", ".join(added) or "none",
            ", ".join(removed) or "none",
        )
    return int(state["step"])
