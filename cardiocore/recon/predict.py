"""Predict mode: multi-chamber heart meshes from a CT or MR image with a trained network.

:class:`MeshPredictor` is a model file: the network (:mod:`cardiocore.recon.predict_net`), the
template it deforms (structure names, centred vertices, faces), the rule set's structure names
and the model card. :func:`predict_meshes` resamples an image onto the network's grid (axes
along RAS, centred on the field of view unless told otherwise; anti-aliased; intensities
normalised by percentiles, :func:`cardiocore.recon.synth.image_to_frame`), runs the network and
returns the meshes in RAS mm, template topology, as a :class:`cardiocore.recon.fit.FitResult`
(``losses`` empty), so the fit's writers and metrics serve both modes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from cardiocore.errors import CardioInputError, VolumeError, WeightsError
from cardiocore.geometry.grid import checked_matrix
from cardiocore.recon.fit import FitResult
from cardiocore.recon.predict_net import MeshPredictionNet, PredictNetSpec
from cardiocore.recon.refine import DECODER_VOTE, fused_segmentation, refine_to_segmentation
from cardiocore.recon.resolve import Mesh, ResolveReport, resolve_meshes
from cardiocore.recon.rules import RuleSet
from cardiocore.recon.template import HeartTemplate
from cardiocore.train.device import select_device
from cardiocore.weights import read_model_file, write_model_file

FILE_FORMAT = "cardiocore.recon_predictor"
FILE_VERSION = 1
BUNDLED_PREDICTOR = "cardiorecon-whs"
MAX_ANISOTROPY = 8.0
"""Voxel spacing ratios above this are warned about (thick slices lose the through-plane shape)."""
MAX_TRAINED_SLICE_MM = 12.0
"""Thickest slices of the training images (thick-slice augmentation: 2-4 voxels of the 3 mm grid);
coarser spacings are warned about as outside what the network has seen."""

ProgressFn = Callable[[float, str], None]


@dataclass
class MeshPredictor:
    """A trained Predict-mode network with its template and model card.

    Attributes:
        net: the network (eval mode after :meth:`load`).
        names: structure names in the network's order.
        template_faces: per structure, triangles (F_s, 3) int64 (the output topology).
        card: model card and training record (JSON-compatible).
    """

    net: MeshPredictionNet
    names: tuple[str, ...]
    template_faces: tuple[torch.Tensor, ...]
    card: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, spec: PredictNetSpec, template: HeartTemplate, card: Mapping[str, Any] | None = None,
               centre: bool = True) -> MeshPredictor:
        """An untrained predictor over ``template``, its vertices centred on their centroid
        (``centre=False``: taken as they are, for a template that is already centred)."""
        verts = torch.cat([v.float() for v in template.verts])
        if centre:
            verts = verts - verts.mean(dim=0)
        net = MeshPredictionNet(spec, verts, template.faces, [int(v.shape[0]) for v in template.verts])
        return cls(net, tuple(template.names), tuple(f.long() for f in template.faces), dict(card or {}))

    @property
    def spec(self) -> PredictNetSpec:
        return self.net.spec

    def template(self) -> HeartTemplate:
        """The network's (centred) template as a :class:`HeartTemplate`, on the CPU."""
        verts = self.net.template.detach().cpu().split(self.net.sizes)
        return HeartTemplate(self.names, tuple(verts), self.template_faces, "template of a trained predictor")

    def to_payload(self) -> dict[str, Any]:
        template = self.template()
        return {
            "format": FILE_FORMAT,
            "format_version": FILE_VERSION,
            "spec": self.spec.to_dict(),
            "names": list(self.names),
            "template_verts": list(template.verts),
            "template_faces": [f.cpu() for f in template.faces],
            "state_dict": {k: v.cpu() for k, v in self.net.state_dict().items()},
            "card": self.card,
        }

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the predictor atomically; refuses an existing file unless ``overwrite``."""
        return write_model_file(path, self.to_payload(), overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> MeshPredictor:
        """Read a predictor written by :meth:`save`, in eval mode on ``device``.

        Raises:
            WeightsError: missing or unreadable file, another format or version, weights that do
                not fit their architecture.
        """
        source = Path(path)
        payload = read_model_file(source, FILE_FORMAT, FILE_VERSION, "CardioReconstruct predictor")
        try:
            template = HeartTemplate(tuple(payload["names"]), tuple(payload["template_verts"]),
                                     tuple(payload["template_faces"]))
            predictor = cls.create(PredictNetSpec.from_dict(payload["spec"]), template, payload.get("card"), centre=False)
            predictor.net.load_state_dict(payload["state_dict"])
        except (KeyError, TypeError, RuntimeError, ValueError) as error:
            raise WeightsError(str(source), f"holds weights that do not fit their architecture ({error})") from error
        predictor.net.to(torch.device(device)).eval()
        return predictor

    @classmethod
    def from_bundled(cls, name: str = BUNDLED_PREDICTOR, version: str | None = None, device: str = "auto") -> MeshPredictor:
        """The predictor ``name`` from the bundled or user manifest (checksum verified)."""
        from cardiocore.weights import resolve_model

        return cls.load(resolve_model(name, version), select_device(device))


def load_predictor(model_path: str | os.PathLike | None = None, device: str | torch.device = "auto") -> MeshPredictor:
    """The Predict-mode network of ``model_path`` (a file written by ``cardio recon train``), or
    the bundled one (:data:`BUNDLED_PREDICTOR`) when None, in eval mode
    on ``device`` ("auto": CUDA when available).

    Raises:
        WeightsError: missing, unreadable or incompatible weights (the bundled model is not
            installed, the file is not a predictor, ...).
    """
    if model_path:
        return MeshPredictor.load(Path(model_path).expanduser(), select_device(device))
    return MeshPredictor.from_bundled(device=str(device))


class NetworkOutput(NamedTuple):
    """What the network says about one image, in RAS.

    verts: (V, 3) float32 RAS mm, the decoder's vertices (all structures, template order).
    probabilities: (S + 1, D, D, D) float32 softmax of the segmentation head on the network grid
        (channel 0 background, s + 1 structure s of the predictor's names).
    ijk_to_ras: (4, 4) float64 voxel-to-RAS matrix of the network grid, mm.
    """

    verts: torch.Tensor
    probabilities: torch.Tensor
    ijk_to_ras: np.ndarray


def run_network(predictor: MeshPredictor, grid: torch.Tensor, frame_to_ras: np.ndarray) -> NetworkOutput:
    """The network's output for one frame image ``grid`` (D, D, D) whose frame ``frame_to_ras``
    (4, 4) places in RAS (eval mode, no gradients)."""
    from cardiocore.recon.synth import frame_grid_matrix

    device = next(predictor.net.parameters()).device
    predictor.net.eval()
    with torch.no_grad():
        output = predictor.net(grid.to(device=device, dtype=torch.float32)[None, None])
    transform = torch.as_tensor(frame_to_ras, dtype=torch.float64)
    verts = (output.stages[-1][0].double().cpu() @ transform[:3, :3].T + transform[:3, 3]).float()
    probabilities = output.logits[0].float().softmax(dim=0).cpu()
    spec = predictor.spec
    return NetworkOutput(verts, probabilities, np.asarray(frame_to_ras, dtype=np.float64) @ frame_grid_matrix(
        spec.grid_size, spec.spacing_mm))


class FinishedMeshes(NamedTuple):
    """Predict mode's meshes after refinement and resolution.

    meshes: per kept structure (vertices (V_s, 3) float32 RAS mm, faces (F_s, 3) int64).
    report: what the resolution step did (None without it).
    seconds: wall time of ``"refine"`` and ``"resolve"``.
    unrefined: kept structures the refinement left as the network drew them (absent from the
        network's segmentation, or so small in it that their fit collapsed); empty without
        refinement.
    """

    meshes: list[Mesh]
    report: ResolveReport | None
    seconds: dict[str, float]
    unrefined: tuple[str, ...]


def finish_meshes(
    predictor: MeshPredictor,
    output: NetworkOutput,
    keep: Sequence[str],
    *,
    refine_steps: int = 0,
    decoder_vote: float = DECODER_VOTE,
    resolve: bool = True,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FinishedMeshes:
    """The meshes of the structures ``keep`` (in predictor order) from the network's output:
    refined against the network's segmentation for ``refine_steps`` steps when > 0 (the head's
    probabilities plus ``decoder_vote`` for the decoder's meshes,
    :func:`cardiocore.recon.refine.fused_segmentation`, fitted by
    :func:`cardiocore.recon.refine.refine_to_segmentation`; ``should_stop`` ends it early), then
    resolved by the default rules between the known structures when ``resolve``."""
    if refine_steps < 0:
        raise CardioInputError("refine steps", f"must be 0 (no refinement) or more, got {refine_steps}")
    t_start = time.perf_counter()
    meshes = list(zip(output.verts.split(predictor.net.sizes), predictor.template_faces, strict=True))
    names = [n for n in predictor.names if n in keep]
    unrefined: tuple[str, ...] = ()
    if refine_steps > 0:
        def step_progress(step: int, steps: int) -> None:
            if progress:
                progress(0.8 * step / steps, f"refining against the network's segmentation: step {step}/{steps}")

        target = fused_segmentation(output.probabilities, meshes, output.ijk_to_ras, decoder_vote)
        meshes, refined = refine_to_segmentation(meshes, predictor.names, target, output.ijk_to_ras,
                                                 steps=refine_steps, only=names,
                                                 device=next(predictor.net.parameters()).device,
                                                 progress=step_progress, should_stop=should_stop)
        unrefined = tuple(n for n in names if n not in refined)
    t_refined = time.perf_counter()
    kept = [m for n, m in zip(predictor.names, meshes, strict=True) if n in keep]
    report = None
    if resolve:
        if progress:
            progress(0.8, "separating the structures and untangling the meshes")
        default = RuleSet.default()
        known = [n for n in names if n in default.names]
        kept, report = resolve_meshes(kept, names, default.subset(known).rules if known else [])
    return FinishedMeshes(kept, report, {"refine": t_refined - t_start, "resolve": time.perf_counter() - t_refined},
                          unrefined)


def _check_image(image: np.ndarray | torch.Tensor, ijk_to_ras: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Validate the image and its matrix; returns the matrix and warnings."""
    if image.ndim != 3:
        raise VolumeError("image", f"must be a 3-D (I, J, K) volume, got shape {tuple(image.shape)}")
    if min(image.shape) < 2:
        raise VolumeError("image", f"has a dimension of size < 2: {tuple(image.shape)}")
    matrix = checked_matrix(ijk_to_ras)
    warnings = []
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    ratio = spacing.max() / spacing.min()
    reasons = ([f"extremely anisotropic (ratio {ratio:.0f})"] if ratio > MAX_ANISOTROPY else []) + (
        [f"coarser than the {MAX_TRAINED_SLICE_MM:g} mm slices the network was trained with"]
        if spacing.max() > MAX_TRAINED_SLICE_MM else [])
    if reasons:
        warnings.append(
            f"voxel spacing {np.round(spacing, 2).tolist()} mm is {' and '.join(reasons)}: the shape across the "
            "slices is guessed and may be far off (on a real cine short-axis stack with 17.7 mm slices the "
            "end-diastolic cavities came out at a few ml, under half the true volumes after refinement). Check "
            "the meshes against the image; for sparse slices, segment them (Segment Editor) and use Fit mode, "
            "which fits such a stack on its slice planes, with its long-axis slices too if segmented (on that "
            "study's expert contours: LV cavity within 2.1 mm of the reference at end-diastole, 1.4 mm with three "
            "long-axis views)")
    return matrix, warnings


def _screened_intensities(image: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """The image (I, J, K) as a tensor (sharing the caller's memory when nothing needs changing)
    with its NaN and infinite voxels set to its lowest finite value, and a warning saying how many
    there were; the caller's array is never modified.

    Raises:
        VolumeError: no finite voxel, or one value in every finite voxel (nothing to predict from:
            the network would still draw a heart).
    """
    from cardiocore.recon.synth import volume_tensor

    tensor = volume_tensor(image, "image")
    low, high = (float(v) for v in torch.aminmax(tensor))  # NaN propagates, so finite means all finite
    warnings = []
    if not (np.isfinite(low) and np.isfinite(high)):
        finite = torch.isfinite(tensor)
        n_bad = tensor.numel() - int(finite.sum())
        if n_bad == tensor.numel():
            raise VolumeError("image", "has no finite voxel: every value is NaN or infinite",
                              "check that the volume was read correctly")
        low = float(torch.where(finite, tensor, torch.inf).amin())
        high = float(torch.where(finite, tensor, -torch.inf).amax())
        tensor = torch.nan_to_num(tensor, nan=low, posinf=low, neginf=low)
        warnings.append(f"{n_bad} voxels ({100.0 * n_bad / tensor.numel():.2g} %) of the image are NaN or "
                        f"infinite: set to its lowest finite value ({low:g}) for the network")
    if low == high:
        raise VolumeError("image", f"has the same value ({low:g}) in every finite voxel: there is nothing to "
                                   "predict from", "check that the right volume was chosen and read correctly")
    return tensor, warnings


def predict_meshes(
    image: np.ndarray | torch.Tensor,
    ijk_to_ras: np.ndarray,
    predictor: MeshPredictor,
    *,
    centre_ras: Sequence[float] | None = None,
    structures: Sequence[str] | None = None,
    resolve: bool = True,
    refine_steps: int = 0,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[FitResult, list[str]]:
    """Predict the heart meshes of one image.

    Args:
        image: (I, J, K) CT or MR intensities (any units: normalised by percentiles).
        ijk_to_ras: (4, 4) voxel-to-RAS matrix, mm (oblique and anisotropic allowed).
        predictor: the trained network (on the device to run on).
        centre_ras: (3,) RAS mm centre of the network's field of view (default: the image's
            centre); the field of view is ``grid_size * spacing_mm`` mm wide.
        structures: the structures to return (default all of the predictor's).
        resolve: finish with :func:`cardiocore.recon.resolve.resolve_meshes` (violations of the
            default rules between the returned structures pushed out, self-intersections untangled).
        refine_steps: when > 0, first refine the meshes against the network's own segmentation
            for that many fit steps (:mod:`cardiocore.recon.refine`: slower, closer to the image).
        progress: ``progress(fraction, message)``; should_stop: polled by the refinement (True
            ends it early, and the meshes are those reached so far).

    Returns:
        The meshes (RAS mm, template topology) as a :class:`FitResult` whose ``missing`` lists
        the requested structures the predictor does not know, and warnings (resampling,
        anisotropy, NaN or infinite voxels) for the user.

    Raises:
        VolumeError: not a 3-D image, a bad matrix, no finite voxel or one value everywhere.
        CardioInputError: none of ``structures`` known to the predictor; a centre that puts the
            field of view outside the image.
    """
    from cardiocore.recon.synth import image_to_frame

    t_start = time.perf_counter()
    matrix, warnings = _check_image(image, ijk_to_ras)
    image, screened = _screened_intensities(image)
    warnings += screened
    spec = predictor.spec
    wanted = tuple(structures) if structures is not None else predictor.names
    unknown = tuple(n for n in wanted if n not in predictor.names)
    keep = [n for n in predictor.names if n in wanted]
    if not keep:
        raise CardioInputError("structures", f"none of {list(wanted)} is predicted by this model",
                               f"it predicts: {', '.join(predictor.names)}")
    if progress:
        progress(0.05, "resampling the image onto the network grid")
    centre = None if centre_ras is None else np.asarray(centre_ras, dtype=np.float64)
    grid, frame_to_ras = image_to_frame(image, matrix, spec.grid_size, spec.spacing_mm, centre)
    n_voxels = int(np.prod(image.shape))
    if n_voxels > spec.grid_size ** 3:
        warnings.append(f"image of {tuple(image.shape)} voxels resampled to {spec.grid_size}^3 at "
                        f"{spec.spacing_mm:g} mm for the network")
    t_resampled = time.perf_counter()
    if progress:
        progress(0.3, "running the network")
    output = run_network(predictor, grid, frame_to_ras)
    t_predicted = time.perf_counter()

    def finish_progress(fraction: float, message: str) -> None:
        if progress:
            progress(0.35 + 0.6 * fraction, message)

    finished = finish_meshes(predictor, output, keep, refine_steps=refine_steps, resolve=resolve,
                             progress=finish_progress, should_stop=should_stop)
    if finished.unrefined:
        warnings.append("not refined (absent from the network's segmentation, or too small in it to fit): "
                        + ", ".join(finished.unrefined))
    t_end = time.perf_counter()
    if progress:
        progress(1.0, "done")
    result = FitResult(
        names=tuple(keep),
        verts=tuple(v for v, _ in finished.meshes),
        faces=tuple(f for _, f in finished.meshes),
        missing=unknown,
        seconds={"prepare": t_resampled - t_start, "initialise": 0.0, "optimise": t_predicted - t_resampled,
                 **finished.seconds, "total": t_end - t_start},
        initial_affine=frame_to_ras,
        resolved=finished.report,
    )
    return result, warnings
