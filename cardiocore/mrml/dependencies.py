"""First-use installation of the Python packages CardioShape needs inside Slicer.

Slicer ships without PyTorch, MONAI or PyTorch Geometric. The first time a CardioShape module
needs them, :func:`ensure_requirements` lists what is missing, asks the user once, and installs:
torch through the PyTorch extension's ``PyTorchUtils`` (which picks the build matching the GPU
driver), everything else with ``slicer.util.pip_install``. Headless, nothing is installed behind the
user's back: the error says which ``pip install`` to run.

This module imports only the standard library at import time, so it works before torch exists.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable

from cardiocore.errors import CardioInputError


@dataclass(frozen=True)
class Requirement:
    """A Python package: the name it is imported by and the pip specifier that installs it."""

    import_name: str
    pip_spec: str


#: What the compute layer imports. torch comes first: the others are built against it.
REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("torch", "torch>=2.2"),
    Requirement("monai", "monai>=1.3"),
    Requirement("torch_geometric", "torch-geometric>=2.4"),
    Requirement("scipy", "scipy>=1.10"),
    Requirement("skimage", "scikit-image>=0.21"),
    Requirement("matplotlib", "matplotlib>=3.7"),
    Requirement("tqdm", "tqdm>=4.60"),
)


def missing_requirements(requirements: tuple[Requirement, ...] = REQUIREMENTS) -> list[Requirement]:
    """The requirements that cannot be imported in this Python."""
    return [r for r in requirements if importlib.util.find_spec(r.import_name) is None]


def _install_inside_slicer(missing: list[Requirement]) -> None:
    import slicer

    rest = [r for r in missing if r.import_name != "torch"]
    if len(rest) < len(missing):
        import PyTorchUtils  # provided by the PyTorch extension, our EXTENSION_DEPENDS

        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=">=2.2") is None:
            raise CardioInputError("PyTorch", "could not be installed by the PyTorch extension", "install it from the PyTorch module")
    if rest:
        slicer.util.pip_install(" ".join(r.pip_spec for r in rest))


def ensure_requirements(
    confirm: Callable[[str], bool],
    requirements: tuple[Requirement, ...] = REQUIREMENTS,
    inside_slicer: bool | None = None,
) -> None:
    """Make every requirement importable, asking ``confirm(message)`` once before installing.

    Raises:
        CardioInputError: the user declined, or headless (where we never install): the message
            gives the pip command to run.
    """
    missing = missing_requirements(requirements)
    if not missing:
        return
    command = "pip install " + " ".join(f"'{r.pip_spec}'" for r in missing)
    if inside_slicer is None:
        from cardiocore.mrml.app import running_inside_slicer

        inside_slicer = running_inside_slicer()
    if not inside_slicer:
        raise CardioInputError("Python environment", f"missing {', '.join(r.import_name for r in missing)}", f"run: {command}")
    names = ", ".join(r.pip_spec for r in missing)
    if not confirm(f"CardioShape needs these Python packages, which will now be downloaded and installed: {names}. Continue?"):
        raise CardioInputError("Python environment", f"missing {names}", "the installation was declined; CardioShape cannot run without them")
    _install_inside_slicer(missing)
    still_missing = missing_requirements(tuple(missing))
    if still_missing:
        raise CardioInputError("Python environment", f"{', '.join(r.import_name for r in still_missing)} still missing after installation", "restart Slicer and try again")
