"""Base classes for the CardioShape module files (``<M>/<M>.py``), inside Slicer and headless.

Inside Slicer the classes are Slicer's own ``slicer.ScriptedLoadableModule`` classes. The
``slicer-core`` wheel has no scripted-module framework (and no Qt), so headless this module
provides minimal stand-ins with the same names. A module file therefore starts with::

    from cardiocore.mrml.scripted import (
        ScriptedLoadableModule, ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget,
    )

and keeps every ``qt``, ``ctk`` and ``slicer.parameterNodeWrapper`` use inside the widget
(imported in ``setup()``, or guarded by :data:`IN_SLICER`), so that its logic and its test
scenarios import and run under pytest and the ``cardio`` CLI exactly as they do in Slicer.
"""

from __future__ import annotations

import logging
import unittest
from typing import Any

try:
    from slicer.ScriptedLoadableModule import (  # type: ignore[import-not-found]
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )

    IN_SLICER = True
except ImportError:
    IN_SLICER = False

    class ScriptedLoadableModule:  # type: ignore[no-redef]
        """Headless stand-in: keeps the module's descriptive attributes on ``parent``."""

        def __init__(self, parent: Any = None) -> None:
            self.parent = parent if parent is not None else _ModuleDescription()

    class ScriptedLoadableModuleWidget:  # type: ignore[no-redef]
        """Headless stand-in: a widget needs Qt, which only exists inside Slicer."""

        def __init__(self, parent: Any = None) -> None:
            raise RuntimeError(
                "CardioShape module widgets need the Slicer application (Qt); "
                "use the module's Logic class or the `cardio` command line headless"
            )

    class ScriptedLoadableModuleLogic:  # type: ignore[no-redef]
        """Headless stand-in for the logic base class (no parameter-node machinery)."""

        def __init__(self, parent: Any = None) -> None:
            self.parent = parent

    class ScriptedLoadableModuleTest(unittest.TestCase):  # type: ignore[no-redef]
        """Headless stand-in: ``delayDisplay`` logs instead of showing a message box."""

        def delayDisplay(self, message: str, msec: int = 0) -> None:  # noqa: N802 (Slicer API)
            logging.getLogger(type(self).__module__).info(message)


class _ModuleDescription:
    """What Slicer's ``qSlicerScriptedLoadableModule`` offers a module's ``__init__`` to fill in."""

    def __init__(self) -> None:
        self.title = ""
        self.categories: list[str] = []
        self.dependencies: list[str] = []
        self.contributors: list[str] = []
        self.helpText = ""
        self.acknowledgementText = ""


__all__ = [
    "IN_SLICER",
    "ScriptedLoadableModule",
    "ScriptedLoadableModuleLogic",
    "ScriptedLoadableModuleTest",
    "ScriptedLoadableModuleWidget",
]
