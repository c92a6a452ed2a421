"""CardioGen evaluation (cardiocore.gen.evaluate), its plots (cardiocore.gen.plots) and the sampling
benchmark (cardiocore.bench.gen): known clinical statistics, 1-NNA of same-distribution and
shifted phantom sets, topology errors, PNG output, and a tiny trained model end to end."""

from __future__ import annotations

import json
import math

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from gen_helpers import phantom_cohort

from cardiocore.bench.core import COLUMNS
from cardiocore.bench.gen import format_gen_rows, run_gen_benchmarks
from cardiocore.errors import CardioInputError, MeshError
from cardiocore.gen.clinical import CLINICAL_COLUMNS
from cardiocore.gen.data import ShapeCohort
from cardiocore.gen.evaluate import (
    EVALUATED_INDICES,
    clinical_comparison,
    cohort_clinical_values,
    evaluate_generated,
    evaluate_model,
    format_report,
    generative_scores,
    reconstruction_error_mm,
    scores_with_real_baseline,
)
from cardiocore.gen.plots import clinical_histograms, shape_grid
from cardiocore.phantoms.lv import lv_cohort

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def draws():
    """ED phantoms: two independent draws of one distribution (12 subjects each)."""
    return phantom_cohort(12, seed=1).phase("ED"), phantom_cohort(12, seed=2).phase("ED")


@pytest.fixture(scope="module")
def tiny(tiny_gen):
    """The session's tiny phantom model (conftest ``tiny_gen``) and 3 phantom subjects it never saw."""
    return tiny_gen.model, phantom_cohort(3, seed=7)


# ---------------------------------------------------------------------- clinical statistics
def test_clinical_comparison_known_values():
    real = {"EDV_ml": np.array([100.0, 110.0, 120.0, 130.0, 140.0])}
    same = clinical_comparison({"EDV_ml": real["EDV_ml"].copy()}, real, ["EDV_ml"])[0]
    assert (same.mean_difference_percent, same.sd_ratio, same.ks_statistic, same.ks_p_value) == (0.0, 1.0, 0.0, 1.0)
    assert same.passes
    # identical sets: the 95 % interval is centred on 0, +-1.96 sqrt(250/5 + 250/5) ml of a 120 ml mean
    half = 1.959964 * math.sqrt(100.0) / 120.0 * 100.0
    assert same.difference_ci_low_percent == pytest.approx(-half, rel=1e-5)
    assert same.difference_ci_high_percent == pytest.approx(half, rel=1e-5)
    # generated: mean 240 (+100 %), values spread twice as wide, NaN (invalid mesh) left out
    generated = {"EDV_ml": np.array([200.0, 220.0, 240.0, 260.0, 280.0, np.nan])}
    row = clinical_comparison(generated, real, ["EDV_ml"])[0]
    assert row.n_generated == 5 and row.n_real == 5
    assert row.generated_mean == pytest.approx(240.0) and row.real_mean == pytest.approx(120.0)
    assert row.real_sd == pytest.approx(math.sqrt(250.0))  # ddof 1: (400 + 100 + 0 + 100 + 400) / 4
    assert row.mean_difference_percent == pytest.approx(100.0) and row.sd_ratio == pytest.approx(2.0)
    half = 1.959964 * math.sqrt(1000.0 / 5 + 250.0 / 5) / 120.0 * 100.0  # generated variance 4 x 250
    assert (row.difference_ci_low_percent, row.difference_ci_high_percent) == (
        pytest.approx(100.0 - half, rel=1e-5), pytest.approx(100.0 + half, rel=1e-5))
    # disjoint samples of 5 and 5: D = 1 and the exact two-sided p-value is 2 / C(10, 5)
    assert row.ks_statistic == 1.0 and row.ks_p_value == pytest.approx(2.0 / math.comb(10, 5))
    assert not row.passes
    assert row.as_dict()["passes"] is False
    with pytest.raises(CardioInputError, match="ESV_ml"):
        clinical_comparison(generated, real, ["ESV_ml"])


# ---------------------------------------------------------------------- generative metrics
def test_generative_scores_same_distribution_shifted_and_copied(draws):
    first, second = draws
    same = generative_scores(first.verts, second.verts, first.faces, n_points=512)
    assert 0.25 <= same.one_nna <= 0.75  # ideal 0.5; 24 shapes give a standard error of about 0.1
    bigger = first.verts.mean(dim=1, keepdim=True) + 1.3 * (second.verts - first.verts.mean(dim=1, keepdim=True))
    shifted = generative_scores(bigger + torch.tensor([0.0, 0.0, 15.0]), first.verts, first.faces, n_points=512)
    assert shifted.one_nna == 1.0 and shifted.mmd_mm > 1.5 * same.mmd_mm
    copies = generative_scores(first.verts, first.verts, first.faces, n_points=512)
    assert copies.one_nna < 0.2 and copies.coverage == 1.0  # memorisation: each copy finds its original


def test_real_baseline_leaves_the_model_scores_alone_and_scores_real_shapes(draws):
    first, second = draws
    generated, reference = first.verts[:8], second.verts[:8]
    scores, baseline = scores_with_real_baseline(generated, reference, second.verts[:8], first.faces, seed=4)
    assert scores == generative_scores(generated, reference, first.faces, seed=4)  # same points, same figures
    assert baseline.one_nna < 0.2 and baseline.coverage == 1.0  # training shapes that are the test shapes
    _, other_draw = scores_with_real_baseline(generated, reference, first.verts, first.faces, seed=4)
    assert 0.2 <= other_draw.one_nna <= 0.8  # another draw of the distribution: near the ideal 0.5
    with pytest.raises(CardioInputError, match="at least 8 training"):
        scores_with_real_baseline(generated, reference, second.verts[:5], first.faces)


def test_evaluate_generated_cuts_to_equal_size_and_reports(draws):
    first, second = draws
    result = evaluate_generated(list(first.verts[:6]), second.verts[:4], first.faces, first.regions, n_points=256)
    assert (result["n_generated"], result["n_reference"], result["n_used"]) == (6, 4, 4)
    assert [row["index"] for row in result["clinical"]] == list(CLINICAL_COLUMNS)
    assert {c["figure"] for c in result["checks"]} >= {"1-NNA", "COV", "MMD", "cavity_ml SD ratio"}
    json.dumps(result, allow_nan=False)
    report = format_report(result)
    assert "1-NNA" in report and "myocardial_mass_g" in report


def test_evaluate_generated_warns_when_the_sets_lie_in_different_frames(draws):
    first, second = draws
    result = evaluate_generated(first.verts[:6], second.verts[:6], first.faces, n_points=128)
    assert result["frame_warnings"] == []  # two phantom draws in one frame
    shifted = second.verts[:6] + torch.tensor([0.0, 40.0, 0.0])  # the reference 40 mm away
    with pytest.warns(UserWarning, match="different frames: .* turned 0 degrees and shifted 40 mm apart"):
        result = evaluate_generated(first.verts[:6], shifted, first.faces, n_points=128)
    assert "warning: the generated and reference meshes lie in different frames" in format_report(result)
    scattered = second.verts[:6].clone()
    scattered[::2] = scattered[::2] @ torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]).T
    with pytest.warns(UserWarning, match="reference meshes' orientations differ by"):
        evaluate_generated(first.verts[:6], scattered, first.faces, n_points=128)


def test_evaluate_generated_topology_mismatch_names_the_files(draws):
    first, _ = draws
    odd = first.verts[1, :200]
    with pytest.raises(MeshError, match=r"b\.vtk \(200 vertices\).*CardioAtlas"):
        evaluate_generated([first.verts[0], odd], first.verts[:2], first.faces, generated_names=["a.vtk", "b.vtk"])
    with pytest.raises(MeshError, match="other faces"):
        evaluate_generated(first.verts[:2], first.verts[2:4], first.faces, reference_faces=first.faces.flip(1))


def test_cohort_clinical_values_match_the_phantoms_known_volumes():
    cohort = phantom_cohort(4, seed=5)  # synthetic phantoms whose cavity volumes are known
    values = cohort_clinical_values(cohort, cohort.faces)
    truth = np.asarray(cohort.clinical["cavity_ml"], dtype=np.float64)
    edv, esv = truth[0::2], truth[1::2]  # items alternate ED, ES per subject
    assert values["EDV_ml"] == pytest.approx(edv, rel=0.03) and values["ESV_ml"] == pytest.approx(esv, rel=0.03)
    assert values["EF_percent"] == pytest.approx(100.0 * (1.0 - values["ESV_ml"] / values["EDV_ml"]))
    assert values["myocardial_mass_g"].shape == (4,) and bool((values["myocardial_mass_g"] > 0).all())
    only_ed = cohort_clinical_values(cohort.phase("ED"), cohort.faces)
    assert sorted(only_ed) == ["EDV_ml", "myocardial_mass_g"]  # no ES item: no ESV, no EF


# ---------------------------------------------------------------------- plots
def test_plots_write_pngs_and_refuse_to_overwrite(draws, tmp_path):
    first, second = draws
    histograms = clinical_histograms({"EDV_ml": [100.0, 120.0, np.nan]}, {"EDV_ml": [110.0, 130.0]}, ["EDV_ml"],
                                     tmp_path / "hist.png")
    assert histograms.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(CardioInputError, match="already exists"):
        clinical_histograms({"EDV_ml": [1.0]}, {"EDV_ml": [2.0]}, ["EDV_ml"], histograms)
    wide = shape_grid(first.verts[:3], first.faces, tmp_path / "wide.png", ncols=3)
    tall = shape_grid(first.verts[:3], first.faces, tmp_path / "tall.png", ncols=2)
    wide_px, tall_px = mpimg.imread(wide).shape, mpimg.imread(tall).shape
    assert tall_px[0] > 1.5 * wide_px[0] and wide_px[1] > tall_px[1]  # 2 rows of 2 vs 1 row of 3
    assert shape_grid(second.verts[:1], second.faces, wide, ncols=1, overwrite=True) == wide


# ---------------------------------------------------------------------- a tiny trained model
def test_evaluate_model_end_to_end(tiny, tmp_path):
    model, test = tiny
    lines = []
    result = evaluate_model(model, test, n_generated=3, steps=10, plots_dir=tmp_path, progress=lines.append)
    assert set(result["generative"]) == {"ED", "ES"} and result["generative"]["ED"]["n"] == 3
    assert 0.0 <= result["generative"]["ES"]["one_nna_percent"] <= 100.0
    assert [row["index"] for row in result["clinical"]] == list(EVALUATED_INDICES)
    assert [len(result["conditional"]["requests"]), result["conditional"]["requests"][0]["n"]] == [3, 3]
    recon = reconstruction_error_mm(model, test.verts)
    assert result["reconstruction_error_mm"]["all"] == pytest.approx(recon)
    assert recon == pytest.approx(float((model.reconstruct(test.verts) - test.verts).norm(dim=-1).mean()))
    figures = [c["figure"] for c in result["checks"]]
    assert "1-NNA ED" in figures and "EF_percent SD ratio" in figures and figures[-1].startswith("conditional")
    assert all(c["passes"] in (True, False, None) for c in result["checks"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clinical_histograms.png", "interpolation.png", "samples.png"]
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in tmp_path.iterdir())
    json.dumps(result, allow_nan=False)
    assert "within +-10 %" in format_report(result) and lines
    assert result["clinical_vs_training"] == result["split_shift"] == []  # no training cohort given
    training = phantom_cohort(4, seed=11)
    diagnosed = evaluate_model(model, test, n_generated=3, steps=10, training_cohort=training, real_baseline=True)
    assert diagnosed["generative"] == result["generative"] and result["real_baseline"] == {}
    assert {phase: entry["n"] for phase, entry in diagnosed["real_baseline"].items()} == {"ED": 3, "ES": 3}
    assert "1-NNA % real" in format_report(diagnosed) and "1-NNA % real" not in format_report(result)
    train_values = cohort_clinical_values(training, training.faces)
    by_index = {row["index"]: row for row in diagnosed["clinical"]}
    for versus_training, shift in zip(diagnosed["clinical_vs_training"], diagnosed["split_shift"]):
        index = versus_training["index"]
        assert versus_training["real_mean"] == shift["real_mean"] == pytest.approx(train_values[index].mean())
        assert versus_training["generated_mean"] == pytest.approx(by_index[index]["generated_mean"])
        assert shift["generated_mean"] == pytest.approx(by_index[index]["real_mean"])  # the test split's mean
    assert [row["index"] for row in diagnosed["split_shift"]] == list(EVALUATED_INDICES)
    assert "test vs train %" in format_report(diagnosed)
    with pytest.raises(CardioInputError, match="already exist"):  # checked before any sampling
        evaluate_model(model, test, plots_dir=tmp_path)
    coarse = lv_cohort(1, seed=3, n_circumferential=12, n_longitudinal=8)[0][0]
    coarse_cohort = ShapeCohort.from_meshes([(coarse.verts, coarse.faces)], phases=["ED"])
    with pytest.raises(MeshError, match="template"):
        evaluate_model(model, coarse_cohort)
    with pytest.raises(MeshError, match="training cohort.*template"):
        evaluate_model(model, test, n_generated=3, steps=10, training_cohort=coarse_cohort)


def test_bench_rows_have_the_schema_and_targets(tiny):
    model, test = tiny
    rows = run_gen_benchmarks(model, test.phase("ED").verts, n=8, device="cpu", quick=True, steps=10,
                              progress=lambda line: None)
    assert [row["method"] for row in rows] == [
        "DDIM 10 steps", "PLMS 10 steps", "DDPM 100 steps (MeshLDM ancestral)", "VAE decode only"]
    for row in rows:
        assert set(COLUMNS) <= set(row) and row["median_s"] > 0
    for row in rows[:3]:
        assert row["nna_set"] == 3 and 0.0 <= row["one_nna_percent"] <= 100.0
        assert row["nna_sets"] == 2 and row["one_nna_se_pts"] >= 0.0  # 8 meshes hold two disjoint sets of 3
    assert rows[0]["ratio"] == 1.0 and rows[0]["target_s"] is None  # no target below 1,000 meshes
    assert rows[0]["speedup_vs_ddpm"] == pytest.approx(rows[2]["median_s"] / rows[0]["median_s"])
    assert rows[1]["one_nna_gap_pts"] == pytest.approx(rows[1]["one_nna_percent"] - rows[2]["one_nna_percent"])
    gap_se = math.hypot(rows[1]["one_nna_se_pts"], rows[2]["one_nna_se_pts"])
    assert rows[1]["one_nna_gap_se_pts"] == pytest.approx(gap_se)
    assert isinstance(rows[0]["meets_targets"], bool) and rows[2]["meets_targets"] is None
    assert rows[3]["one_nna_percent"] is None and rows[3]["speedup_vs_ddpm"] is None
    text = format_gen_rows(rows)
    assert "one_nna_percent" in text and "targets:" in text
    every = run_gen_benchmarks(model, test.phase("ED").verts, n=14, device="cpu", quick=True, steps=10,
                               progress=lambda line: None)
    capped = run_gen_benchmarks(model, test.phase("ED").verts, n=14, device="cpu", quick=True, steps=10,
                                nna_sets=1, progress=lambda line: None)
    assert every[0]["nna_sets"] == 4 and capped[0]["nna_sets"] == 1  # 14 meshes hold four sets of 3
    assert capped[1]["one_nna_se_pts"] is None and capped[1]["one_nna_gap_se_pts"] is None
    plms = run_gen_benchmarks(model, test.phase("ED").verts, n=8, device="cpu", quick=True, steps=10,
                              samplers=["plms"], progress=lambda line: None)
    assert [row["method"] for row in plms] == ["PLMS 10 steps", "DDPM 100 steps (MeshLDM ancestral)", "VAE decode only"]
    assert plms[0]["one_nna_gap_pts"] == pytest.approx(plms[0]["one_nna_percent"] - plms[1]["one_nna_percent"])
    with pytest.raises(CardioInputError, match="samplers"):
        run_gen_benchmarks(model, test.phase("ED").verts, n=8, device="cpu", quick=True, samplers=["euler"])
