"""Module-file checks: every module folder imports headless and its code and .ui agree.

The checks run on each real module folder of the extension and, to prove they catch what they
should, on the reference fixture module ``Testing/fixtures/MeshVolume`` and broken copies of it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from module_checks import find_module_dirs, import_module_file_headless, module_file_problems

FIXTURE = Path(__file__).parent / "fixtures" / "MeshVolume"


@pytest.mark.parametrize("module_dir", find_module_dirs(REPO_ROOT), ids=lambda p: p.name)
def test_extension_module_files(module_dir: Path) -> None:
    assert module_file_problems(module_dir) == []


def test_reference_module_passes() -> None:
    assert module_file_problems(FIXTURE) == []


@pytest.fixture()
def broken_copy(tmp_path: Path) -> Path:
    target = tmp_path / "MeshVolume"
    shutil.copytree(FIXTURE, target)
    return target


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_top_level_qt_import_is_caught(broken_copy: Path) -> None:
    _edit(broken_copy / "MeshVolume.py", "from __future__ import annotations\n", "from __future__ import annotations\nimport qt\n")
    problems = module_file_problems(broken_copy)
    assert len(problems) == 1 and "does not import without Qt" in problems[0]


def test_widget_missing_from_ui_is_caught(broken_copy: Path) -> None:
    _edit(broken_copy / "MeshVolume.py", "self.ui.resultLabel.text", "self.ui.volumeLabel.text")
    assert module_file_problems(broken_copy) == ["code uses ui.volumeLabel, which is not a widget of MeshVolume.ui"]


def test_unknown_parameter_name_is_caught(broken_copy: Path) -> None:
    _edit(broken_copy / "Resources" / "UI" / "MeshVolume.ui", "<string>includeOpenMeshes</string>", "<string>closeMeshes</string>")
    problems = module_file_problems(broken_copy)
    assert problems == ["MeshVolume.ui widget includeOpenMeshesCheckBox binds SlicerParameterName 'closeMeshes', not a parameter-node field"]


def test_missing_icon_is_caught(broken_copy: Path) -> None:
    (broken_copy / "Resources" / "Icons" / "MeshVolume.png").unlink()
    assert module_file_problems(broken_copy) == [str(Path("missing Resources/Icons/MeshVolume.png"))]


def test_reference_module_scenario_runs_headless() -> None:
    """The module's own Slicer self-test scenario runs unchanged on the headless scene."""
    from cardiocore.mrml.app import slicer_app

    slicer_app().clear()
    module = import_module_file_headless(FIXTURE / "MeshVolume.py")
    result = module.MeshVolumeTest("runTest").run()
    assert result.wasSuccessful(), result.errors + result.failures
