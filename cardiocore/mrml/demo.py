"""``cardio demo``: every part of CardioShape that exists, on its embedded defaults, in one scene.

Until the method modules land, the demo shows the foundation on synthetic anatomy with known
truth (``cardiocore.phantoms``):

1. a multi-chamber heart label volume on an oblique, anisotropic grid, as a labelmap volume node,
   a segmentation node (named, coloured segments) and one closed-surface model node per structure,
   with label-volume vs surface-volume figures;
2. a left ventricle at end-diastole and end-systole (one topology), as model nodes, a table node of
   clinical indices measured on the meshes beside the phantom's prescribed values, and a sequence
   node animating ED -> ES;
3. CardioGen with the bundled model: a few generated ED and ES left ventricles (each phase in its
   subject-hierarchy folder with its clinical table and cavity-volume chart) and a latent
   interpolation between the smallest and the largest generated ED ventricle, as a sequence;
4. CardioReconstruct: the multi-chamber template fitted (MIE loss) to a phantom segmentation, as
   model nodes, a segmentation made from the meshes and tables of volumes and quality figures.

Outputs in ``DIR``: ``scene.mrb`` (opens in 3D Slicer), ``heart.png``, ``lv_ed_es.png``,
``cardiogen.png``, ``recon.png``, ``report.json`` and ``report.md``. Existing files are never replaced unless ``overwrite=True``; all
files are written to a temporary folder first and moved into place at the end.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy.spatial.transform import Rotation

from cardiocore.errors import CardioInputError

DEMO_FILES = ("scene.mrb", "heart.png", "lv_ed_es.png", "cardiogen.png", "recon.png", "report.json", "report.md")

#: Demo grid: 1.6 x 1.6 x 2.4 mm voxels, rotated 20 degrees about S and 10 degrees about R.
DEMO_SPACING_MM = (1.6, 1.6, 2.4)
DEMO_ROTATION_DEG = (10.0, 0.0, 20.0)
DEMO_LV = {"edv_ml": 140.0, "ef_percent": 60.0, "wall_thickness_mm": 10.0}
ED_TO_ES_FRAMES = 10
GEN_SAMPLES_PER_PHASE = 4
GEN_INTERPOLATION_FRAMES = 8


def _check_output_folder(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise CardioInputError(f"--out {out}", "exists and is not a folder")
    existing = [name for name in DEMO_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise CardioInputError(
            f"--out {out}", f"already holds {', '.join(existing)}", "choose another folder or pass --overwrite"
        )


def _heart_part(workdir: Path, seed: int, progress: Callable[[str], None]) -> dict[str, Any]:
    from cardiocore.geometry.volume import enclosed_volume
    from cardiocore.mrml.models import mesh_to_model
    from cardiocore.mrml.segmentations import arrays_to_segmentation, segmentation_closed_surfaces
    from cardiocore.mrml.volumes import array_to_volume
    from cardiocore.phantoms.heart import heart_label_phantom
    from cardiocore.render import SceneMesh, render_meshes

    progress("heart phantom: label volume -> segmentation -> closed-surface models")
    phantom = heart_label_phantom(spacing=DEMO_SPACING_MM, direction=Rotation.from_euler("xyz", DEMO_ROTATION_DEG, degrees=True).as_matrix(), seed=seed)
    voxel_ml = float(abs(np.linalg.det(phantom.ijk_to_ras[:3, :3]))) / 1000.0
    array_to_volume(phantom.labels, phantom.ijk_to_ras, name="Phantom heart labels", labelmap=True)
    masks = {s.name: phantom.labels == s.label for s in phantom.structures}
    colours = {s.name: tuple(c / 255.0 for c in s.color) for s in phantom.structures}
    segmentation = arrays_to_segmentation(masks, phantom.ijk_to_ras, colours=colours, name="Phantom heart")
    surfaces = segmentation_closed_surfaces(segmentation)
    rows, scene_meshes = [], []
    for structure in phantom.structures:
        verts, faces = surfaces[structure.name]
        mesh_to_model(verts, faces, name=f"{structure.name} surface", color=colours[structure.name])
        label_ml = float(masks[structure.name].sum()) * voxel_ml
        surface_ml = float(enclosed_volume(verts, faces)) / 1000.0
        rows.append(
            {
                "structure": structure.name,
                "label_volume_ml": round(label_ml, 2),
                "surface_volume_ml": round(surface_ml, 2),
                "difference_percent": round(100.0 * (surface_ml - label_ml) / label_ml, 2),
            }
        )
        opacity = 0.35 if "myocardium" in structure.name.lower() else 1.0
        scene_meshes.append(SceneMesh(np.asarray(verts), np.asarray(faces), colours[structure.name], opacity, structure.name))
    render_meshes(
        scene_meshes, workdir / "heart.png", title="Synthetic multi-chamber heart, anterior view (RAS mm)", elevation=15.0, azimuth=75.0
    )
    return {"grid": {"shape": list(phantom.labels.shape), "spacing_mm": list(DEMO_SPACING_MM), "rotation_deg": list(DEMO_ROTATION_DEG)}, "structures": rows}


def _lv_part(workdir: Path, seed: int, progress: Callable[[str], None]) -> dict[str, Any]:
    from cardiocore.metrics.clinical import ejection_fraction, lv_indices
    from cardiocore.mrml.models import mesh_to_model
    from cardiocore.mrml.sequences import meshes_to_sequence
    from cardiocore.mrml.tables import columns_to_table
    from cardiocore.phantoms.lv import lv_phantom
    from cardiocore.render import SceneMesh, render_panels

    progress("left ventricle at ED and ES: models, clinical indices, ED -> ES sequence")
    phases = {phase: lv_phantom(phase=phase, seed=seed, **DEMO_LV) for phase in ("ED", "ES")}
    indices = {
        phase: lv_indices(lv.endo_verts, lv.endo_faces, lv.epi_verts, lv.epi_faces) for phase, lv in phases.items()
    }
    colours = {"ED": (0.80, 0.25, 0.20), "ES": (0.20, 0.45, 0.80)}
    for phase, lv in phases.items():
        mesh_to_model(lv.verts, lv.faces, name=f"LV {phase}", color=colours[phase])
    edv, esv = indices["ED"].cavity_volume_ml, indices["ES"].cavity_volume_ml
    measured = {
        "EDV_ml": edv,
        "ESV_ml": esv,
        "EF_percent": ejection_fraction(edv, esv),
        "myocardial_mass_ED_g": indices["ED"].myocardial_mass_g,
        "myocardial_mass_ES_g": indices["ES"].myocardial_mass_g,
        "sphericity_ED": indices["ED"].sphericity_index,
        "wall_thickness_ED_mm": indices["ED"].mean_wall_thickness_mm,
        "wall_thickness_ES_mm": indices["ES"].mean_wall_thickness_mm,
    }
    prescribed = {"EDV_ml": DEMO_LV["edv_ml"], "EF_percent": DEMO_LV["ef_percent"], "wall_thickness_ED_mm": DEMO_LV["wall_thickness_mm"]}
    columns_to_table(
        {
            "index": list(measured),
            "measured": [round(float(v), 3) for v in measured.values()],
            "prescribed": [float(prescribed.get(k, float("nan"))) for k in measured],
        },
        name="LV clinical indices",
    )
    ed, es = phases["ED"], phases["ES"]
    weights = np.linspace(0.0, 1.0, ED_TO_ES_FRAMES)
    frames = [(1 - w) * np.asarray(ed.verts) + w * np.asarray(es.verts) for w in weights]
    meshes_to_sequence(
        [(f, np.asarray(ed.faces)) for f in frames],
        name="LV ED to ES",
        index_name="cycle",
        index_unit="%",
        index_values=[float(100 * w) for w in weights],
    )
    render_panels(
        [
            (f"ED ({edv:.0f} ml)", [SceneMesh(np.asarray(ed.verts), np.asarray(ed.faces), colours["ED"])]),
            (f"ES ({esv:.0f} ml, EF {measured['EF_percent']:.1f} %)", [SceneMesh(np.asarray(es.verts), np.asarray(es.faces), colours["ES"])]),
        ],
        workdir / "lv_ed_es.png",
        elevation=35.0,
    )
    return {"measured": {k: round(float(v), 3) for k, v in measured.items()}, "prescribed": prescribed}


def _cardiogen_part(workdir: Path, seed: int, progress: Callable[[str], None], model: Any = None) -> dict[str, Any]:
    from cardiocore.gen.model import CardioGenModel
    from cardiocore.gen.plots import shape_grid
    from cardiocore.mrml.gen import generate_to_scene, interpolate_to_sequence
    from cardiocore.mrml.models import model_to_mesh
    from cardiocore.mrml.tables import table_to_columns

    model = model if model is not None else CardioGenModel.from_bundled(device="cpu")
    progress(f"CardioGen ({model.card.get('name', 'model')}): ED and ES samples, clinical tables, an interpolation")
    generated = {
        phase: generate_to_scene(model, GEN_SAMPLES_PER_PHASE, phase, seed=seed, folder_name=f"CardioGen {phase}")
        for phase in ("ED", "ES")
    }
    figures: dict[str, Any] = {"model": model.card.get("name"), "samples_per_phase": GEN_SAMPLES_PER_PHASE}
    meshes = []
    for phase, nodes in generated.items():
        columns = table_to_columns(nodes.table_node)
        cavity, mass = columns["cavity_ml"].tolist(), columns["myocardial_mass_g"].tolist()
        figures[f"cavity_{phase}_ml"] = [round(v, 1) for v in cavity]
        figures[f"myocardial_mass_{phase}_g"] = [round(v, 1) for v in mass]
        meshes += [(phase, volume, node) for volume, node in zip(cavity, nodes.model_nodes)]
    ed = sorted((volume, node) for phase, volume, node in meshes if phase == "ED")
    interpolate_to_sequence(model, ed[0][1], ed[-1][1], GEN_INTERPOLATION_FRAMES, name="CardioGen ED interpolation")
    figures["interpolation"] = {"from": ed[0][1].GetName(), "to": ed[-1][1].GetName(), "frames": GEN_INTERPOLATION_FRAMES}
    shape_grid(
        np.stack([model_to_mesh(node).verts for _, _, node in meshes]), model.faces.numpy(), workdir / "cardiogen.png",
        ncols=GEN_SAMPLES_PER_PHASE, titles=[f"{phase} {volume:.0f} ml" for phase, volume, _ in meshes],
    )
    return figures


def _markdown(report: dict[str, Any]) -> str:
    heart, lv = report["heart"], report["lv"]
    lines = [
        "# CardioShape demo",
        "",
        f"cardiocore {report['cardiocore']}, seed {report['seed']}, {report['seconds']:.1f} s.",
        "",
        "## Multi-chamber heart phantom",
        f"Grid {heart['grid']['shape']} voxels of {heart['grid']['spacing_mm']} mm, rotated "
        f"{heart['grid']['rotation_deg']} degrees about R, A, S.",
        "",
        "![heart](heart.png)",
        "",
        "| structure | label volume (ml) | surface volume (ml) | difference (%) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['structure']} | {r['label_volume_ml']} | {r['surface_volume_ml']} | {r['difference_percent']} |"
        for r in heart["structures"]
    ]
    lines += ["", "## Left ventricle, ED and ES", "", "![lv](lv_ed_es.png)", "", "| index | measured | prescribed |", "|---|---|---|"]
    lines += [f"| {k} | {v} | {lv['prescribed'].get(k, '')} |" for k, v in lv["measured"].items()]
    gen = report["cardiogen"]
    lines += ["", f"## CardioGen ({gen['model']})", "", "![cardiogen](cardiogen.png)", "",
              "| phase | cavity volumes (ml) | myocardial mass (g) |", "|---|---|---|"]
    lines += [f"| {p} | {gen[f'cavity_{p}_ml']} | {gen[f'myocardial_mass_{p}_g']} |" for p in ("ED", "ES")]
    lines += ["", f"Latent interpolation {gen['interpolation']['from']} -> {gen['interpolation']['to']} "
              f"({gen['interpolation']['frames']} frames) in the sequence 'CardioGen ED interpolation'."]
    recon = report["recon"]
    lines += ["", "## CardioReconstruct (template fit with the MIE loss)", "", "![recon](recon.png)", "",
              "| structure | Dice |", "|---|---|"]
    lines += [f"| {name} | {dice} |" for name, dice in recon["dice"].items()]
    lines += ["", f"Max violation rate {recon['max_vr_percent']} % (surface {recon['max_svr_percent']} %), "
              f"all watertight: {recon['all_watertight']}, self-intersecting face pairs: "
              f"{recon['self_intersections']}; {recon['steps']} steps, {recon['seconds']} s."]
    lines += ["", "## Scene", "", "`scene.mrb` holds: " + ", ".join(f"{n['name']} ({n['class']})" for n in report["nodes"]) + "."]
    return "\n".join(lines) + "\n"


def _scene_nodes(scene: Any) -> list[dict[str, str]]:
    nodes = []
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if node.IsA("vtkMRMLStorableNode") and not node.GetHideFromEditors():
            nodes.append({"name": node.GetName(), "class": node.GetClassName()})
    return nodes


def run_demo(
    out: Path, seed: int = 0, overwrite: bool = False, progress: Callable[[str], None] = print, gen_model: Any = None
) -> dict[str, Any]:
    """Build the demo scene into ``out`` and return the report dictionary.

    ``gen_model``: the CardioGen model to show (default: the bundled one).
    """
    from cardiocore import __version__
    from cardiocore.mrml.app import slicer_app
    from cardiocore.mrml.recon import recon_demo_part
    from cardiocore.mrml.storage import save_scene

    out = Path(out).resolve()
    _check_output_folder(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    app = slicer_app()
    app.clear()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".cardio-demo-", dir=out) as staging:
        workdir = Path(staging)
        report: dict[str, Any] = {"cardiocore": __version__, "seed": seed}
        report["heart"] = _heart_part(workdir, seed, progress)
        report["lv"] = _lv_part(workdir, seed, progress)
        report["cardiogen"] = _cardiogen_part(workdir, seed, progress, gen_model)
        report["recon"] = recon_demo_part(workdir, seed, progress)
        progress("saving scene.mrb")
        save_scene(workdir / "scene.mrb")
        report["nodes"] = _scene_nodes(app.scene)
        report["seconds"] = time.perf_counter() - started
        (workdir / "report.json").write_text(json.dumps(report, indent=2))
        (workdir / "report.md").write_text(_markdown(report))
        for name in DEMO_FILES:
            os.replace(workdir / name, out / name)
    return report
