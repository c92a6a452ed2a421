"""CardioReconstruct Predict mode: the network's alignment, a tiny CPU training run, the model
file, and inference on images in RAS.

Training data are synthetic images of the seven-structure heart phantom
(:func:`cardiocore.phantoms.heart.heart_label_phantom`, known truth), on a coarse 32^3 grid of
6 mm voxels with a small network so that a run takes seconds.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from cardiocore.cli import main as cardio_main
from cardiocore.errors import CardioInputError, VolumeError, WeightsError
from cardiocore.phantoms.heart import heart_label_phantom
from cardiocore.recon.predict import MeshPredictor, predict_meshes
from cardiocore.recon.predict_eval import evaluate_on_synthetic, summarise
from cardiocore.recon.predict_net import PredictNetSpec, ridge_affine
from cardiocore.recon.predict_train import PredictLossWeights, PredictTrainingSpec, train_predictor
from cardiocore.recon.rules import RuleSet
from cardiocore.recon.synth import prepare_case
from cardiocore.recon.template import load_template

TINY_NET = PredictNetSpec(grid_size=32, spacing_mm=6.0, unet_features=(4, 8, 8, 16, 16, 4), graph_channels=16,
                          graph_layers=1, n_blocks=2)


@pytest.fixture(scope="module")
def phantom_cases() -> list:
    """Two seeded phantom heart label maps (1.5 mm grids) prepared for synthesis."""
    cases = []
    for seed in (1, 2):
        phantom = heart_label_phantom(shape=(100, 100, 100), spacing=(1.5, 1.5, 1.5), seed=seed)
        cases.append(prepare_case(phantom.labels, phantom.ijk_to_ras, RuleSet.default(), f"phantom-{seed}",
                                  spacing_mm=1.5, n_surface=800))
    return cases


@pytest.fixture(scope="module")
def tiny_run(phantom_cases, tmp_path_factory) -> tuple:
    """A 60-step CPU training run of the tiny network on the phantoms (no MIE, for speed)."""
    spec = PredictTrainingSpec(net=TINY_NET, steps=60, lr=3e-3, surface_points=400, val_images=2,
                               weights=PredictLossWeights(mie=0.0), device="cpu")
    out = tmp_path_factory.mktemp("predict-run")
    trained = train_predictor(phantom_cases, load_template(), out, spec, name="tiny", data_license="synthetic")
    return trained, spec, out


def test_ridge_affine_recovers_an_affine_from_exact_centroids() -> None:
    generator = torch.Generator().manual_seed(0)
    source = torch.randn(7, 3, generator=generator, dtype=torch.float64) * 30.0
    linear = torch.tensor([[1.1, 0.1, 0.0], [-0.05, 0.9, 0.2], [0.0, 0.1, 1.2]], dtype=torch.float64)
    shift = torch.tensor([5.0, -12.0, 3.0], dtype=torch.float64)
    target = (source @ linear.T + shift)[None]
    found_linear, found_shift = ridge_affine(source, target, ridge=1e-9)
    assert torch.allclose(found_linear[0], linear, atol=1e-5)
    assert torch.allclose(found_shift[0], shift, atol=1e-4)
    # A strong ridge keeps only the isotropic part: the result tends to a scaled identity.
    strong, _ = ridge_affine(source, target, ridge=1e6)
    scale = strong[0].diagonal().mean()
    assert torch.allclose(strong[0], scale * torch.eye(3, dtype=torch.float64), atol=1e-3)


def test_an_untrained_network_returns_the_aligned_template(phantom_cases) -> None:
    """Zero-initialised offset layers: every deformation block keeps the aligned template."""
    predictor = MeshPredictor.create(TINY_NET, load_template())
    output = predictor.net(torch.rand(2, 1, 32, 32, 32))
    assert output.logits.shape == (2, 8, 32, 32, 32)
    assert output.centroids.shape == (2, 7, 3)
    assert len(output.stages) == 2
    assert torch.equal(output.stages[-1], output.aligned)
    with pytest.raises(CardioInputError, match="image"):
        predictor.net(torch.rand(1, 1, 8, 8, 8))


def test_a_tiny_training_run_learns_the_phantom_hearts(tiny_run, phantom_cases) -> None:
    trained, spec, out = tiny_run
    assert trained.result.step == spec.steps
    assert (out / "model.pt").is_file() and (out / "checkpoints" / "last.pt").is_file()
    history = trained.result.history
    first_chamfer = next(h["chamfer_mm"] for h in history if "chamfer_mm" in h)
    final_val = [h["val/chamfer_mm"] for h in history if "val/chamfer_mm" in h][-1]
    # The untrained network places a template shrunk onto uniform-attention centroids; 60 steps
    # bring the meshes much closer to the label surfaces of new synthetic images (scored as the
    # network outputs them: resolving a 60-step network's heavily overlapping meshes moves too
    # many vertices to tell what the network learnt).
    assert final_val < 0.6 * first_chamfer
    rows = evaluate_on_synthetic(trained.predictor, phantom_cases, images_per_case=1, vr_points=2000, resolve=False)
    summary = summarise(rows, trained.predictor.names)
    assert summary["median_chamfer_mm"] < 0.6 * first_chamfer
    assert np.mean([summary[f"median_dice_{n}"] for n in trained.predictor.names]) > 0.1  # 0.17 measured


def test_the_model_file_round_trips_and_carries_its_card(tiny_run) -> None:
    trained, spec, out = tiny_run
    loaded = MeshPredictor.load(out / "model.pt")
    assert loaded.names == trained.predictor.names
    assert loaded.card["settings"] == spec.run_config()
    assert loaded.card["training_cases"] == ["phantom-1", "phantom-2"]
    image = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.net(image).stages[-1], trained.predictor.net(image).stages[-1])
    with pytest.raises(CardioInputError, match="already exists"):
        loaded.save(out / "model.pt")
    with pytest.raises(WeightsError, match="not a CardioReconstruct predictor"):
        torch.save({"format": "other"}, out / "other.pt")
        MeshPredictor.load(out / "other.pt")


def test_resuming_a_finished_run_keeps_its_weights(tiny_run, phantom_cases) -> None:
    trained, spec, out = tiny_run
    again = train_predictor(phantom_cases, load_template(), out, spec, resume=True)
    assert again.result.step == spec.steps
    for key, value in trained.predictor.net.state_dict().items():
        assert torch.equal(again.predictor.net.state_dict()[key], value), key


def test_changed_settings_refuse_to_reuse_the_checkpoints(tiny_run, phantom_cases) -> None:
    _, spec, out = tiny_run
    with pytest.raises(CardioInputError):
        train_predictor(phantom_cases, load_template(), out, dataclasses.replace(spec, lr=1e-4), resume=True)


def test_fine_tuning_starts_from_the_given_predictor(tiny_run, phantom_cases, tmp_path) -> None:
    """``init``: the run starts from the trained weights (with a zero learning rate it ends
    there too), records them in the card, and refuses a predictor of another architecture."""
    trained, spec, out = tiny_run
    tuned_spec = dataclasses.replace(spec, steps=2, lr=0.0, val_images=1, init=str(out / "model.pt"))
    tuned = train_predictor(phantom_cases, load_template(), tmp_path / "tuned", tuned_spec)
    for key, value in trained.predictor.net.state_dict().items():
        assert torch.equal(tuned.predictor.net.state_dict()[key], value), key
    assert tuned.predictor.card["initial_weights"] == {"file": str((out / "model.pt").resolve())}
    other = dataclasses.replace(tuned_spec, net=dataclasses.replace(TINY_NET, spacing_mm=5.0))
    with pytest.raises(CardioInputError, match="architecture"):
        train_predictor(phantom_cases, load_template(), tmp_path / "other", other)


def test_fine_tuning_can_move_the_weights_onto_another_template(tiny_run, phantom_cases, tmp_path) -> None:
    """``init_template=False``: the trained weights carry over onto the template given (here the
    bundled one enlarged by 10 % with its vertices renumbered), which the network then deforms."""
    trained, spec, out = tiny_run
    base = load_template()
    order = [torch.randperm(v.shape[0], generator=torch.Generator().manual_seed(s)) for s, v in enumerate(base.verts)]
    rank = [torch.argsort(o) for o in order]
    other = dataclasses.replace(base, verts=tuple(1.1 * v[o] for v, o in zip(base.verts, order, strict=True)),
                                faces=tuple(r[f] for f, r in zip(base.faces, rank, strict=True)))
    tuned_spec = dataclasses.replace(spec, steps=2, lr=0.0, val_images=1, init=str(out / "model.pt"),
                                     init_template=False)
    tuned = train_predictor(phantom_cases, other, tmp_path / "moved", tuned_spec)
    for key, value in trained.predictor.net.state_dict().items():
        assert torch.equal(tuned.predictor.net.state_dict()[key], value), key
    expected = torch.cat(other.subset(trained.predictor.names).verts)
    assert torch.allclose(tuned.predictor.net.template, expected - expected.mean(dim=0))
    assert all(torch.equal(a, b) for a, b in zip(tuned.predictor.template_faces,
                                                 other.subset(trained.predictor.names).faces, strict=True))
    assert tuned.predictor.card["settings"]["init_template"] is False
    reloaded = MeshPredictor.load(tmp_path / "moved" / "model.pt")
    assert torch.equal(reloaded.net.template, tuned.predictor.net.template)


def test_predictions_follow_the_image_in_ras(tiny_run) -> None:
    """The same voxels under a matrix shifted by T give meshes shifted by exactly T (the frame is
    centred on the field of view), on an oblique anisotropic grid."""
    predictor = tiny_run[0].predictor
    phantom = heart_label_phantom(shape=(60, 50, 40), spacing=(2.5, 3.0, 3.5), seed=3)
    image = np.where(phantom.labels > 0, 100.0 + 20.0 * phantom.labels, 0.0).astype(np.float32)
    angle = math.radians(20.0)
    rotation = np.array([[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0],
                         [0.0, 0.0, 1.0]])
    matrix = phantom.ijk_to_ras.copy()
    matrix[:3, :3] = rotation @ matrix[:3, :3]
    # The network's meshes (resolve=False): the resolution step's inside/outside tests at the
    # 0.5 winding-number threshold can flip for a borderline vertex when float32 coordinates shift.
    result, warnings = predict_meshes(image, matrix, predictor, resolve=False)
    shifted = matrix.copy()
    shifted[:3, 3] += (40.0, -25.0, 10.0)
    moved, _ = predict_meshes(image, shifted, predictor, resolve=False)
    assert result.names == predictor.names and not result.missing
    for a, b in zip(result.verts, moved.verts, strict=True):
        assert torch.allclose(b - a, torch.tensor([40.0, -25.0, 10.0]), atol=1e-3)
    # The meshes sit around the image's field of view, in RAS mm.
    centre = matrix[:3, :3] @ ((np.array(image.shape) - 1) / 2.0) + matrix[:3, 3]
    assert np.linalg.norm(torch.cat(result.verts).mean(dim=0).numpy() - centre) < 60.0
    assert any("resampled" in w for w in warnings)


def test_non_finite_voxels_are_replaced_and_blank_images_refused(tiny_run) -> None:
    """NaN and infinite voxels become the image's lowest finite value (the same meshes as an image
    filled so by hand), with a warning, and the caller's array keeps them; an image with no finite
    voxel or a single value is refused instead of getting a heart drawn on it."""
    predictor = tiny_run[0].predictor
    image = np.random.default_rng(1).random((24, 20, 16)).astype(np.float32) + 5.0
    matrix = np.diag([2.0, 2.5, 3.0, 1.0])
    image[3, 4, 5], image[10, 0, 2], image[0, 0, 0] = np.nan, np.inf, -np.inf
    filled = np.where(np.isfinite(image), image, image[np.isfinite(image)].min())
    result, warnings = predict_meshes(image, matrix, predictor, resolve=False)
    expected, _ = predict_meshes(filled, matrix, predictor, resolve=False)
    assert all(torch.equal(a, b) for a, b in zip(result.verts, expected.verts, strict=True))
    assert any(w.startswith("3 voxels (0.039 %) of the image are NaN or infinite: set to its lowest finite value")
               for w in warnings), warnings
    assert np.isnan(image[3, 4, 5]) and np.isposinf(image[10, 0, 2])
    with pytest.raises(VolumeError, match="image: has no finite voxel"):
        predict_meshes(np.full((8, 8, 8), np.nan, np.float32), matrix, predictor)
    with pytest.raises(VolumeError, match="image: has the same value \\(-1024\\) in every finite voxel"):
        predict_meshes(np.where(np.arange(8)[:, None, None] < 2, np.nan, np.full((8, 8, 8), -1024.0)), matrix, predictor)
    with pytest.raises(VolumeError, match="same value \\(7\\)"):
        predict_meshes(torch.full((8, 8, 8), 7, dtype=torch.int16), matrix, predictor)


def test_predict_subsets_and_bad_input(tiny_run) -> None:
    predictor = tiny_run[0].predictor
    image = np.random.default_rng(0).random((20, 20, 20)).astype(np.float32)
    matrix = np.diag([2.0, 2.0, 2.0, 1.0])
    result, _ = predict_meshes(image, matrix, predictor, structures=["rv", "lv_cavity", "left_thumb"])
    assert result.names == ("lv_cavity", "rv") and result.missing == ("left_thumb",)
    with pytest.raises(CardioInputError, match="none of"):
        predict_meshes(image, matrix, predictor, structures=["left_thumb"])
    with pytest.raises(VolumeError, match="3-D"):
        predict_meshes(image[0], matrix, predictor)
    with pytest.raises(VolumeError, match="ijk_to_ras: has a singular"):
        predict_meshes(image, np.diag([2.0, 0.0, 2.0, 1.0]), predictor)
    _, warnings = predict_meshes(image, np.diag([0.5, 0.5, 10.0, 1.0]), predictor)
    assert any("anisotropic" in w for w in warnings)
    _, warnings = predict_meshes(image, np.diag([3.0, 3.0, 15.0, 1.0]), predictor)  # ratio 5, but 15 mm slices
    assert any("coarser than the 12 mm slices" in w and "use Fit mode" in w for w in warnings)
    _, warnings = predict_meshes(image, np.diag([1.5, 1.5, 8.0, 1.0]), predictor)
    assert not any("anisotropic" in w for w in warnings)


def test_cli_train_writes_a_model_and_scores_held_out_maps(tmp_path, phantom_cases) -> None:
    """``cardio recon train`` on two phantom label files, a third held out (a few steps), with
    dilated and contracted chambers; the model card records the synthesis settings."""
    files = []
    for seed in (5, 6, 7):
        phantom = heart_label_phantom(shape=(80, 80, 80), spacing=(1.8, 1.8, 1.8), seed=seed)
        path = tmp_path / f"phantom{seed}.npz"
        np.savez(path, labels=phantom.labels, ijk_to_ras=phantom.ijk_to_ras)
        files.append(str(path))
    out = tmp_path / "run"
    code = cardio_main(["recon", "train", "--labels", files[0], files[1], "--eval-labels", files[2],
                        "--eval-images", "1", "--steps", "4", "--grid-size", "32", "--spacing-mm", "6",
                        "--case-spacing-mm", "1.8", "--dilate", "lv_cavity", "rv", "--dilate-range", "0.9", "1.3",
                        "--device", "cpu", "--out", str(out)])
    assert code == 0
    loaded = MeshPredictor.load(out / "model.pt")
    options = loaded.card["settings"]["options"]
    assert options["dilate"] == ["lv_cavity", "rv"] and options["dilate_range"] == [0.9, 1.3]
    assert loaded.card["held_out"]["cases"] == ["phantom7"]
    assert 0.0 <= loaded.card["held_out"]["median_dice_rv"] <= 1.0
    assert (out / "held_out.json").is_file()
    assert cardio_main(["recon", "train", "--labels", files[0], "--steps", "4", "--grid-size", "32",
                        "--spacing-mm", "6", "--device", "cpu", "--out", str(out)]) == 2
    # By default the LV cavity and RV are scaled (the rule set has both); --dilate alone: none.
    for extra, expected in (([], ["lv_cavity", "rv"]), (["--dilate"], [])):
        other = tmp_path / f"run{len(extra)}"
        assert cardio_main(["recon", "train", "--labels", files[0], "--steps", "1", "--grid-size", "32",
                            "--spacing-mm", "6", "--case-spacing-mm", "1.8", "--no-mie", "--device", "cpu",
                            "--out", str(other), *extra]) == 0
        options = MeshPredictor.load(other / "model.pt").card["settings"]["options"]
        assert options["dilate"] == expected and options["dilate_range"] == [0.85, 1.65]


def test_bench_predict_prints_speed_and_held_out_dice_with_targets(tiny_run, tmp_path, capsys) -> None:
    """``cardio bench recon --predict-only --quick``: the 128^3 speed row and a held-out phantom."""
    phantom = heart_label_phantom(shape=(80, 80, 80), spacing=(1.8, 1.8, 1.8), seed=8)
    labels = tmp_path / "held_out.npz"
    np.savez(labels, labels=phantom.labels, ijk_to_ras=phantom.ijk_to_ras)
    report = tmp_path / "bench.json"
    assert cardio_main(["bench", "recon", "--predict-only", "--quick", "--model", str(tiny_run[2] / "model.pt"),
                        "--held-out", f"{labels}@default", "--eval-images", "1", "--case-spacing-mm", "1.8",
                        "--device", "cpu", "--refine-steps", "2", "--contrast", "ct", "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "phantom 128^3" in printed and "worst_chamber_dice" in printed
    figures = json.loads(report.read_text())
    plain, refined = figures["predict_speed"]
    for speed in (plain, refined):
        assert speed["target_s"] == 30.0 and speed["median_s"] > 0 and speed["meets"] == (speed["median_s"] <= 30.0)
    assert (plain["refine_steps"], refined["refine_steps"]) == (0, 2) and refined["refine_s"] > plain["refine_s"]
    for key, steps in (("predict_held_out", 0), ("predict_held_out_refined", 2)):
        summary = figures[key]["summary"]
        assert summary["dice_target"] == 0.85 and 0.0 <= summary["worst_chamber_dice"] <= 1.0
        assert summary["refine_steps"] == steps and summary["contrast"] == "ct"
    assert cardio_main(["bench", "recon", "--predict-only", "--quick", "--contrast", "pet"]) == 2
    assert "--contrast: unknown intensity model 'pet'" in capsys.readouterr().err
