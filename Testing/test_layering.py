"""The layering rule: the compute layer never imports slicer, vtk or qt (only cardiocore.mrml and the CLI may)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

FORBIDDEN = ("slicer", "vtk", "vtkmodules", "qt", "ctk")
PACKAGE = REPO_ROOT / "cardiocore"


def _compute_layer_files() -> list[Path]:
    return sorted(
        p for p in PACKAGE.rglob("*.py") if "mrml" not in p.relative_to(PACKAGE).parts and p.name != "cli.py"
    )


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports, wherever the import statement stands."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_compute_module_imports_slicer_vtk_or_qt() -> None:
    offenders = {
        str(p.relative_to(REPO_ROOT)): sorted({m.split(".")[0] for m in _imported_modules(p)} & set(FORBIDDEN)) for p in _compute_layer_files()
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_compute_module_imports_the_slicer_bridge() -> None:
    offenders = [
        str(p.relative_to(REPO_ROOT))
        for p in _compute_layer_files()
        if any(m == "cardiocore.mrml" or m.startswith("cardiocore.mrml.") for m in _imported_modules(p))
    ]
    assert offenders == []


BLOCKER = """
import importlib.abc, pkgutil, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {forbidden!r}:
            raise ImportError('blocked for the layering test: ' + name)
        return None
sys.meta_path.insert(0, Block())
""".format(forbidden=set(FORBIDDEN))

IMPORT_COMPUTE_LAYER = """
import cardiocore
modules = [m.name for m in pkgutil.walk_packages(cardiocore.__path__, 'cardiocore.')
           if '.mrml' not in m.name and not m.name.endswith('.cli')]
for name in modules:
    __import__(name)
print(len(modules))
"""


def _run_blocked(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in which slicer, vtk and qt cannot be imported."""
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300
    )


def test_compute_layer_imports_where_slicer_and_vtk_cannot() -> None:
    result = _run_blocked(IMPORT_COMPUTE_LAYER)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip().splitlines()[-1]) >= 10


def test_predict_benchmark_loads_its_model_where_slicer_and_vtk_cannot(tmp_path: Path) -> None:
    """``cardio bench recon --predict-only`` is a compute-layer command that a GPU server with only
    the compute packages must run; it once stopped at ``import slicer`` while loading the model.
    A missing model file takes the same path to the model loader and ends at its clear error in
    seconds (the benchmark's own modules are imported by the test above)."""
    missing = tmp_path / "missing.pt"
    result = _run_blocked(
        "from cardiocore.cli import main\n"
        "sys.exit(main(['bench', 'recon', '--predict-only', '--quick', '--device', 'cpu',"
        f" '--model', {str(missing)!r}]))\n"
    )
    assert "blocked for the layering test" not in result.stderr, result.stderr[-2000:]
    assert result.returncode != 0 and str(missing) in result.stderr + result.stdout
