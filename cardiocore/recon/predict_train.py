"""Train the Predict-mode network on synthetic images made from real label maps.

Every training sample is drawn afresh (:func:`cardiocore.recon.synth.synthesize_sample`): a
label map, a random pose (rotation, scale, shift), a random smooth shape deformation, random
intensities per label and per background tissue class, bias field, blur, thick slices, noise and
gamma. Sample ``i`` of the run is fixed by ``(seed, i)``, so a resumed run sees exactly the
samples an uninterrupted one would (:class:`cardiocore.train.loop.Trainer` restores the position
and every RNG).

Loss per image (:class:`PredictObjective`), all in the network frame:

- ``segmentation``: MONAI ``DiceCELoss`` of the U-Net logits against the structure index grid;
- ``centroid``: smooth-L1 distance (in voxels) between the attention centroids and the label
  centroids (supervises the global alignment);
- ``surface``: per structure, the symmetric unsquared Chamfer distance (mm) between the
  vertices of every deformation block (earlier blocks at half weight) and the label's
  boundary points;
- ``mie``: the MIE relational loss (:func:`cardiocore.recon.mie.mie_term`) on the final meshes,
  query points labelled by the label map, rules between the structures the case has;
- ``laplacian``: the squared uniform Laplacian of the offsets from the aligned template (mm^2).

A run starts from seeded random weights or, with ``PredictTrainingSpec.init``, from a trained
predictor (the bundled one or a file): fine-tuning on one's own label maps.

The result is ``out_dir/model.pt`` (:class:`cardiocore.recon.predict.MeshPredictor`) with a
model card holding the data, the split, the settings and the validation figures.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss
from torch.utils.data import Dataset

import cardiocore
from cardiocore.errors import CardioInputError
from cardiocore.geometry.laplacian import uniform_laplacian
from cardiocore.metrics.distance import chamfer_distance
from cardiocore.recon.mie import mie_term
from cardiocore.recon.predict import BUNDLED_PREDICTOR, MeshPredictor
from cardiocore.recon.predict_net import MeshPredictionNet, PredictNetSpec
from cardiocore.recon.rules import RuleSet
from cardiocore.recon.synth import (
    FrameWarp,
    LabelCase,
    SynthOptions,
    frame_grid_points,
    label_lookup,
    synthesize_sample,
    warp_grid_size,
)
from cardiocore.recon.template import HeartTemplate
from cardiocore.train.checkpoint import json_ready, load_checkpoint, trained_weights
from cardiocore.train.loop import TrainConfig, Trainer, TrainResult

MODEL_FILE = "model.pt"
#: Chambers ``cardio recon train`` scales at random unless told otherwise (those the rule set has),
#: and the range of their scale factors: what the bundled network's last stage was trained with.
DEFAULT_DILATE = ("lv_cavity", "rv")
DEFAULT_DILATE_RANGE = (0.85, 1.65)
TrainProgress = Callable[[int, int, Mapping[str, float]], None]


@dataclass(frozen=True)
class PredictLossWeights:
    """Weights of the terms of :class:`PredictObjective` (see the module docstring)."""

    segmentation: float = 1.0
    centroid: float = 0.2
    surface: float = 1.0
    mie: float = 0.5
    laplacian: float = 0.5


@dataclass
class PredictTrainingSpec:
    """Settings of a Predict-mode training run (defaults: the bundled model's).

    net: the architecture. steps, batch, lr: Adam with cosine decay to 2 % over ``steps``
    steps of ``batch`` images. weights: loss weights. surface_points: label boundary points
    per structure and image for the Chamfer term; mie_points: MIE query points per image.
    val_images: fixed synthetic validation images (other seeds, training label maps).
    options: the image synthesis (default: 4 mm random shape deformations). seed: of the samples
    and of the initial weights. init: "" for seeded random initial weights, "bundled" or a model
    file to start from a trained predictor. init_template: with ``init``, deform the initial
    predictor's own template (True) or the template given to :func:`train_predictor` (False:
    the initial weights carry over, since no weight depends on the template's vertices; e.g. to
    move a trained network onto a repaired template). device: "auto", "cpu", "cuda".
    """

    net: PredictNetSpec = field(default_factory=PredictNetSpec)
    steps: int = 3000
    batch: int = 1
    lr: float = 1e-3
    weights: PredictLossWeights = field(default_factory=PredictLossWeights)
    surface_points: int = 1500
    mie_points: int = 384
    val_images: int = 8
    options: SynthOptions = field(default_factory=lambda: SynthOptions(elastic_mm=4.0))
    seed: int = 0
    init: str = ""
    init_template: bool = True
    device: str = "auto"

    def run_config(self) -> dict[str, Any]:
        """The settings that determine the result (JSON-compatible; compared on resume)."""
        values = dataclasses.asdict(self)
        values.pop("device")
        values["net"] = self.net.to_dict()
        return json_ready(values)


class SyntheticImages(Dataset):
    """``length`` synthetic images over ``cases``; item ``i`` uses case ``i % len(cases)`` and
    the generator seeded by ``(seed, i)``.

    Items: ``image`` (1, D, D, D) float32 in [0, 1]; ``index`` (1, D, D, D) int64 structure
    index; ``centroids`` (S, 3) frame mm and ``present`` (S,) bool per structure;
    ``surfaces`` per structure (N_s, 3) frame mm; ``frame_to_ras`` (4, 4) float64; ``warp``
    (3, G, G, G) float32 shape deformation field, mm (zeros without one); ``case`` int.
    """

    def __init__(self, cases: Sequence[LabelCase], length: int, spec: PredictTrainingSpec, seed: int) -> None:
        if not cases:
            raise CardioInputError("training label maps", "none given")
        self.cases, self.length, self.spec, self.seed = list(cases), length, spec, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(i))
        case_index = int(i) % len(self.cases)
        net = self.spec.net
        sample = synthesize_sample(self.cases[case_index], net.grid_size, net.spacing_mm, generator, self.spec.options)
        centroids, present = index_centroids(sample.index, len(sample.surfaces), net.spacing_mm)
        grid = warp_grid_size(self.spec.options)
        warp = sample.warp.field if sample.warp is not None else torch.zeros((3, grid, grid, grid))
        return {
            "image": sample.image[None].float(),
            "index": sample.index[None].long(),
            "centroids": centroids,
            "present": present,
            "surfaces": tuple(sample.surfaces),
            "frame_to_ras": torch.as_tensor(sample.frame_to_ras, dtype=torch.float64),
            "warp": warp,
            "case": case_index,
        }


def index_centroids(index: torch.Tensor, n_structures: int, spacing_mm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroids (S, 3) frame mm of the structures of a (D, D, D) index grid, and (S,) bool
    whether each has a voxel (absent ones get a zero centroid)."""
    grid = frame_grid_points(index.shape[0], spacing_mm).reshape(-1, 3)
    flat = index.reshape(-1)
    counts = torch.bincount(flat, minlength=n_structures + 1)[1:n_structures + 1].float()
    sums = torch.zeros(n_structures + 1, 3).index_add_(0, flat, grid)[1:n_structures + 1]
    present = counts > 0
    return sums / counts.clamp(min=1)[:, None], present


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the grids; keep the per-structure surfaces as a list (their sizes differ)."""
    stacked = {key: torch.stack([s[key] for s in samples]) for key in ("image", "index", "centroids", "present",
                                                                        "frame_to_ras", "warp")}
    return stacked | {"surfaces": [s["surfaces"] for s in samples],
                      "case": torch.tensor([s["case"] for s in samples])}


class PredictObjective:
    """``loss_fn(model, batch) -> (loss, metrics)`` of the Predict network (module docstring)."""

    def __init__(self, cases: Sequence[LabelCase], names: Sequence[str], spec: PredictTrainingSpec,
                 faces: Sequence[torch.Tensor], sizes: Sequence[int]) -> None:
        self.cases, self.names, self.spec = list(cases), tuple(names), spec
        self.faces = [f.long() for f in faces]
        self.sizes = [int(n) for n in sizes]
        self.rules = RuleSet.default()
        self.segmentation = DiceCELoss(to_onehot_y=True, softmax=True)
        offsets = np.cumsum([0] + self.sizes[:-1])
        merged = torch.cat([f + int(o) for f, o in zip(self.faces, offsets, strict=True)])
        n_verts = sum(self.sizes)
        self.laplacian = uniform_laplacian(merged, n_verts).float().coalesce()
        rows, cols = self.laplacian.indices()
        on_diagonal = rows == cols
        degree = torch.zeros(n_verts).index_add_(0, rows[on_diagonal], self.laplacian.values()[on_diagonal])
        self.inverse_degree = 1.0 / degree.clamp(min=1.0)
        self.generator = torch.Generator().manual_seed(spec.seed)

    def _surface_term(
        self, stages: list[torch.Tensor], surfaces: list[tuple[torch.Tensor, ...]]
    ) -> tuple[torch.Tensor, float]:
        """The weighted Chamfer loss over the blocks, and the mean Chamfer (mm) of the last block
        (the logged ``chamfer_mm``, on the same subsampled boundary points)."""
        terms, last = [], []
        for k, verts in enumerate(stages):
            weight = 1.0 if k == len(stages) - 1 else 0.5
            for b, per_structure in enumerate(surfaces):
                for s, part in enumerate(verts[b].split(self.sizes)):
                    target = per_structure[s]
                    if target.shape[0] == 0:
                        continue
                    if target.shape[0] > self.spec.surface_points:
                        pick = torch.randperm(target.shape[0], generator=self.generator)[:self.spec.surface_points]
                        target = target[pick.to(target.device)]
                    distance = chamfer_distance(part, target.to(part.dtype))
                    terms.append(weight * distance)
                    if k == len(stages) - 1:
                        last.append(float(distance.detach()))
        loss = torch.stack(terms).sum() / (len(surfaces) * len(self.sizes) * (1 + 0.5 * (len(stages) - 1)))
        return loss, float(np.mean(last))

    def _mie_term(self, verts: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        terms = []
        for b in range(verts.shape[0]):
            present = [s for s in range(len(self.names)) if bool(batch["present"][b, s])]
            names = [self.names[s] for s in present]
            rules = self.rules.subset(names).rules
            parts = verts[b].split(self.sizes)
            meshes = [(parts[s], self.faces[s].to(verts.device)) for s in present]
            case = self.cases[int(batch["case"][b])]
            net = self.spec.net
            warp = (FrameWarp.on_frame(batch["warp"][b], net.grid_size, net.spacing_mm)
                    if self.spec.options.elastic_mm > 0 or self.spec.options.dilate else None)
            lookup = label_lookup(case, batch["frame_to_ras"][b].cpu().numpy(), warp)
            # label_lookup gives the structure index (-1 background); mie_loss wants the index
            # into `names` (the present structures): table[-1] is the extra last entry, -1.
            table = torch.full((len(self.names) + 1,), -1, dtype=torch.long, device=verts.device)
            table[torch.tensor(present, device=verts.device)] = torch.arange(len(present), device=verts.device)

            def labels_fn(points: torch.Tensor, lookup=lookup, table=table) -> torch.Tensor:
                return table[lookup(points).to(points.device)]

            loss, _ = mie_term(meshes, names, rules, n_points=self.spec.mie_points,
                               point_labels_fn=labels_fn, generator=self.generator)
            terms.append(loss)
        return torch.stack(terms).mean()

    def __call__(self, model: torch.nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        weights = self.spec.weights
        output = model(batch["image"])
        final = output.stages[-1]
        surface, chamfer_mm = self._surface_term(output.stages, batch["surfaces"])
        terms = {
            "segmentation": self.segmentation(output.logits.float(), batch["index"]),
            "centroid": torch.nn.functional.smooth_l1_loss(
                output.centroids[batch["present"]] / self.spec.net.spacing_mm,
                batch["centroids"][batch["present"]].to(output.centroids.dtype) / self.spec.net.spacing_mm),
            "surface": surface,
        }
        offsets = (final - output.aligned).float()
        laplacian = self.laplacian.to(offsets.device)
        bent = torch.stack([torch.sparse.mm(laplacian, o) for o in offsets]) * self.inverse_degree.to(offsets.device)[:, None]
        terms["laplacian"] = bent.pow(2).sum(dim=-1).mean()
        if weights.mie > 0:
            terms["mie"] = self._mie_term(final.float(), batch)
        total = sum(getattr(weights, name) * value for name, value in terms.items())
        metrics = {name: float(value.detach()) for name, value in terms.items()}
        metrics["chamfer_mm"] = chamfer_mm
        return total, metrics


def initial_predictor(init: str, net: PredictNetSpec, names: Sequence[str]) -> MeshPredictor:
    """The trained predictor a fine-tuning run starts from: ``"bundled"`` or a model file, on the
    CPU in train mode.

    Raises:
        CardioInputError: its architecture differs from ``net`` or its structures from ``names``.
        WeightsError: an unreadable or foreign file.
    """
    predictor = MeshPredictor.from_bundled(device="cpu") if init == "bundled" else MeshPredictor.load(init)
    if predictor.spec != net:
        raise CardioInputError(f"initial predictor {init}", f"has the architecture {predictor.spec.to_dict()}, "
                               f"not the requested {net.to_dict()}", "train with its grid size and spacing")
    if tuple(predictor.names) != tuple(names):
        raise CardioInputError(f"initial predictor {init}", f"predicts {list(predictor.names)}, "
                               f"the label maps hold {list(names)}", "use the same structure coding")
    predictor.net.train()
    return predictor


def _initial_weights_record(init: str) -> dict[str, Any] | str:
    """The model card's record of where the weights started."""
    if not init:
        return "random (seeded)"
    if init == "bundled":
        from cardiocore.weights import ModelRegistry

        entry = ModelRegistry().find(BUNDLED_PREDICTOR).entry
        return {"model": entry["name"], "version": entry["version"], "sha256": entry["sha256"]}
    return {"file": str(Path(init).resolve())}


@dataclass
class TrainedPredictor:
    """What :func:`train_predictor` produced."""

    predictor: MeshPredictor
    model_path: Path
    result: TrainResult


def train_predictor(
    cases: Sequence[LabelCase],
    template: HeartTemplate,
    out_dir: str | os.PathLike,
    spec: PredictTrainingSpec | None = None,
    *,
    name: str = "user",
    data_description: str = "",
    data_license: str = "",
    resume: bool = False,
    overwrite: bool = False,
    progress: TrainProgress | None = None,
    should_stop: Callable[[], bool] | threading.Event | None = None,
) -> TrainedPredictor:
    """Train a Predict-mode network on synthetic images of ``cases`` (module docstring).

    Args:
        cases: training label maps (:func:`cardiocore.recon.synth.load_cases`).
        template: the template to deform (its structures must be the cases' structures); with
            ``spec.init`` and ``spec.init_template`` the initial predictor's own template is used
            instead.
        out_dir: checkpoints (``out_dir/checkpoints``) and the result ``out_dir/model.pt``.
        spec: the settings (default :class:`PredictTrainingSpec`).
        name, data_description, data_license: for the model card.
        resume: continue an interrupted run from its last checkpoint.
        overwrite: replace checkpoints and a model written with other settings.
        progress: ``progress(step, steps, metrics)``; should_stop: ends the run cleanly.

    Raises:
        CardioInputError: no case, structures that the template lacks, an existing model file
            without ``overwrite``, an initial predictor of another architecture or structures.
        WeightsError: an initial predictor file that cannot be read.
    """
    spec = spec or PredictTrainingSpec()
    out = Path(out_dir)
    model_path = out / MODEL_FILE
    if model_path.exists() and not (overwrite or resume):
        raise CardioInputError(str(model_path), "already exists", "pass --overwrite, --resume or another --out")
    if not cases:
        raise CardioInputError("training label maps", "none given")
    names = cases[0].names
    missing = [n for n in names if n not in template.names]
    if missing:
        raise CardioInputError("template", f"lacks the structures {missing} of the label maps")
    if spec.init and spec.init_template:
        predictor = initial_predictor(spec.init, spec.net, names)
        template = predictor.template()
    elif spec.init:
        template = template.subset(names)
        predictor = MeshPredictor.create(spec.net, template)
        predictor.net.load_state_dict(initial_predictor(spec.init, spec.net, names).net.state_dict())
    else:
        template = template.subset(names)
        with torch.random.fork_rng(devices=[]):  # the initial weights depend on the seed alone
            torch.manual_seed(spec.seed)
            predictor = MeshPredictor.create(spec.net, template)
    net: MeshPredictionNet = predictor.net
    objective = PredictObjective(cases, names, spec, template.faces, net.sizes)
    train = SyntheticImages(cases, spec.steps * spec.batch, spec, spec.seed)
    val = SyntheticImages(cases, spec.val_images, spec, spec.seed + 7919)
    optimizer = torch.optim.Adam(net.parameters(), lr=spec.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=spec.steps, eta_min=spec.lr * 0.02)
    config = TrainConfig(
        batch_size=spec.batch,
        max_steps=spec.steps,
        checkpoint_dir=out / "checkpoints",
        checkpoint_every=max(1, spec.steps // 20),
        val_every=max(1, spec.steps // 10),
        best_metric="val/chamfer_mm",
        log_every=max(1, spec.steps // 200),
        seed=spec.seed,
        device=spec.device,
        grad_clip_norm=1.0,
        shuffle=False,
        show_progress=progress is None,
        overwrite=overwrite,
        run_config=spec.run_config(),
    )
    trainer = Trainer(net, optimizer, objective, train, val, config=config, scheduler=scheduler,
                      collate_fn=collate_samples, progress_callback=progress, should_stop=should_stop)
    try:
        result = trainer.fit(resume=resume)
    except torch.OutOfMemoryError as error:
        raise CardioInputError("Predict training", f"ran out of GPU memory with batches of {spec.batch} ({error})",
                               "lower --batch or train with --device cpu (resume with --resume)") from error
    folder = out / "checkpoints"
    best = folder / "best.pt" if (folder / "best.pt").is_file() else folder / "last.pt"
    net.load_state_dict(trained_weights(load_checkpoint(best)))
    net.cpu().eval()
    validation = {k: v for k, v in (result.history[-1] if result.history else {}).items() if k.startswith("val/")}
    predictor.card = {
        "name": name,
        "task": "multi-chamber heart meshes from a CT/MR image (CardioReconstruct Predict mode)",
        "training_data": data_description or ", ".join(c.name for c in cases),
        "initial_weights": _initial_weights_record(spec.init),
        "training_cases": [c.name for c in cases],
        "data_license": data_license,
        "settings": spec.run_config(),
        "steps_done": result.step,
        "stopped_early": result.stopped_early,
        "best_checkpoint": best.name,
        "validation": validation,
        "date": datetime.date.today().isoformat(),
        "cardiocore_version": cardiocore.__version__,
    }
    predictor.save(model_path, overwrite=True)
    return TrainedPredictor(predictor, model_path, result)

