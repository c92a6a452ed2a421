"""`cardio demo` end to end: the scene bundle, renderings and report, and the CLI around it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from cardiocore.cli import main
from cardiocore.errors import CardioInputError
from cardiocore.mrml.demo import DEMO_FILES, DEMO_LV, run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, seed=0, progress=lambda message: None)


def test_demo_writes_every_file(demo: tuple[Path, dict]) -> None:
    out, _ = demo
    for name in DEMO_FILES:
        assert (out / name).stat().st_size > 0, name
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_report_figures_match_the_phantom_truth(demo: tuple[Path, dict]) -> None:
    out, report = demo
    assert json.loads((out / "report.json").read_text())["lv"] == report["lv"]
    for row in report["heart"]["structures"]:
        assert abs(row["difference_percent"]) < 3.0, row  # closed surface vs voxel count
    measured = report["lv"]["measured"]
    assert measured["EDV_ml"] == pytest.approx(DEMO_LV["edv_ml"], rel=0.01)
    assert measured["EF_percent"] == pytest.approx(DEMO_LV["ef_percent"], abs=0.5)
    assert measured["myocardial_mass_ED_g"] == pytest.approx(measured["myocardial_mass_ES_g"], rel=0.02)
    assert "| LV cavity |" in (out / "report.md").read_text()


def test_cardiogen_part_generates_plausible_ventricles(demo: tuple[Path, dict]) -> None:
    """The bundled CAP model's samples have adult LV volumes and mass, ES smaller than ED on average."""
    out, report = demo
    gen = report["cardiogen"]
    assert gen["model"] == "cardiogen-cap"
    for phase, (low, high) in {"ED": (60.0, 300.0), "ES": (15.0, 200.0)}.items():
        volumes = gen[f"cavity_{phase}_ml"]
        assert len(volumes) == 4 and all(low < v < high for v in volumes), (phase, volumes)
        assert all(50.0 < m < 300.0 for m in gen[f"myocardial_mass_{phase}_g"])
    assert sum(gen["cavity_ES_ml"]) < sum(gen["cavity_ED_ml"])
    assert "## CardioGen (cardiogen-cap)" in (out / "report.md").read_text()


def test_recon_part_fits_every_structure(demo: tuple[Path, dict]) -> None:
    recon = demo[1]["recon"]
    assert len(recon["dice"]) == 7 and min(recon["dice"].values()) > 0.7 and recon["all_watertight"]
    assert recon["max_vr_percent"] < 2.0


FRESH_PROCESS_LOAD = """
import json, sys
from cardiocore.mrml.app import slicer_app
from cardiocore.mrml.models import model_to_mesh
from cardiocore.mrml.storage import load_scene
load_scene(sys.argv[1])
scene = slicer_app().scene
ed, es = (model_to_mesh(scene.GetFirstNodeByName(n)) for n in ("LV ED", "LV ES"))
print(json.dumps({
    "names": sorted(scene.GetNthNode(i).GetName() for i in range(scene.GetNumberOfNodes())),
    "segments": scene.GetFirstNodeByName("Phantom heart").GetSegmentation().GetNumberOfSegments(),
    "sequences": scene.GetNodesByClass("vtkMRMLSequenceNode").GetNumberOfItems(),
    "same_topology": bool(ed.faces.shape == es.faces.shape and (ed.faces == es.faces).all()),
}))
"""


def test_scene_bundle_loads_into_a_fresh_scene(demo: tuple[Path, dict]) -> None:
    """A new Python process with a new headless application opens the bundle with every node."""
    out, report = demo
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_LOAD, str(out / "scene.mrb")], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert {node["name"] for node in report["nodes"]} <= set(loaded["names"])
    assert loaded["segments"] == 7 and loaded["sequences"] == 2 and loaded["same_topology"]


def test_demo_never_overwrites_without_being_asked(demo: tuple[Path, dict]) -> None:
    out, _ = demo
    before = (out / "report.json").stat().st_mtime_ns
    with pytest.raises(CardioInputError, match="--overwrite"):
        run_demo(out, progress=lambda message: None)
    assert (out / "report.json").stat().st_mtime_ns == before
    assert main(["demo", "--out", str(out)]) == 2


def test_cli_info(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["device"] == "cpu" or info["cuda_available"]
    manifest = json.loads((REPO_ROOT / "Resources" / "Models" / "models.json").read_text())
    listed = {(m["name"], m["version"]) for m in manifest["models"]}
    assert info["packages"]["torch"] and {(m["name"], m["version"]) for m in info["bundled_models"]} == listed
    assert ("cardiogen-cap", "1.0.0") in listed
    assert main(["info"]) == 0
    assert "cardiocore" in capsys.readouterr().out
