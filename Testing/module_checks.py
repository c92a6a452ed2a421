"""Checks every CardioShape module folder must pass (used by ``test_module_files.py``).

A module folder ``<M>/`` holds ``<M>.py`` (Module, Widget, Logic and Test classes),
``Resources/UI/<M>.ui``, ``Resources/Icons/<M>.png`` and ``CMakeLists.txt``. The checks:

1. ``<M>.py`` imports where ``qt``, ``ctk``, ``slicer.ScriptedLoadableModule`` and
   ``slicer.parameterNodeWrapper`` cannot be imported (headless), the four classes exist and
   the logic can be constructed;
2. every ``ui.<name>`` the code uses is a widget of the ``.ui`` file, and every
   ``SlicerParameterName`` in the ``.ui`` is a field of the module's parameter-node class.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import xml.etree.ElementTree as ElementTree
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Iterator

#: Modules a module file must not need at import time outside Slicer.
SLICER_GUI_ONLY = ("qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper")


def find_module_dirs(root: Path) -> list[Path]:
    """Folders ``root/<M>`` that contain a ``<M>.py`` module file, sorted by name."""
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / f"{p.name}.py").is_file())


@contextmanager
def gui_modules_blocked() -> Iterator[None]:
    """Make ``import qt`` (and the other GUI-only modules) raise ImportError inside the block."""
    saved = {name: sys.modules.get(name) for name in SLICER_GUI_ONLY}
    try:
        for name in SLICER_GUI_ONLY:
            sys.modules[name] = None  # type: ignore[assignment]  # None makes import raise
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def import_module_file_headless(module_py: Path) -> ModuleType:
    """Import ``<M>.py`` under a private name with the GUI-only modules blocked."""
    name = f"_cardioshape_check_{module_py.stem}"
    spec = importlib.util.spec_from_file_location(name, module_py)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {module_py}")
    module = importlib.util.module_from_spec(spec)
    with gui_modules_blocked():
        spec.loader.exec_module(module)
    return module


def ui_widget_names(ui_file: Path) -> set[str]:
    """Names of every widget (and the top-level form) in a Qt Designer ``.ui`` file."""
    tree = ElementTree.parse(ui_file)
    return {w.get("name", "") for w in tree.iter("widget")} - {""}


def ui_parameter_names(ui_file: Path) -> dict[str, str]:
    """``SlicerParameterName`` property of each bound widget: widget name -> parameter name."""
    bindings: dict[str, str] = {}
    for widget in ElementTree.parse(ui_file).iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                value = prop.find("string")
                if value is not None and value.text:
                    bindings[widget.get("name", "")] = value.text.strip()
    return bindings


def ui_names_used_in_code(module_py: Path) -> set[str]:
    """Attribute names read from a ``ui`` object in the code (``self.ui.applyButton`` -> applyButton)."""
    used: set[str] = set()
    for node in ast.walk(ast.parse(module_py.read_text())):
        if isinstance(node, ast.Attribute):
            owner = node.value
            if (isinstance(owner, ast.Attribute) and owner.attr == "ui") or (
                isinstance(owner, ast.Name) and owner.id == "ui"
            ):
                used.add(node.attr)
    return used


def parameter_node_fields(module_py: Path) -> set[str]:
    """Annotated fields of the classes decorated with ``@parameterNodeWrapper``."""
    fields: set[str] = set()
    for node in ast.walk(ast.parse(module_py.read_text())):
        if isinstance(node, ast.ClassDef) and any(_decorator_name(d) == "parameterNodeWrapper" for d in node.decorator_list):
            fields.update(
                stmt.target.id
                for stmt in node.body
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
            )
    return fields


def _decorator_name(decorator: ast.expr) -> str:
    if isinstance(decorator, ast.Call):
        decorator = decorator.func
    if isinstance(decorator, ast.Attribute):
        return decorator.attr
    return decorator.id if isinstance(decorator, ast.Name) else ""


def module_file_problems(module_dir: Path) -> list[str]:
    """Everything wrong with one module folder; an empty list means it passes."""
    name = module_dir.name
    module_py = module_dir / f"{name}.py"
    ui_file = module_dir / "Resources" / "UI" / f"{name}.ui"
    icon = module_dir / "Resources" / "Icons" / f"{name}.png"
    problems = [
        f"missing {path.relative_to(module_dir)}"
        for path in (module_py, ui_file, icon, module_dir / "CMakeLists.txt")
        if not path.is_file()
    ]
    if problems:
        return problems
    try:
        module = import_module_file_headless(module_py)
    except Exception as error:  # the report must name any import failure, whatever it is
        return [f"{module_py.name} does not import without Qt/ctk: {type(error).__name__}: {error}"]
    for suffix in ("", "Widget", "Logic", "Test"):
        if not hasattr(module, name + suffix):
            problems.append(f"{module_py.name} has no class {name + suffix}")
    if hasattr(module, f"{name}Logic"):
        try:
            getattr(module, f"{name}Logic")()
        except Exception as error:  # noqa: BLE001 - reported, not hidden
            problems.append(f"{name}Logic() fails headless: {type(error).__name__}: {error}")
    widgets = ui_widget_names(ui_file)
    for missing in sorted(ui_names_used_in_code(module_py) - widgets):
        problems.append(f"code uses ui.{missing}, which is not a widget of {ui_file.name}")
    fields = parameter_node_fields(module_py)
    for widget, parameter in sorted(ui_parameter_names(ui_file).items()):
        if parameter not in fields:
            problems.append(f"{ui_file.name} widget {widget} binds SlicerParameterName {parameter!r}, not a parameter-node field")
    return problems
