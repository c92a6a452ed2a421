"""What ``cardio info`` reports: package versions, the compute device, CUDA and the bundled models."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

import torch

from cardiocore import __version__

#: Distributions whose versions matter when a user reports a problem.
REPORTED_PACKAGES = ("torch", "numpy", "scipy", "monai", "torch-geometric", "scikit-image", "slicer-core", "vtk", "pydicom")


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def environment_info() -> dict[str, Any]:
    """Versions, device and model facts as a JSON-ready dictionary."""
    from cardiocore.train.device import select_device
    from cardiocore.weights import load_manifest

    cuda = torch.cuda.is_available()
    manifest = load_manifest()
    return {
        "cardiocore": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in REPORTED_PACKAGES},
        "device": str(select_device("auto")),
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "torch_threads": torch.get_num_threads(),
        "bundled_models": [
            {"name": entry["name"], "version": entry["version"], "task": entry.get("task", "")}
            for entry in manifest.get("models", [])
        ],
    }


def format_info(info: dict[str, Any]) -> str:
    """The dictionary of :func:`environment_info` as aligned text lines."""
    lines = [
        f"cardiocore   {info['cardiocore']}",
        f"python       {info['python']} ({info['platform']})",
        f"device       {info['device']} (torch threads: {info['torch_threads']})",
        f"CUDA         {'available, ' + ', '.join(info['gpus']) if info['cuda_available'] else 'not available'}"
        f" (torch built with CUDA {info['cuda_version'] or 'none'})",
        "packages:",
    ]
    lines += [f"  {name:<16} {version or 'not installed'}" for name, version in info["packages"].items()]
    models = info["bundled_models"]
    lines.append(f"bundled models: {len(models) or 'none yet'}")
    lines += [f"  {m['name']} {m['version']}  {m['task']}" for m in models]
    return "\n".join(lines)
