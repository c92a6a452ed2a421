"""CardioGen end to end on phantoms: training stages, the model file, sampling in the data's frame,
conditions, virtual subjects, stop/resume, bad input, and the ``cardio gen`` commands."""

from __future__ import annotations

import copy
import csv
import threading

import numpy as np
import pytest
import torch
from gen_helpers import phantom_cohort
from scipy.spatial.transform import Rotation

from cardiocore.cli import main
from cardiocore.errors import CardioInputError, MeshError, WeightsError
from cardiocore.gen.clinical import CLINICAL_COLUMNS, lv_shape_indices, pair_ejection_fraction
from cardiocore.gen.model import CardioGenModel
from cardiocore.gen.training import GenTrainingSpec, split_as_recorded, subject_conditions, train_cardiogen


def test_training_learns_and_writes_a_complete_model(tiny_gen):
    model = tiny_gen.model
    assert tiny_gen.model_path.is_file() and sorted(model.diffusion) == ["ED", "ES", "conditional"]
    test = tiny_gen.splits["test"]
    train = tiny_gen.splits["train"]
    assert not set(test.subject_ids) & set(train.subject_ids)
    error = torch.linalg.vector_norm(model.reconstruct(test.verts) - test.verts, dim=-1).mean()
    baseline = torch.linalg.vector_norm(train.mean_shape() - test.verts, dim=-1).mean()
    assert float(error) < 0.8 * float(baseline)  # the VAE beats the mean shape on unseen subjects
    assert model.card["split"]["by"] == "subject" and model.card["metrics"]["val_vertex_error_mm"] > 0
    assert model.card["split"]["stratified_by"] == ["EDV_ml", "EF_percent"]
    recorded = split_as_recorded(phantom_cohort(24), model.card["split"])  # what cardio gen eval uses
    assert [part.subject_ids for part in recorded] == [tiny_gen.splits[k].subject_ids for k in ("train", "val", "test")]
    assert set(CLINICAL_COLUMNS) <= set(model.reference) and set(np.unique(model.reference["phase"])) == {0.0, 1.0}


def test_model_file_round_trip_and_bad_files(tiny_gen, tmp_path):
    loaded = CardioGenModel.load(tiny_gen.model_path)
    z = torch.randn(3, loaded.latent_dim)
    torch.testing.assert_close(loaded.decode(z), tiny_gen.model.decode(z))
    with pytest.raises(CardioInputError, match="already exists"):
        loaded.save(tiny_gen.model_path)
    with pytest.raises(WeightsError, match="no such"):
        CardioGenModel.load(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(tiny_gen.model_path.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="cannot be read"):
        CardioGenModel.load(corrupt)
    payload = loaded.to_payload()
    payload["format_version"] = 99
    future = tmp_path / "future.pt"
    torch.save(payload, future)
    with pytest.raises(WeightsError, match="format version 99"):
        CardioGenModel.load(future)


def test_samples_are_in_the_data_frame_and_seeded(tiny_gen):
    model, train = tiny_gen.model, tiny_gen.splits["train"]
    samples = model.sample(16, "ED", seed=3)
    assert samples.shape == (16, train.n_vertices, 3) and samples.dtype == torch.float32
    assert torch.equal(samples, model.sample(16, "ED", seed=3))
    assert not torch.equal(samples, model.sample(16, "ED", seed=4))
    real_ed = train.phase("ED").verts
    # generated meshes sit where the real ones are, at their size, in mm (not normalised units)
    mean_gap = torch.linalg.vector_norm(samples.mean(dim=0) - real_ed.mean(dim=0), dim=-1).mean()
    spread = torch.linalg.vector_norm(real_ed - real_ed.mean(dim=0), dim=-1).mean()
    assert float(mean_gap) < float(spread)
    extent_ratio = (samples.amax(dim=1) - samples.amin(dim=1)).mean() / (real_ed.amax(dim=1) - real_ed.amin(dim=1)).mean()
    assert 0.8 < float(extent_ratio) < 1.25
    volumes = model.clinical(samples)["cavity_ml"]
    real = lv_shape_indices(real_ed, train.faces, train.regions)["cavity_ml"]
    assert real.min() * 0.5 < np.median(volumes) < real.max() * 1.5


def test_conditions_per_mesh_and_virtual_subjects(tiny_gen):
    model = tiny_gen.model
    both = model.sample(2, "ED", conditions={"EDV_ml": [80.0, 160.0]}, seed=1)
    assert both.shape[0] == 2
    with pytest.raises(CardioInputError, match="3 values for 2 meshes"):
        model.sample(2, "ED", conditions={"EDV_ml": [1.0, 2.0, 3.0]})
    with pytest.raises(CardioInputError, match="unknown targets"):
        model.sample(2, "ED", conditions={"LVEF": 50})
    ed, es = model.sample_pairs(6, seed=2)
    assert ed.shape == es.shape == (6, model.n_vertices, 3)
    np.testing.assert_allclose(model.cavity_ml(ed), model.clinical(ed)["cavity_ml"], rtol=1e-9)
    ef = pair_ejection_fraction(model.clinical(ed)["cavity_ml"], model.clinical(es)["cavity_ml"])
    assert ef.shape == (6,) and np.isfinite(ef).all()


def test_virtual_subjects_condition_es_on_edv_within_the_training_range(tiny_gen, monkeypatch):
    """An ED sample larger than any training heart gets the ES of the largest EDV seen, not an extrapolation."""
    model = tiny_gen.model
    seen = model.reference["cavity_ml"][model.reference["phase"] == 0]
    real_ed = tiny_gen.splits["train"].phase("ED").verts[:2]
    centre = real_ed.mean(dim=1, keepdim=True)
    huge = centre + 2.0 * (real_ed - centre)  # 8 times the volume
    monkeypatch.setattr(model, "sample", lambda n, phase, **kwargs: huge)
    given = []
    conditional = model.diffusion["conditional"]
    original = conditional.sample
    monkeypatch.setattr(conditional, "sample", lambda *a, **kw: given.append(kw["conditions"]) or original(*a, **kw))
    ed, es = model.sample_pairs(2, seed=0)
    assert torch.equal(ed, huge) and es.shape == huge.shape
    assert model.clinical(huge)["cavity_ml"].min() > seen.max()
    torch.testing.assert_close(given[0][:, 0], torch.full((2,), float(seen.max())))
    with pytest.warns(UserWarning, match="outside the .* ml of the training shapes"):
        CardioGenModel.sample(model, 1, "ED", conditions={"EDV_ml": 2.0 * float(seen.max())})  # unpatched


def test_subject_conditions_are_measured_on_the_meshes():
    cohort = phantom_cohort(3)
    values = subject_conditions(cohort)
    cavity = cohort.clinical["cavity_ml"].float()
    torch.testing.assert_close(values[0::2, 0], cavity[0::2], rtol=1e-4, atol=0)  # EDV of each subject
    ef = 100 * (cavity[0::2] - cavity[1::2]) / cavity[0::2]
    torch.testing.assert_close(values[1::2, 1], ef, rtol=1e-4, atol=1e-4)  # EF repeated on the ES item


def test_interpolation_ends_are_reconstructions_where_the_meshes_lie(tiny_gen):
    model, test = tiny_gen.model, tiny_gen.splits["test"]
    a, b = test.verts[0], test.verts[1]
    frames = model.interpolate(a, b, 5)
    assert frames.shape == (5, model.n_vertices, 3)
    plain = model.reconstruct(test.verts[:2])  # encoded where they are, in the training frame
    for end, mesh, reconstruction in zip(frames[[0, -1]], (a, b), plain, strict=True):
        error = torch.linalg.vector_norm(end - mesh, dim=-1).mean()
        assert float(error) <= float(torch.linalg.vector_norm(reconstruction - mesh, dim=-1).mean()) + 1e-4
    # Patient-space meshes: the same two moved far off the training frame end where they are, as well
    # reconstructed as in the training frame (this weak model: within 1.5x), where encoding them as
    # they lie gives nonsense.
    rotation = torch.as_tensor(Rotation.from_rotvec([0.5, -0.8, 1.1]).as_matrix(), dtype=torch.float32)
    shift = torch.tensor([-80.0, 150.0, 30.0])
    moved_a, moved_b = a @ rotation.T + shift, b @ rotation.T + shift
    moved = model.interpolate(moved_a, moved_b, 5)
    for end, mesh, reconstruction in zip(moved[[0, -1]], (moved_a, moved_b), plain, strict=True):
        in_frame = float(torch.linalg.vector_norm(reconstruction @ rotation.T + shift - mesh, dim=-1).mean())
        assert float(torch.linalg.vector_norm(end - mesh, dim=-1).mean()) <= 1.5 * in_frame
    as_encoded = model.reconstruct(moved_a[None])[0]
    assert float(torch.linalg.vector_norm(as_encoded - moved_a, dim=-1).mean()) > 10.0 * in_frame
    with pytest.raises(CardioInputError, match="in_metres: is 0.001.* times the size"):
        model.interpolate(a / 1000.0, b, 3, names=("in_metres", "b"))
    with pytest.warns(UserWarning, match=r"noisy: the model reconstructs it with a mean error of .* unlike the training"):
        model.interpolate(a + 15.0 * torch.randn(a.shape, generator=torch.Generator().manual_seed(0)), b, 3,
                          names=("noisy", "b"))
    with pytest.raises(MeshError, match="flipped: has .* not the CardioGen template.*CardioAtlas"):
        model.template_vertices(a, model.faces[:, [0, 2, 1]], "flipped")


def test_stopped_training_resumes_to_the_same_model(tmp_path):
    cohort = phantom_cohort(12)
    spec = GenTrainingSpec.tiny()
    spec.models = ("ED",)
    straight = train_cardiogen(cohort, tmp_path / "straight", spec, progress=lambda *a: None)
    stop = threading.Event()

    def stop_in_diffusion(stage, step, total, metrics):
        if stage.startswith("diffusion") and step == 20:
            stop.set()

    first = train_cardiogen(cohort, tmp_path / "resumed", spec, progress=stop_in_diffusion, should_stop=stop)
    assert first.stopped and not (tmp_path / "resumed" / "model.pt").exists()
    second = train_cardiogen(cohort, tmp_path / "resumed", spec, resume=True, progress=lambda *a: None)
    z = torch.randn(4, spec.latent_dim)
    torch.testing.assert_close(second.model.decode(z), straight.model.decode(z))
    torch.testing.assert_close(
        second.model.sample(4, "ED", seed=0, steps=10), straight.model.sample(4, "ED", seed=0, steps=10)
    )


def test_bad_cohorts_are_refused(tmp_path):
    with pytest.raises(CardioInputError, match="has 4 subjects"):
        train_cardiogen(phantom_cohort(4), tmp_path / "few", GenTrainingSpec.tiny())
    cohort = phantom_cohort(12)
    no_regions = cohort.subset(range(len(cohort)))
    no_regions.regions = {}
    with pytest.raises(CardioInputError, match="endocardium"):
        train_cardiogen(no_regions, tmp_path / "regions", GenTrainingSpec.tiny())
    with pytest.raises(CardioInputError, match="models"):
        train_cardiogen(cohort, tmp_path / "models", GenTrainingSpec(models=("LA",)))
    assert not (tmp_path / "few").exists()


def test_refuses_to_replace_a_finished_model(tiny_gen):
    with pytest.raises(CardioInputError, match="already exists"):
        train_cardiogen(phantom_cohort(12), tiny_gen.model_path.parent, GenTrainingSpec.tiny())


def test_cli_sample_writes_meshes_and_clinical_csv(app, tiny_gen, tmp_path, capsys):
    out = tmp_path / "samples"
    args = ["gen", "sample", "--model", str(tiny_gen.model_path), "--phase", "ES", "--n", "3", "--seed", "5",
            "--steps", "10", "--out", str(out)]
    assert main(args) == 0
    files = sorted(p.name for p in out.glob("*.vtk"))
    assert files == ["lv_ES_0000.vtk", "lv_ES_0001.vtk", "lv_ES_0002.vtk"]
    with open(out / "clinical.csv") as stream:
        rows = list(csv.DictReader(stream))
    expected = tiny_gen.model.clinical(tiny_gen.model.sample(3, "ES", seed=5, steps=10))["cavity_ml"]
    np.testing.assert_allclose([float(r["cavity_ml"]) for r in rows], expected, rtol=1e-3)
    assert main(args) == 2  # nothing overwritten without --overwrite
    assert "pass --overwrite" in capsys.readouterr().err


def test_cli_interpolate_between_files_of_the_template_wherever_they_lie(app, tiny_gen, tmp_path, capsys):
    from cardiocore.mrml.mesh_folders import read_mesh_file, write_mesh_folder

    model, test = tiny_gen.model, tiny_gen.splits["test"]
    far = test.verts[1] + torch.tensor([0.0, 200.0, -90.0])  # the second mesh in a patient's frame
    flipped = model.faces[:, [0, 2, 1]].numpy()
    write_mesh_folder(tmp_path, [("a", test.verts[0].numpy(), model.faces.numpy()),
                                 ("b", far.numpy(), model.faces.numpy()), ("inside_out", far.numpy(), flipped)])
    out = tmp_path / "frames"
    argv = ["gen", "interpolate", "--model", str(tiny_gen.model_path), "--from", str(tmp_path / "a.vtk"),
            "--to", str(tmp_path / "b.vtk"), "--n", "4", "--out", str(out)]
    assert main(argv) == 0
    frames = sorted(out.glob("frame_*.vtk"))
    assert len(frames) == 4
    torch.testing.assert_close(torch.as_tensor(read_mesh_file(frames[-1])[0]).float(),
                               model.interpolate(test.verts[0], far, 4)[-1], atol=1e-3, rtol=0)
    last_centre = torch.as_tensor(read_mesh_file(frames[-1])[0]).mean(dim=0)
    assert float((last_centre - far.double().mean(dim=0)).norm()) < 2.0  # ends where the second mesh is
    argv[argv.index("--to") + 1] = str(tmp_path / "inside_out.vtk")
    argv[argv.index("--out") + 1] = str(tmp_path / "refused")
    assert main(argv) == 2
    assert "inside_out.vtk: has" in capsys.readouterr().err and not (tmp_path / "refused").exists()


def test_bundled_model_by_name_or_name_at_version():
    from cardiocore.gen.cli import load_model

    default, first = load_model(None, "cpu"), load_model("cardiogen-cap@1.0.0", "cpu")
    assert default.card["split"]["test"] == 300 and default.card["split"]["stratified_by"] == ["EDV_ml", "EF_percent"]
    assert first.card["split"]["test"] == 150 and "stratified_by" not in first.card["split"]
    with pytest.raises(WeightsError, match="1.0.0, 1.1.0"):
        load_model("cardiogen-cap@9.9", "cpu")


def test_bench_references_are_a_seeded_choice_of_the_held_out_ed_shapes():
    from conftest import shared_file

    from cardiocore.gen.cli import held_out_references, load_cohort, load_model

    atlas, model = str(shared_file("cap_lv_atlas/cap_lv_atlas_dev.npz")), load_model(None, "cpu")
    every = held_out_references(model, atlas)
    test_ed = split_as_recorded(load_cohort(atlas), model.card["split"])[-1].phase("ED").verts
    assert torch.equal(every, test_ed) and every.shape == (300, 1570, 3)
    chosen = held_out_references(model, atlas, 150)
    rows = [int(torch.nonzero((every == shape).all(dim=2).all(dim=1))[0]) for shape in chosen]
    assert len(set(rows)) == 150 and rows == sorted(rows)  # distinct test shapes, in split order
    assert torch.equal(chosen, held_out_references(model, atlas, 150))  # seeded
    with pytest.raises(CardioInputError, match="--references"):
        held_out_references(model, atlas, -1)


def test_cli_eval_refuses_a_real_baseline_without_a_training_split(tmp_path, capsys):
    argv = ["gen", "eval", "--generated", str(tmp_path), "--reference", str(tmp_path), "--real-baseline",
            "--out", str(tmp_path / "eval")]
    assert main(argv) == 2
    assert "--real-baseline" in capsys.readouterr().err and not (tmp_path / "eval").exists()


def test_cli_train_tiny_from_a_folder(app, tmp_path, capsys):
    from cardiocore.mrml.mesh_folders import region_labels, write_mesh_folder

    cohort = phantom_cohort(12)
    names = [f"{s}_{p}" for s, p in zip(cohort.subject_ids, cohort.phases)]
    labels = region_labels(cohort.regions, cohort.n_vertices)
    meshes = [(n, v.numpy(), cohort.faces.numpy()) for n, v in zip(names, cohort.verts)]
    write_mesh_folder(tmp_path / "cohort", meshes, point_data={"region": labels})
    out = tmp_path / "run"
    assert main(["gen", "train", "--data", str(tmp_path / "cohort"), "--out", str(out), "--tiny",
                 "--models", "ED", "--progress", "json", "--seed", "3", "--align"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert '"stage": "vae"' in lines[0] and any('"stage": "diffusion-ED"' in line for line in lines)
    trained = CardioGenModel.load(out / "model.pt")
    assert trained.phases_available == ["ED"]
    # the training seed is recorded; the split keeps its own seed
    assert trained.card["spec"]["seed"] == 3 and trained.card["split"]["seed"] == 0
    assert trained.card["spec"]["align"] and trained.alignment.shape == (cohort.n_vertices, 3)  # --align reached it


def test_diffusion_retrained_on_a_kept_vae(tiny_gen, tmp_path):
    """vae_from: the VAE (and its settings and split) is kept; only the diffusion models train."""
    spec = GenTrainingSpec.tiny()
    spec.models, spec.channels, spec.split_seed = ("ED",), (3, 4), 5  # VAE settings come from the kept model
    result = train_cardiogen(phantom_cohort(24), tmp_path / "run", spec, vae_from=tiny_gen.model, progress=lambda *a: None)
    assert not (tmp_path / "run" / "vae").exists() and (tmp_path / "run" / "diffusion-ED" / "last.pt").is_file()
    kept = tiny_gen.model.vae.state_dict()
    for name, value in result.model.vae.state_dict().items():
        assert torch.equal(value, kept[name]), name
    assert result.model.phases_available == ["ED"] and result.model.card["vae_from"].startswith("tiny-phantom")
    assert result.model.card["spec"]["split_seed"] == tiny_gen.model.card["spec"]["split_seed"]
    assert result.splits["test"].subject_ids == tiny_gen.splits["test"].subject_ids
    with pytest.raises(CardioInputError, match="split"):
        train_cardiogen(phantom_cohort(40), tmp_path / "other", spec, vae_from=tiny_gen.model, progress=lambda *a: None)
    # a model from before split stratification (cardiogen-cap 1.0.0) keeps its random split
    older = copy.deepcopy(tiny_gen.model)
    del older.card["spec"]["stratify_split"], older.card["split"]["stratified_by"]
    result = train_cardiogen(phantom_cohort(24), tmp_path / "older", spec, vae_from=older, progress=lambda *a: None)
    assert result.model.card["spec"]["stratify_split"] is False and "stratified_by" not in result.model.card["split"]
    assert [p.subject_ids for p in split_as_recorded(phantom_cohort(24), older.card["split"])] == [
        result.splits[k].subject_ids for k in ("train", "val", "test")
    ]


def test_lv_regions_inferred_from_the_two_surfaces():
    from cardiocore.gen.data import infer_lv_regions
    from cardiocore.errors import MeshError

    cohort = phantom_cohort(2)
    regions = infer_lv_regions(cohort.verts[0], cohort.faces)
    for name in ("endocardium", "epicardium"):
        assert torch.equal(regions[name], cohort.regions[name])
    endo_faces = cohort.region_mesh("endocardium", cohort.verts[0])[1]
    with pytest.raises(MeshError, match="1 connected surfaces"):
        infer_lv_regions(cohort.verts[0][cohort.regions["endocardium"]], endo_faces)


def test_decode_retries_smaller_chunks_on_out_of_memory(tiny_gen, monkeypatch):
    model = tiny_gen.model
    z = torch.randn(8, model.latent_dim)
    expected = model.decode(z)
    original = model.vae.decode_shapes
    seen = []

    def flaky(latents, chunk_size=256):
        seen.append(chunk_size)
        if chunk_size > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(latents, chunk_size)

    monkeypatch.setattr(model.vae, "decode_shapes", flaky)
    with pytest.warns(UserWarning, match="retrying"):
        torch.testing.assert_close(model.decode(z, chunk_size=8), expected)
    assert seen == [8, 4, 2]

    def always(latents, chunk_size=256):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(model.vae, "decode_shapes", always)
    with pytest.warns(UserWarning), pytest.raises(CardioInputError, match="--device cpu"):
        model.decode(z, chunk_size=2)


def test_pair_volume_indices_match_the_clinical_table(tiny_gen):
    """The batched volume indices of virtual subjects equal the per-mesh clinical indices."""
    model = tiny_gen.model
    ed, es = model.sample(3, "ED", seed=1), model.sample(3, "ES", seed=2)
    fast = model.pair_volume_indices(ed, es)
    at_ed, at_es = model.clinical(ed), model.clinical(es)
    np.testing.assert_allclose(fast["EDV"], at_ed["cavity_ml"], rtol=1e-6)
    np.testing.assert_allclose(fast["ESV"], at_es["cavity_ml"], rtol=1e-6)
    np.testing.assert_allclose(fast["mass"], at_ed["myocardial_mass_g"], rtol=1e-5)
    np.testing.assert_allclose(fast["EF"], pair_ejection_fraction(at_ed["cavity_ml"], at_es["cavity_ml"]), rtol=1e-5)
