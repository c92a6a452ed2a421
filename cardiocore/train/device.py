"""Device choice, mixed-precision policy and seeding for training and inference.

``select_device`` turns a user preference ("auto", "cpu", "cuda", "cuda:1", "mps") into a
``torch.device`` that exists on this machine; ``amp_policy`` decides whether and how to use
automatic mixed precision on it; ``seed_everything`` seeds every random generator a run uses.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from cardiocore.errors import CardioInputError

DEVICE_ENV_VAR = "CARDIO_DEVICE"
AMP_MODES = ("auto", "off", "bf16", "fp16")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(preference: str | torch.device | None = None) -> torch.device:
    """The device to compute on.

    ``preference`` is "auto" (or None): CUDA if present, then Apple MPS, then CPU; or an explicit
    "cpu", "cuda", "cuda:<index>" or "mps". The environment variable ``CARDIO_DEVICE`` overrides
    an "auto"/None preference, so a user can force "cpu" without touching code. An explicit
    device that this machine lacks raises ``CardioInputError`` instead of silently falling back.
    """
    if isinstance(preference, torch.device):
        preference = str(preference)
    source = "device"
    if preference is None or preference.strip().lower() == "auto":
        env_value = os.environ.get(DEVICE_ENV_VAR, "").strip()
        if env_value and env_value.lower() != "auto":
            preference, source = env_value, f"environment variable {DEVICE_ENV_VAR}"
        else:
            if torch.cuda.is_available():
                return torch.device("cuda", torch.cuda.current_device())
            if _mps_available():
                return torch.device("mps")
            return torch.device("cpu")

    text = preference.strip().lower()
    try:
        device = torch.device(text)
    except RuntimeError as error:
        raise CardioInputError(
            source, f"{preference!r} is not a device name", 'use "auto", "cpu", "cuda", "cuda:<index>" or "mps"'
        ) from error

    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CardioInputError(
                source,
                f"{preference!r} was asked for but this machine has no usable CUDA GPU",
                'use "cpu" or "auto", or install a CUDA build of PyTorch matching the driver',
            )
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise CardioInputError(
                source,
                f"{preference!r} was asked for but only {torch.cuda.device_count()} CUDA device(s) exist",
                f"use an index from 0 to {torch.cuda.device_count() - 1}",
            )
        return torch.device("cuda", index)
    if device.type == "mps":
        if not _mps_available():
            raise CardioInputError(
                source, f"{preference!r} was asked for but Apple MPS is not available", 'use "cpu" or "auto"'
            )
        return device
    raise CardioInputError(
        source, f"{preference!r} is not supported", 'use "auto", "cpu", "cuda", "cuda:<index>" or "mps"'
    )


@dataclass(frozen=True)
class AmpPolicy:
    """How one device runs automatic mixed precision.

    ``enabled``: whether forward passes run under ``torch.autocast``; ``dtype``: the low-precision
    type (``torch.bfloat16`` or ``torch.float16``); ``use_grad_scaler``: whether losses are scaled
    (needed for float16, whose range is too small for small gradients).
    """

    enabled: bool
    dtype: torch.dtype
    use_grad_scaler: bool
    device_type: str

    def autocast(self) -> torch.autocast:
        """A ``torch.autocast`` context for the forward pass (a no-op when disabled)."""
        return torch.autocast(device_type=self.device_type, dtype=self.dtype, enabled=self.enabled)


def amp_policy(mode: str, device: torch.device) -> AmpPolicy:
    """Mixed-precision settings for ``mode`` ("auto", "off", "bf16", "fp16") on ``device``.

    "auto" is on for CUDA only: bfloat16 without a grad scaler where the GPU supports it
    (Ampere and later), else float16 with a grad scaler; off on CPU and MPS, where autocast
    rarely speeds training. "bf16" may be forced on CPU or CUDA; "fp16" needs CUDA.
    """
    mode = str(mode).lower()
    if mode not in AMP_MODES:
        raise CardioInputError("amp", f"{mode!r} is not a mixed-precision mode", f"use one of {', '.join(AMP_MODES)}")
    off = AmpPolicy(enabled=False, dtype=torch.float32, use_grad_scaler=False, device_type=device.type)
    if mode == "off":
        return off
    if mode == "auto":
        if device.type != "cuda":
            return off
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode == "bf16":
        if device.type not in ("cuda", "cpu"):
            raise CardioInputError("amp", f'"bf16" is not supported on {device.type}', 'use "off" or "auto"')
        return AmpPolicy(enabled=True, dtype=torch.bfloat16, use_grad_scaler=False, device_type=device.type)
    if device.type != "cuda":
        raise CardioInputError("amp", f'"fp16" needs a CUDA device, not {device.type}', 'use "off", "bf16" or "auto"')
    return AmpPolicy(enabled=True, dtype=torch.float16, use_grad_scaler=True, device_type=device.type)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator, torch's CPU generator and every CUDA device."""
    if not 0 <= int(seed) < 2**32:
        raise CardioInputError("seed", f"{seed} is outside 0 .. 2**32 - 1")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
