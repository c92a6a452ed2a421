"""CardioGen on the headless MRML scene: mesh folders, cohorts from files and nodes, generated nodes
with their table and plot, interpolation sequences, folder evaluation and background training."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("slicer", reason="the headless MRML tests need slicer-core (pip install .[headless])")

from conftest import REPO_ROOT  # noqa: E402
from module_checks import import_module_file_headless

from cardiocore.errors import CardioInputError, MeshError
from cardiocore.mrml.gen import BackgroundTraining, evaluate_folders, generate_to_scene, interpolate_to_sequence
from cardiocore.mrml.gen import train_in_background, write_training_folder
from cardiocore.mrml.mesh_folders import (
    REGION_ARRAY,
    cohort_from_folder,
    cohort_from_model_nodes,
    phase_from_name,
    read_mesh_file,
    read_mesh_folder,
    subject_from_name,
    write_mesh_folder,
)
from cardiocore.mrml.models import mesh_to_model
from cardiocore.mrml.tables import table_to_columns
from cardiocore.phantoms.lv import lv_cohort

MODULE = import_module_file_headless(REPO_ROOT / "CardioGen" / "CardioGen.py")
GRID = {"n_circumferential": 16, "n_longitudinal": 8}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks run fastest on one thread, above all on a machine shared with other jobs
    (here and in the trainer subprocesses, which inherit OMP_NUM_THREADS)."""
    threads = torch.get_num_threads()
    patch = pytest.MonkeyPatch()
    patch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    patch.undo()


def test_model_list_puts_the_default_first_and_each_names_newest_version_first(tmp_path, monkeypatch):
    import json

    from cardiocore.mrml.gen import available_models, next_model_version

    monkeypatch.setenv("CARDIOSHAPE_CACHE", str(tmp_path))
    bundled = json.loads((REPO_ROOT / "Resources" / "Models" / "models.json").read_text())["models"]
    template = next(entry for entry in bundled if entry["name"] == "cardiogen-cap")
    user = [{**template, "name": "mine", "version": v, "file": f"mine-{v}.pt"} for v in ("1.0.0", "1.10.0", "1.9.0")]
    (tmp_path / "models.json").write_text(json.dumps({"schema_version": 1, "models": user}))
    listed = [(choice.name, choice.version, choice.source) for choice in available_models()]
    assert listed == [("cardiogen-cap", "1.2.0", "bundled"), ("cardiogen-cap", "1.1.0", "bundled"),
                      ("cardiogen-cap", "1.0.0", "bundled"),
                      ("mine", "1.10.0", "user"), ("mine", "1.9.0", "user"), ("mine", "1.0.0", "user")]
    assert next_model_version("mine") == "1.10.1" and next_model_version("new") == "1.0.0"
    assert next_model_version("cardiogen-cap") == "1.2.1"
    (tmp_path / "models.json").write_text(json.dumps({"schema_version": 1, "models": user[:1]}))
    assert next_model_version("mine") == "1.0.1"  # not "2": the version's trailing zeros count here


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cardiogen")


@pytest.fixture(scope="module")
def cohort_folder(workdir) -> Path:
    return MODULE.write_phantom_cohort(workdir / "cohort", n_subjects=12)


@pytest.fixture(scope="module")
def model(cohort_folder, workdir):
    from cardiocore.mrml.app import slicer_app

    trained = MODULE.tiny_model(cohort_folder, workdir / "train")
    slicer_app().clear()
    return trained


@pytest.fixture()
def case():
    """The module's Slicer test case: its assertion methods, for the shared scenarios."""
    return MODULE.CardioGenTest("runTest")


def _meshes(n_subjects: int = 2, seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    pairs = lv_cohort(n_subjects, seed=seed, **GRID)
    return [
        (f"case{i}_{phase}", shape.verts.numpy().astype(np.float64), shape.faces.numpy())
        for i, pair in enumerate(pairs) for phase, shape in zip(("ED", "ES"), pair)
    ]


# ---------------------------------------------------------------------------- mesh folders
@pytest.mark.parametrize("fmt", ["vtk", "ply"])
def test_folder_round_trip_keeps_coordinates_and_refuses_overwrite(app, tmp_path, fmt):
    meshes = _meshes()
    written = write_mesh_folder(tmp_path / "out", meshes, fmt=fmt)
    assert [p.name for p in written] == [f"{name}.{fmt}" for name, _, _ in meshes]
    back = read_mesh_folder(tmp_path / "out")
    assert [name for name, _, _ in back] == sorted(p.name for p in written)
    for (_, verts, faces), (_, read_verts, read_faces) in zip(meshes, back):
        np.testing.assert_allclose(read_verts, verts, atol=1e-4)
        np.testing.assert_array_equal(read_faces, faces)
    verts, faces = read_mesh_file(written[1])
    np.testing.assert_allclose(verts, meshes[1][1], atol=1e-4)
    np.testing.assert_array_equal(faces, meshes[1][2])
    with pytest.raises(CardioInputError, match="nothing.vtk: is not an existing mesh file"):
        read_mesh_file(tmp_path / "nothing.vtk")
    before = written[0].read_bytes()
    moved = [(name, verts + 5.0, faces) for name, verts, faces in meshes]
    with pytest.raises(CardioInputError, match="already holds case0_ED"):
        write_mesh_folder(tmp_path / "out", moved, fmt=fmt)
    assert written[0].read_bytes() == before
    write_mesh_folder(tmp_path / "out", moved, fmt=fmt, overwrite=True)
    np.testing.assert_allclose(read_mesh_folder(tmp_path / "out")[0][1], moved[0][1], atol=1e-4)
    assert app.scene.GetNumberOfNodesByClass("vtkMRMLModelNode") == 0  # helper nodes are gone


def test_phase_and_subject_from_names():
    assert [phase_from_name(n) for n in ("s01_ED.vtk", "ES-s01.ply", "case 3 es.obj", "a.ed.b.stl")] == [
        "ED", "ES", "ES", "ED"]
    assert [subject_from_name(n) for n in ("s01_ED.vtk", "ES-s01.ply", "case 3 es.obj", "p_ed_v2.vtp", "ED.vtk")] == [
        "s01", "s01", "case 3", "p_v2", "subject"]
    for name in ("MEDIAL.vtk", "s01.vtk", "s01_ED_ES.vtk", "s01_Ed.vtk"):
        with pytest.raises(CardioInputError, match="names no single cardiac phase"):
            phase_from_name(name)


def test_cohort_folder_errors_name_folder_and_files(app, tmp_path):
    with pytest.raises(CardioInputError, match="missing.*is not an existing folder"):
        read_mesh_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no meshes")
    with pytest.raises(CardioInputError, match="empty: holds no mesh files"):
        read_mesh_folder(tmp_path / "empty")
    meshes = _meshes()
    write_mesh_folder(tmp_path / "bad", meshes[:2])
    (tmp_path / "bad" / "broken_ED.vtk").write_text("not a mesh")
    with pytest.raises(CardioInputError, match="broken_ED.vtk"):
        read_mesh_folder(tmp_path / "bad")

    folder = tmp_path / "unlabelled"
    write_mesh_folder(folder, [("a_ED", *meshes[0][1:]), ("b", *meshes[1][1:]), ("c", *meshes[2][1:])])
    with pytest.raises(CardioInputError, match=r"2 of 3 items name no single cardiac phase: b.vtk, c.vtk"):
        cohort_from_folder(folder)
    with pytest.raises(CardioInputError, match="not among the folder.*d.vtk"):
        cohort_from_folder(folder, phases={"b.vtk": "ES", "c.vtk": "ED", "d.vtk": "ES"})
    cohort = cohort_from_folder(folder, phases={"b.vtk": "ES", "c.vtk": "ED"})
    assert cohort.phases == ["ED", "ES", "ED"] and cohort.subject_ids == ["a", "b", "c"]
    # no region array in these files: endocardium/epicardium come from the two connected surfaces
    assert cohort.regions["endocardium"].numel() + cohort.regions["epicardium"].numel() == cohort.n_vertices


def test_topology_mismatch_in_a_folder_names_the_files(app, tmp_path):
    meshes = _meshes()
    coarse = lv_cohort(1, seed=4, n_circumferential=12, n_longitudinal=8)[0][0]
    meshes[3] = ("case1_ES", coarse.verts.numpy(), coarse.faces.numpy())
    write_mesh_folder(tmp_path, meshes, fmt="vtp")
    with pytest.raises(MeshError) as caught:
        cohort_from_folder(tmp_path)
    message = str(caught.value)
    assert "1 of 4" in message and "case1_ES.vtp" in message and "case0_ED.vtp" in message
    assert "CardioAtlas" in message


def test_cohort_from_model_nodes_and_back_to_a_training_folder(app, tmp_path, cohort_folder, case):
    MODULE.scenario_cohort_folder(case, cohort_folder)
    source = cohort_from_folder(cohort_folder)
    labels = np.zeros(source.n_vertices, dtype=np.int8)
    labels[source.regions["epicardium"].numpy()] = 1
    nodes = [
        mesh_to_model(verts.numpy(), source.faces.numpy(), name, point_data={REGION_ARRAY: labels})
        for verts, name in zip(source.verts[:4], ["p1 ED", "p1 ES", "p2 ED", "p2 ES"])
    ]
    cohort = cohort_from_model_nodes(nodes, {})
    assert cohort.subject_ids == ["p1", "p1", "p2", "p2"] and cohort.phases == ["ED", "ES", "ED", "ES"]
    torch.testing.assert_close(cohort.regions["epicardium"], source.regions["epicardium"])
    with pytest.raises(CardioInputError, match="has 3 labels for 4 model nodes"):
        cohort_from_model_nodes(nodes, ["ED", "ES", "ED"])
    files = write_training_folder(nodes, tmp_path / "train")
    assert [f.name for f in files] == ["p1_ED.vtk", "p1_ES.vtk", "p2_ED.vtk", "p2_ES.vtk"]
    again = cohort_from_folder(tmp_path / "train")
    torch.testing.assert_close(again.verts, cohort.verts, atol=1e-4, rtol=0)
    assert sorted(again.regions) == ["endocardium", "epicardium"]


# ---------------------------------------------------------------------------- generate / interpolate
def test_generate_to_scene_gives_nodes_table_and_plot(app, model, case):
    MODULE.scenario_generate(case, model, n=4)


def test_generate_with_target_ranges(app, model):
    result = generate_to_scene(model, 3, "ES", seed=2, steps=8, conditions={"EDV_ml": (100.0, 140.0), "EF_percent": 60})
    columns = table_to_columns(result.table_node)
    assert len(columns["mesh"]) == 3 and set(columns["phase"]) == {"ES"}
    assert np.all((columns["target_EDV_ml"] >= 100) & (columns["target_EDV_ml"] <= 140))
    assert len(set(columns["target_EDV_ml"].round(6))) == 3
    np.testing.assert_allclose(columns["target_EF_percent"], 60.0)
    again = generate_to_scene(model, 3, "ES", seed=2, steps=8, conditions={"EDV_ml": (100.0, 140.0), "EF_percent": 60})
    np.testing.assert_allclose(table_to_columns(again.table_node)["cavity_ml"], columns["cavity_ml"])
    with pytest.raises(CardioInputError, match="low <= high"):
        generate_to_scene(model, 2, "ED", conditions={"EDV_ml": (150.0, 100.0)})
    with pytest.raises(CardioInputError, match="unknown targets"):
        generate_to_scene(model, 2, "ED", conditions={"ESV_ml": 50.0})


def test_interpolate_to_sequence(app, model, case):
    MODULE.scenario_interpolate(case, model, n=5)
    other = lv_cohort(1, seed=0, n_circumferential=12, n_longitudinal=8)[0][0]
    wrong = mesh_to_model(other.verts, other.faces, "other template")
    good = generate_to_scene(model, 1, "ED", steps=5).model_nodes[0]
    with pytest.raises(MeshError, match="other template.*CardioAtlas"):
        interpolate_to_sequence(model, good, wrong, 4)


def test_evaluate_folders_gives_a_metrics_table(app, model, tmp_path, cohort_folder):
    generated = generate_to_scene(model, 6, "ED", seed=1, steps=8)
    from cardiocore.mrml.models import model_to_mesh

    meshes = [(node.GetName(), model_to_mesh(node).verts, model.faces.numpy()) for node in generated.model_nodes]
    labels = np.zeros(model.n_vertices, dtype=np.int8)
    labels[model.regions["epicardium"].numpy()] = 1
    write_mesh_folder(tmp_path / "generated", meshes, point_data={REGION_ARRAY: labels})
    table = evaluate_folders(tmp_path / "generated", cohort_folder)
    columns = table_to_columns(table)
    figures = list(columns["figure"])
    assert any("1-NNA" in f for f in figures) and any("COV" in f for f in figures)
    assert any("cavity_ml" in f for f in figures)  # clinical rows: regions came from the files
    nna = columns["value"][[i for i, f in enumerate(figures) if "1-NNA" in f][0]]
    assert 0.0 <= nna <= 100.0


# ---------------------------------------------------------------------------- background training
EMITTER = """
import json, sys, time
print("starting", flush=True)
for step in range(1, 4):
    print(json.dumps({"stage": "vae", "step": step, "total": 3, "metrics": {"loss": 1.0 / step}}), flush=True)
print("a warning", file=sys.stderr, flush=True)
print("{not json", flush=True)
"""


def test_background_process_progress_lines_are_parsed():
    job = BackgroundTraining([sys.executable, "-c", EMITTER])
    assert job.wait(timeout=60) == 0 and job.finished
    events = job.poll()
    assert [e["step"] for e in events] == [1, 2, 3] and events[-1]["metrics"]["loss"] == pytest.approx(1 / 3)
    assert job.poll() == []
    assert {"starting", "a warning", "{not json"} <= set(job.log)


def _first_events(job: BackgroundTraining, timeout_s: float = 60.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    events: list[dict] = []
    while not events and time.monotonic() < deadline and not job.finished:
        time.sleep(0.1)
        events = job.poll()
    return events


def test_training_cli_in_background_reports_progress_and_cancel_leaves_a_resumable_checkpoint(tmp_path, cohort_folder):
    from cardiocore.train.checkpoint import load_checkpoint

    out = tmp_path / "run"
    job = train_in_background(
        cohort_folder, out, name="bg-test", steps_scale=100.0, extra=["--tiny", "--device", "cpu"]
    )
    assert job.command[1:5] == ["-m", "cardiocore.cli", "gen", "train"] and job.command[-2:] == ["--progress", "json"]
    events = _first_events(job)
    assert events, f"no progress from the trainer: {list(job.log)[-5:]}"
    assert events[0]["stage"] == "vae" and events[0]["total"] == 6000 and "loss" in events[0]["metrics"]
    job.cancel()
    assert job.wait(timeout=60) == MODULE.CardioGenLogic.STOPPED_EXIT_CODE
    last_reported = max(e["step"] for e in [*events, *job.poll()])
    assert any("--resume" in line for line in job.log)
    checkpoint = load_checkpoint(out / "vae" / "last.pt")
    assert checkpoint["step"] >= last_reported and not (out / "model.pt").exists()


def test_module_self_test_runs_headless():
    """The Slicer self-test (phantom folder -> tiny model -> generate, interpolate) runs unchanged."""
    result = MODULE.CardioGenTest("runTest").run()
    assert result.wasSuccessful(), result.errors + result.failures
