"""Training checkpoints: atomic writes, RNG capture, and a folder that keeps the last and best.

A checkpoint is one ``torch.save`` file holding a plain dictionary::

    {"format": 1, "cardiocore_version": "0.1.0", "step": int, "epoch": int, "batch_in_epoch": int,
     "model": state_dict, "optimizer": state_dict, "scheduler": state_dict | None,
     "grad_scaler": state_dict | None, "rng": [per-rank RNG state], "config": dict,
     "history": [metrics dicts], "best_metric": float | None}

It holds only tensors, numbers, strings, lists, tuples and dicts, so it loads with
``torch.load(weights_only=True)``: opening a checkpoint never runs code from the file.
"""

from __future__ import annotations

import math
import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

import cardiocore
from cardiocore.errors import CardioInputError, WeightsError
from cardiocore.train.atomic import atomic_write
from cardiocore.train.torch_file import load_tensors

CHECKPOINT_FORMAT = 1
REQUIRED_KEYS = ("format", "cardiocore_version", "step", "epoch", "model", "config")
LAST_NAME = "last.pt"
BEST_NAME = "best.pt"


def capture_rng_state() -> dict[str, Any]:
    """Every random generator a training step can draw from: Python, NumPy, torch CPU, CUDA."""
    bit_generator, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": str(bit_generator),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put every generator back to a state from ``capture_rng_state``.

    CUDA states are restored only when the same number of devices is visible; otherwise the
    CUDA generators keep their current seeds (a run resumed on other hardware is not bitwise).
    """
    random.setstate(_as_tuple(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["bit_generator"],
            numpy_state["keys"].cpu().numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([cuda_state.cpu() for cuda_state in cuda_states])


def _as_tuple(value: Any) -> Any:
    """Lists back to tuples, recursively (``random.setstate`` insists on tuples)."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(item) for item in value)
    return value


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (see ``atomic_write``) and return the path.

    A crash or error during the write leaves the previous file at ``path`` untouched.
    """
    path = Path(path)
    with atomic_write(path) as stream:
        torch.save(dict(state), stream)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``, checking it is whole and compatible.

    Raises ``WeightsError`` when the file is missing, unreadable (truncated or not a torch file),
    not a CardioShape checkpoint, or written in a newer checkpoint format than this cardiocore
    understands.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(str(path), "checkpoint file not found", "check the path, or start without resume")
    state = load_tensors(path, "checkpoint", map_location,
                         "the file is truncated or corrupt: delete it and resume from another checkpoint or start again")
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        missing = [key for key in REQUIRED_KEYS if not isinstance(state, dict) or key not in state]
        raise WeightsError(str(path), f"is not a CardioShape training checkpoint (missing {', '.join(missing)})")
    if state["format"] > CHECKPOINT_FORMAT:
        raise WeightsError(
            str(path),
            f"uses checkpoint format {state['format']} from cardiocore {state['cardiocore_version']}, "
            f"but cardiocore {cardiocore.__version__} reads format {CHECKPOINT_FORMAT} at most",
            "upgrade cardiocore",
        )
    return state


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two run configurations, e.g. ``["seed: 0 -> 1"]``."""
    differences = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if old != new and not (_is_nan(old) and _is_nan(new)):
            differences.append(f"{key}: {old!r} -> {new!r}")
    return differences


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)



def trained_weights(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The weights to use from a checkpoint read by :func:`load_checkpoint`: the moving average
    when the run kept one (``TrainConfig.ema_decay``), else the trained parameters."""
    average = state.get("ema")
    return average["model"] if average else state["model"]

class CheckpointFolder:
    """A checkpoint folder holding ``last.pt`` (the newest state) and ``best.pt`` (the best one).

    ``config`` identifies the run (everything that changes its results). Writing into a folder
    whose ``last.pt`` came from a different configuration raises ``CardioInputError`` unless
    ``overwrite=True``, so one run never silently destroys another's checkpoints.
    """

    def __init__(self, directory: str | os.PathLike, config: Mapping[str, Any], overwrite: bool = False) -> None:
        self.directory = Path(directory)
        self.config = dict(config)
        self.overwrite = overwrite
        self._checked = False

    @property
    def last_path(self) -> Path:
        return self.directory / LAST_NAME

    @property
    def best_path(self) -> Path:
        return self.directory / BEST_NAME

    def latest(self) -> Path | None:
        """``last.pt`` if it exists."""
        return self.last_path if self.last_path.is_file() else None

    def load_latest(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """The newest checkpoint, after checking it belongs to this configuration; None if none."""
        if self.latest() is None:
            return None
        state = load_checkpoint(self.last_path, map_location=map_location)
        self._raise_if_foreign(state["config"])
        self._checked = True
        return state

    def check_writable(self) -> None:
        """Raise if the folder holds another configuration's checkpoint (unless overwriting)."""
        if self._checked or self.overwrite or self.latest() is None:
            self._checked = True
            return
        self._raise_if_foreign(load_checkpoint(self.last_path)["config"])
        self._checked = True

    def _raise_if_foreign(self, saved_config: Mapping[str, Any]) -> None:
        differences = config_differences(saved_config, self.config)
        if differences and not self.overwrite:
            raise CardioInputError(
                f"checkpoint folder {self.directory}",
                "holds a checkpoint from a different configuration (" + "; ".join(differences) + ")",
                "choose another checkpoint_dir, or pass overwrite=True to replace it",
            )

    def save(self, state: Mapping[str, Any], is_best: bool = False) -> Path:
        """Write ``state`` as ``last.pt`` (and as ``best.pt`` too when ``is_best``), atomically."""
        self.check_writable()
        save_checkpoint(self.last_path, state)
        if is_best:
            self._copy_atomically(self.last_path, self.best_path)
        return self.last_path

    @staticmethod
    def _copy_atomically(source: Path, target: Path) -> None:
        with atomic_write(target) as stream, open(source, "rb") as original:
            shutil.copyfileobj(original, stream)


def export_model_weights(checkpoint_path: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Write just the model of a training checkpoint, ready to ship or to ``register_user_model``.

    The file holds ``{"model": state_dict, "config": run identity, "cardiocore_version": str,
    "step": int}`` (no optimizer or RNG state) and is written atomically; the state dict is
    :func:`trained_weights` (the moving average when the run kept one).
    """
    state = load_checkpoint(checkpoint_path)
    weights = {key: state[key] for key in ("config", "cardiocore_version", "step")}
    weights["model"] = trained_weights(state)
    return save_checkpoint(target, weights)


def json_ready(value: Any) -> Any:
    """Tuples to lists, recursively: what a run configuration compares equal to after a JSON or
    checkpoint round trip."""
    if isinstance(value, Mapping):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value

