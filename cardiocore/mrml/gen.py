"""CardioGen in MRML terms: generated meshes, their clinical table and plot, interpolation
sequences, folder evaluation and training in a background process.

The computing is :mod:`cardiocore.gen`'s; this module only turns its tensors into new nodes
(model nodes in a subject-hierarchy folder, table nodes, plot nodes, sequence nodes) and never
changes existing ones. Meshes are RAS mm with the model's template faces; every generated model
node carries the per-vertex array :data:`~cardiocore.mrml.mesh_folders.REGION_ARRAY`
(0 endocardium, 1 epicardium), so saved meshes can be read back as a training cohort.

Training runs ``python -m cardiocore.cli gen train ... --progress json`` in a subprocess
(:class:`BackgroundTraining`): the GUI polls its JSON progress lines and can cancel it; the trainer
checkpoints when it receives SIGTERM, and ``--resume`` continues from there.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

import cardiocore
from cardiocore.errors import CardioInputError
from cardiocore.gen.clinical import CLINICAL_COLUMNS
from cardiocore.gen.data import PHASES
from cardiocore.gen.evaluate import evaluate_generated, shape_indices_or_nan
from cardiocore.gen.model import CONDITION_NAMES, CardioGenModel
from cardiocore.gen.samplers import DEFAULT_FAST_STEPS
from cardiocore.mrml.app import running_inside_slicer, slicer_app
from cardiocore.mrml.mesh_folders import (
    REGION_ARRAY,
    cohort_from_model_nodes,
    read_folder_meshes,
    region_labels,
    regions_from_point_data,
    write_mesh_folder,
)
from cardiocore.mrml.hierarchy import folder_with
from cardiocore.mrml.models import mesh_to_model, model_to_mesh
from cardiocore.mrml.sequences import meshes_to_sequence
from cardiocore.mrml.tables import columns_to_table
from cardiocore.weights import ModelRegistry, parse_version

PHASE_COLORS = {"ED": (0.85, 0.33, 0.25), "ES": (0.25, 0.45, 0.85), None: (0.55, 0.55, 0.55)}
"""Display colour of generated model nodes per phase (None: phase not requested)."""

COLUMN_UNITS = {
    "cavity_ml": "ml",
    "myocardial_volume_ml": "ml",
    "myocardial_mass_g": "g",
    "long_axis_mm": "mm",
    "wall_thickness_mm": "mm",
    "target_EDV_ml": "ml",
    "target_EF_percent": "%",
}
HISTOGRAM_BINS = 12

Target = float | tuple[float, float]
"""A clinical target: one value, or a (low, high) range that samples are spread over."""


@dataclass
class GeneratedNodes:
    """What :func:`generate_to_scene` added to the scene.

    Attributes:
        folder_item_id: the subject-hierarchy folder holding everything below.
        model_nodes: one ``vtkMRMLModelNode`` per generated mesh.
        table_node: ``vtkMRMLTableNode``, one row per mesh: its name, phase, targets (when
            conditioned) and :data:`~cardiocore.gen.clinical.CLINICAL_COLUMNS` (NaN for a mesh
            whose indices cannot be measured).
        plot_chart_node: ``vtkMRMLPlotChartNode`` of the cavity volume distribution, generated
            vs the model's training cohort (its series read a histogram table node).
    """

    folder_item_id: int
    model_nodes: list[Any]
    table_node: Any
    plot_chart_node: Any


# ---------------------------------------------------------------------------- generate
def generate_to_scene(
    model: CardioGenModel,
    n: int,
    phase: str | None,
    *,
    seed: int = 0,
    steps: int = DEFAULT_FAST_STEPS,
    conditions: Mapping[str, Target] | None = None,
    guidance_scale: float = 1.0,
    folder_name: str | None = None,
) -> GeneratedNodes:
    """Generate ``n`` LV meshes into a new subject-hierarchy folder, with their clinical table and plot.

    Args:
        model: the CardioGen model.
        n: number of meshes.
        phase: "ED", "ES", or None (any phase; conditional model only).
        seed: random seed; the same seed and settings give the same meshes.
        steps: steps of the default sampler (PLMS, :mod:`cardiocore.gen.samplers`).
        conditions: clinical targets by name in :data:`~cardiocore.gen.model.CONDITION_NAMES`
            (``EDV_ml`` in ml, ``EF_percent`` in %): a value, or a (low, high) range from which
            each mesh gets its own target, drawn uniformly with ``seed``. Any target uses the
            conditional model.
        guidance_scale: classifier-free guidance scale for targets (1: plain conditional model).
        folder_name: name of the folder; default "CardioGen <phase> seed <seed>".

    Raises:
        CardioInputError: n < 1, unknown phase or target names, an empty or reversed range, or a
            phase/target this model has no diffusion model for. Nothing is added on error.
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise CardioInputError("n", f"must be a positive number of meshes, got {n!r}")
    targets = _target_values(conditions, int(n), seed)
    meshes = _sample(model, int(n), phase, seed, steps, targets, guidance_scale)
    columns, _ = shape_indices_or_nan(meshes, model.faces, model.regions)

    label = phase or "any phase"
    folder_name = folder_name or f"CardioGen {label} seed {seed}"
    width = max(3, len(str(n - 1)))
    faces = model.faces.numpy()
    labels = region_labels(model.regions, model.n_vertices)
    nodes = [
        mesh_to_model(
            verts.numpy(), faces, name=f"{folder_name} {index:0{width}d}",
            point_data={REGION_ARRAY: labels}, color=PHASE_COLORS.get(phase, PHASE_COLORS[None]),
        )
        for index, verts in enumerate(meshes)
    ]
    table_columns: dict[str, Any] = {"mesh": [node.GetName() for node in nodes], "phase": [label] * n}
    table_columns.update({f"target_{name}": values.numpy() for name, values in targets.items()})
    table_columns.update({column: columns[column] for column in CLINICAL_COLUMNS})
    table = columns_to_table(
        table_columns, name=f"{folder_name} clinical",
        units={k: v for k, v in COLUMN_UNITS.items() if k in table_columns},
    )
    histogram, chart = _cavity_plot(folder_name, columns["cavity_ml"], _reference_cavities(model, phase))
    folder = folder_with(folder_name, [*nodes, table, histogram, chart])
    return GeneratedNodes(folder, nodes, table, chart)


def _target_values(conditions: Mapping[str, Target] | None, n: int, seed: int) -> dict[str, torch.Tensor]:
    """Each target as n values (N,): a value repeated, or a range drawn uniformly with ``seed``."""
    unknown = sorted(set(conditions or {}) - set(CONDITION_NAMES))
    if unknown:
        raise CardioInputError("conditions", f"unknown targets {unknown}", f"use {', '.join(CONDITION_NAMES)}")
    generator = torch.Generator().manual_seed(int(seed))
    values = {}
    for name in CONDITION_NAMES:  # fixed order: the same seed gives the same targets
        if name not in (conditions or {}):
            continue
        target = conditions[name]
        low, high = (target, target) if np.isscalar(target) else tuple(target)
        if not (np.isfinite(low) and np.isfinite(high) and low <= high):
            raise CardioInputError(f"target {name}", f"must be a finite value or a range low <= high, got {target!r}")
        values[name] = low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)
    return values


def _sample(
    model: CardioGenModel, n: int, phase: str | None, seed: int, steps: int,
    targets: Mapping[str, torch.Tensor], guidance_scale: float,
) -> torch.Tensor:
    """(n, V, 3) mm: one batch without targets or with one target value each; per mesh (seeds
    ``seed + i``) when the targets vary between meshes."""
    varying = any(bool((values != values[0]).any()) for values in targets.values())
    if not varying:
        fixed = {name: float(values[0]) for name, values in targets.items()} or None
        return model.sample(n, phase, seed=seed, steps=steps, conditions=fixed, guidance_scale=guidance_scale)
    return torch.cat([
        model.sample(
            1, phase, seed=seed + index, steps=steps, guidance_scale=guidance_scale,
            conditions={name: float(values[index]) for name, values in targets.items()},
        )
        for index in range(n)
    ])


def _reference_cavities(model: CardioGenModel, phase: str | None) -> np.ndarray:
    """Cavity volumes (M,) ml of the training cohort at ``phase`` (all phases for None)."""
    cavities = np.asarray(model.reference.get("cavity_ml", np.empty(0)), dtype=np.float64)
    if phase is None or "phase" not in model.reference:
        return cavities
    return cavities[np.asarray(model.reference["phase"]) == PHASES.index(phase)]


def _cavity_plot(name: str, generated_ml: np.ndarray, reference_ml: np.ndarray) -> tuple[Any, Any]:
    """A histogram table (share of meshes in %, per cavity-volume bin) and its bar/line chart."""
    app = slicer_app()
    generated_ml, reference_ml = generated_ml[np.isfinite(generated_ml)], reference_ml[np.isfinite(reference_ml)]
    edges = np.histogram_bin_edges(np.concatenate([generated_ml, reference_ml]), bins=HISTOGRAM_BINS)
    columns = {"cavity_ml": 0.5 * (edges[:-1] + edges[1:])}
    series = {"generated_percent": ("generated", generated_ml, "PlotTypeBar")}
    if reference_ml.size:
        series["training_percent"] = ("training cohort", reference_ml, "PlotTypeLine")
    for column, (_, values, _) in series.items():
        columns[column] = 100.0 * np.histogram(values, bins=edges)[0] / max(1, values.size)
    table = columns_to_table(
        columns, name=f"{name} cavity volume histogram",
        units={"cavity_ml": "ml", **{column: "%" for column in series}},
    )
    chart = app.new_node("vtkMRMLPlotChartNode", f"{name} cavity volume")
    chart.SetTitle("Cavity volume: generated vs training cohort")
    chart.SetXAxisTitle("cavity volume [ml]")
    chart.SetYAxisTitle("share of meshes [%]")
    for column, (label, _, plot_type) in series.items():
        plot = app.new_node("vtkMRMLPlotSeriesNode", f"{name} {label}")
        plot.SetAndObserveTableNodeID(table.GetID())
        plot.SetXColumnName("cavity_ml")
        plot.SetYColumnName(column)
        plot.SetPlotType(getattr(plot, plot_type))
        plot.SetColor(*(PHASE_COLORS["ED"] if label == "generated" else PHASE_COLORS[None]))
        chart.AddAndObservePlotSeriesNodeID(plot.GetID())
    return table, chart


# ---------------------------------------------------------------------------- interpolate
def interpolate_to_sequence(
    model: CardioGenModel, node_a: Any, node_b: Any, n: int, name: str | None = None
) -> tuple[Any, Any]:
    """A sequence of ``n`` meshes evenly spaced in the model's latent space from ``node_a`` to
    ``node_b``, to play as an animation. The nodes may lie anywhere in the scene (world RAS): the
    frames move rigidly from the first one's place to the second's, and the end frames are the two
    meshes' VAE reconstructions, where the nodes are (:meth:`CardioGenModel.interpolate`).

    Returns:
        (``vtkMRMLSequenceNode``, ``vtkMRMLSequenceBrowserNode``).

    Raises:
        CardioInputError: n < 2, a node that is not a model, or one far from the training shapes'
            size (not in mm?); MeshError: a model whose vertex count or faces differ from the
            CardioGen template (named, pointing to CardioAtlas).
    """
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise CardioInputError("n", f"must be at least 2 frames (the two ends), got {n!r}")
    meshes = [model_to_mesh(node) for node in (node_a, node_b)]
    ends = [model.template_vertices(mesh.verts, mesh.faces, mesh.name) for mesh in meshes]
    frames = model.interpolate(ends[0], ends[1], int(n), names=(node_a.GetName(), node_b.GetName()))
    name = name or f"CardioGen {node_a.GetName()} to {node_b.GetName()}"
    return meshes_to_sequence(frames.numpy(), name, faces=model.faces.numpy(), color=PHASE_COLORS[None])


# ---------------------------------------------------------------------------- evaluate
def evaluate_folder_meshes(generated_dir: str | os.PathLike, reference_dir: str | os.PathLike) -> dict[str, Any]:
    """:func:`cardiocore.gen.evaluate.evaluate_generated` on two folders of meshes (a JSON-ready dict);
    clinical figures when the generated meshes carry the region array."""
    generated = read_folder_meshes(generated_dir)
    reference = read_folder_meshes(reference_dir)
    regions = regions_from_point_data(generated, f"folder {generated_dir}")
    return evaluate_generated(
        [mesh.verts for mesh in generated], [mesh.verts for mesh in reference], generated[0].faces,
        regions or None, reference_faces=reference[0].faces,
        generated_names=[mesh.name for mesh in generated], reference_names=[mesh.name for mesh in reference],
    )


def evaluate_folders(
    generated_dir: str | os.PathLike, reference_dir: str | os.PathLike, name: str = "CardioGen evaluation"
) -> Any:
    """Generated meshes against real ones (1-NNA, COV, MMD and, when the meshes carry the
    :data:`~cardiocore.mrml.mesh_folders.REGION_ARRAY` array, clinical distributions) as a new
    table node: one row per figure with its value, unit, target and whether it passes.

    Raises:
        CardioInputError / MeshError: missing folders, unreadable files, or meshes of different
            topology (named).
    """
    result = evaluate_folder_meshes(generated_dir, reference_dir)
    checks = result["checks"]
    return columns_to_table(
        {
            "figure": [check["figure"] for check in checks],
            "value": np.array([np.nan if check["value"] is None else check["value"] for check in checks]),
            "unit": [check["unit"] for check in checks],
            "target": [check["target"] for check in checks],
            "passes": [{True: "yes", False: "no", None: ""}[check["passes"]] for check in checks],
        },
        name=name,
        descriptions={"value": f"{result['n_used']} generated vs {result['n_used']} reference meshes"},
    )


# ---------------------------------------------------------------------------- models
GEN_TASK = "generation"
"""The manifest ``task`` of CardioGen models (``cardio gen train --register`` writes it)."""


@dataclass(frozen=True)
class ModelChoice:
    """A CardioGen model in the bundled or user manifest, as a model list shows it."""

    name: str
    version: str
    source: str

    @property
    def label(self) -> str:
        return f"{self.name} {self.version} ({self.source})"


def available_models() -> list[ModelChoice]:
    """The CardioGen models of the bundled and user manifests: bundled ones first, each name's
    versions newest first, so the first choice is the model ``cardio gen`` uses by default."""
    choices = [
        ModelChoice(item.entry["name"], item.entry["version"], item.source)
        for item in ModelRegistry().entries()
        if item.entry["task"] == GEN_TASK
    ]
    first_seen = {}
    for choice in choices:
        first_seen.setdefault(choice.name, len(first_seen))
    newest_first = sorted(choices, key=lambda c: parse_version(c.version), reverse=True)
    return sorted(newest_first, key=lambda c: (c.source != "bundled", first_seen[c.name]))  # stable


def next_model_version(name: str) -> str:
    """A version for a newly trained model ``name``: 1.0.0, or the highest registered one with
    its last number increased."""
    versions = [parse_version(choice.version) for choice in available_models() if choice.name == name]
    if not versions:
        return "1.0.0"
    highest = list(max(versions))
    highest += [0] * (3 - len(highest))  # parse_version drops trailing zeros: (1,) is 1.0.0
    return ".".join(str(part) for part in (*highest[:-1], highest[-1] + 1))


def write_training_folder(
    nodes: Sequence[Any],
    out: str | os.PathLike,
    phases: Sequence[str] | Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Save model nodes as a training folder for ``cardio gen train`` (``<subject>_<phase>.vtk``,
    with the :data:`~cardiocore.mrml.mesh_folders.REGION_ARRAY` array when the nodes carry one).

    Args:
        nodes: model nodes (``vtkMRMLModelNode``) in correspondence (world RAS mm).
        out: the folder (created if needed).
        phases: one "ED"/"ES" per node or node name -> phase; default: the phase token of each
            node's name.
        overwrite: replace files of the same names in ``out``.

    Raises:
        CardioInputError / MeshError: as :func:`~cardiocore.mrml.mesh_folders.cohort_from_model_nodes`,
            or (without ``overwrite``) files already in ``out``.
    """
    cohort = cohort_from_model_nodes(nodes, phases if phases is not None else {})
    names = [f"{subject}_{phase}".replace(os.sep, "_") for subject, phase in zip(cohort.subject_ids, cohort.phases)]
    point_data = {REGION_ARRAY: region_labels(cohort.regions, cohort.n_vertices)} if cohort.regions else None
    faces = cohort.faces.numpy()
    meshes = [(name, verts.numpy(), faces) for name, verts in zip(names, cohort.verts)]
    return write_mesh_folder(out, meshes, overwrite=overwrite, point_data=point_data)


# ---------------------------------------------------------------------------- train
def python_executable() -> str:
    """The Python that runs ``cardiocore`` jobs: Slicer's ``PythonSlicer`` inside Slicer (the
    application puts it on PATH), else this one.

    Raises:
        CardioInputError: inside Slicer, PythonSlicer cannot be found.
    """
    if not running_inside_slicer():
        return sys.executable
    found = shutil.which("PythonSlicer")
    if found is None:
        raise CardioInputError("PythonSlicer", "was not found on PATH", "start Slicer from its own launcher")
    return found


def _package_environment() -> dict[str, str]:
    """This environment with the folder holding ``cardiocore`` first on PYTHONPATH (inside Slicer
    the package lives in the extension's folder, which a fresh PythonSlicer does not search)."""
    env = dict(os.environ)
    package_root = str(Path(cardiocore.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(part for part in (package_root, env.get("PYTHONPATH", "")) if part)
    return env


def training_command(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    name: str | None = None,
    steps_scale: float | None = None,
    resume: bool = False,
    extra: Sequence[str] = (),
) -> list[str]:
    """The argument list of ``cardio gen train`` with JSON progress (without the Python prefix).

    Args:
        data: a folder of meshes in correspondence (phase in the file names) or the CAP atlas file.
        out: folder for checkpoints and ``model.pt``.
        name: model name; steps_scale: multiply every step count; resume: continue a stopped run.
        extra: further ``cardio gen train`` options (e.g. ``["--register"]``).
    """
    args = ["gen", "train", "--data", str(data), "--out", str(out)]
    if name:
        args += ["--name", name]
    if steps_scale is not None:
        args += ["--steps-scale", repr(float(steps_scale))]
    if resume:
        args.append("--resume")
    return [*args, *extra, "--progress", "json"]


def train_in_background(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    name: str | None = None,
    steps_scale: float | None = None,
    resume: bool = False,
    extra: Sequence[str] = (),
) -> BackgroundTraining:
    """Start ``python -m cardiocore.cli gen train ... --progress json`` (see :func:`training_command`).

    Raises:
        CardioInputError: ``data`` does not exist, or the process cannot be started.
    """
    if not Path(data).exists():
        raise CardioInputError(str(data), "does not exist", "give a folder of meshes or the CAP atlas file")
    command = training_command(data, out, name=name, steps_scale=steps_scale, resume=resume, extra=extra)
    return BackgroundTraining([python_executable(), "-m", "cardiocore.cli", *command], env=_package_environment())


class BackgroundTraining:
    """A training subprocess whose JSON progress lines are read without blocking.

    Each stdout line that is a JSON object with a ``"stage"`` key is a progress event
    ``{"stage": str, "step": int, "total": int, "metrics": {...}}``; other stdout and stderr
    lines are kept (the last :attr:`LOG_LINES`) in :attr:`log` for messages. Threads read both
    pipes, so a chatty process never blocks on a full pipe, and :meth:`poll` returns at once
    (call it from a GUI timer).

    Args:
        command: the full argument list, program first.
        cwd, env: working folder and environment of the process (default: this process's).
    """

    LOG_LINES = 200

    def __init__(
        self, command: Sequence[str], cwd: str | os.PathLike | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        if not command:
            raise CardioInputError("command", "is empty")
        self.command = [str(part) for part in command]
        self.log: collections.deque[str] = collections.deque(maxlen=self.LOG_LINES)
        self._events: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._cancel_requests = 0
        process_env = dict(os.environ if env is None else env)
        process_env.setdefault("PYTHONUNBUFFERED", "1")
        try:
            self.process = subprocess.Popen(
                self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                cwd=cwd, env=process_env, text=True, encoding="utf-8", errors="replace", bufsize=1,
            )
        except OSError as error:
            raise CardioInputError(self.command[0], f"cannot be started ({error.strerror})") from error
        self._readers = [
            threading.Thread(target=self._read, args=(stream, parse), daemon=True)
            for stream, parse in ((self.process.stdout, True), (self.process.stderr, False))
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str], parse: bool) -> None:
        for line in stream:
            text = line.rstrip("\n")
            event = _progress_event(text) if parse else None
            if event is not None:
                self._events.put(event)
            elif text:
                self.log.append(text)
        stream.close()

    def poll(self) -> list[dict[str, Any]]:
        """The progress events received since the last call (possibly none); never blocks."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    @property
    def finished(self) -> bool:
        """True once the process has exited and all of its output has been read."""
        return self.process.poll() is not None and not any(reader.is_alive() for reader in self._readers)

    @property
    def returncode(self) -> int | None:
        """The exit status (None while running; 0 success; 130 stopped and resumable, for
        ``cardio gen train``; negative: killed by that signal)."""
        return self.process.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Block until the process has exited and its output is read; returns the exit status.

        Raises:
            subprocess.TimeoutExpired: still running after ``timeout`` seconds.
        """
        code = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return code

    def cancel(self) -> None:
        """Ask the process to stop: SIGTERM, on which the trainer saves a checkpoint and exits
        (resume with ``--resume``). A second call kills it at once. On Windows the process is
        terminated at once (the last periodic checkpoint is what resumes)."""
        if self.process.poll() is not None:
            return
        self._cancel_requests += 1
        if self._cancel_requests > 1:
            self.process.kill()
        elif os.name == "posix":
            self.process.send_signal(signal.SIGTERM)
        else:
            self.process.terminate()


def _progress_event(line: str) -> dict[str, Any] | None:
    """A progress event parsed from one line, or None when the line is not one."""
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "stage" in event else None
