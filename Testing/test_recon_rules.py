"""CardioReconstruct rules engine: the default and MM-WHS rule sets, JSON, subsets, bad input,
and segment-name guessing (Segment Editor and TotalSegmentator names)."""

from __future__ import annotations

import json

import pytest

from cardiocore.errors import CardioInputError
from cardiocore.phantoms.heart import HEART_STRUCTURES
from cardiocore.recon.rules import Rule, RuleSet, Structure, guess_structure, resolve_rule_set

NAMES = ("lv_cavity", "lv_myocardium", "rv", "la", "ra", "aorta", "pulmonary_artery")


def test_default_set_matches_the_phantom_and_makes_every_pair_disjoint() -> None:
    rules = RuleSet.default()
    assert rules.names == NAMES
    assert [(s.label, s.color) for s in rules.structures] == [(s.label, s.color) for s in HEART_STRUCTURES]
    assert len(rules.rules) == 21 and {r.kind for r in rules.rules} == {"disjoint"}
    pairs = {frozenset((r.a, r.b)) for r in rules.rules}
    assert frozenset(("lv_cavity", "lv_myocardium")) in pairs  # the cavity never crosses the wall
    assert frozenset(("rv", "lv_myocardium")) in pairs


def test_mmwhs_coding_and_its_reindexed_form() -> None:
    labels = {s.name: s.label for s in RuleSet.mmwhs().structures}
    assert labels == {"lv_myocardium": 205, "la": 420, "lv_cavity": 500, "ra": 550, "rv": 600,
                      "aorta": 820, "pulmonary_artery": 850}
    reindexed = {s.name: s.label for s in RuleSet.mmwhs(reindexed=True).structures}
    assert reindexed == {"lv_myocardium": 1, "la": 2, "lv_cavity": 3, "ra": 4, "rv": 5,
                         "aorta": 6, "pulmonary_artery": 7}
    assert resolve_rule_set("mmwhs") == RuleSet.mmwhs()
    assert resolve_rule_set(None) == RuleSet.default()


def test_json_round_trip_through_a_file_and_a_dict(tmp_path) -> None:
    rules = RuleSet(
        RuleSet.default().structures[:3],
        (Rule("inside", "lv_cavity", "lv_myocardium"), Rule("disjoint", "rv", "lv_myocardium")),
    )
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(rules.to_dict()))
    assert RuleSet.from_json(path) == rules
    assert RuleSet.from_json(rules.to_dict()) == rules
    assert resolve_rule_set(str(path)) == rules


def test_subset_keeps_only_rules_between_present_structures() -> None:
    subset = RuleSet.default().subset(["aorta", "lv_cavity", "rv"])
    assert subset.names == ("lv_cavity", "rv", "aorta")  # table order kept
    assert {frozenset((r.a, r.b)) for r in subset.rules} == {
        frozenset(p) for p in (("lv_cavity", "rv"), ("lv_cavity", "aorta"), ("rv", "aorta"))
    }
    with pytest.raises(CardioInputError, match="'spleen' is not in the rule set"):
        RuleSet.default().subset(["lv_cavity", "spleen"])


@pytest.mark.parametrize(
    ("structures", "rules", "message"),
    [
        ((("a", 1), ("b", 2)), (("disjoint", "a", "c"),), "unknown structure 'c'"),
        ((("a", 1), ("b", 1)), (), "label 1 is already used by 'a'"),
        ((("a", 1), ("a", 2)), (), "listed twice"),
        ((("a", 0),), (), "positive integer"),
        ((("a", 1), ("b", 2)), (("touching", "a", "b"),), "unknown rule kind"),
        ((("a", 1), ("b", 2)), (("disjoint", "a", "a"),), "itself"),
        ((("a", 1), ("b", 2)), (("disjoint", "a", "b"), ("disjoint", "b", "a")), "listed twice"),
        ((("a", 1), ("b", 2)), (("inside", "a", "b"), ("disjoint", "a", "b")), "contradicts"),
    ],
)
def test_bad_rule_sets_raise_clear_errors(structures, rules, message) -> None:
    with pytest.raises(CardioInputError, match=message):
        RuleSet(
            tuple(Structure(name, label, (10, 20, 30)) for name, label in structures),
            tuple(Rule(kind, a, b) for kind, a, b in rules),
        )


def test_bad_json_files_name_the_file(tmp_path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(CardioInputError, match="broken.json: is not valid JSON"):
        RuleSet.from_json(broken)
    with pytest.raises(CardioInputError, match="malformed entry"):
        RuleSet.from_json({"structures": [{"name": "a"}], "rules": []})
    with pytest.raises(CardioInputError, match="colour"):
        RuleSet.from_json({"structures": [{"name": "a", "label": 1, "color": [300, 0, 0]}]})
    with pytest.raises(CardioInputError, match="cannot be read"):
        RuleSet.from_json(tmp_path / "absent.json")


@pytest.mark.parametrize(
    ("segment", "structure"),
    [
        ("Left ventricle", "lv_cavity"),
        ("LV", "lv_cavity"),
        ("lv blood pool", "lv_cavity"),
        ("LV_blood_pool", "lv_cavity"),
        ("Left ventricle (LV)", "lv_cavity"),
        ("myocardium", "lv_myocardium"),
        ("Left ventricle myocardium", "lv_myocardium"),
        ("Right ventricle", "rv"),
        ("LA", "la"),
        ("right atrium", "ra"),
        ("Ascending aorta", "aorta"),
        ("Pulmonary trunk", "pulmonary_artery"),
        ("Aorta (ascending)", "aorta"),
        ("LV lumen ED", "lv_cavity"),
        ("Myocardium of the LV", "lv_myocardium"),
        ("Right ventricle (RV) blood pool", "rv"),
        # TotalSegmentator (heartchambers_highres / total)
        ("heart_ventricle_left", "lv_cavity"),
        ("heart_myocardium", "lv_myocardium"),
        ("heart_atrium_left", "la"),
        ("heart_ventricle_right", "rv"),
        ("HEART_ATRIUM_RIGHT", "ra"),
        ("aorta", "aorta"),
        ("pulmonary_artery", "pulmonary_artery"),
        # Not one of the structures, or ambiguous: no guess.
        ("pulmonary_vein", None),
        ("superior_vena_cava", None),
        ("atrial_appendage_left", None),
        ("aortic valve", None),
        ("Right ventricle myocardium", None),
        ("heart", None),
        ("Segment_1", None),
        ("", None),
        # A name that says more than the structure it mentions: another tissue or a larger
        # region, not that structure (an LGE study's scar segment is not the LV cavity).
        ("LV scar", None),
        ("LV infarct", None),
        ("LV thrombus", None),
        ("LV papillary muscles", None),
        ("LV epicardium", None),
        ("Left ventricle (whole)", None),
        ("LA wall", None),
        ("Descending aorta", None),
    ],
)
def test_guess_structure(segment: str, structure: str | None) -> None:
    assert guess_structure(segment) == structure


def test_guess_structure_uses_the_aliases_of_a_custom_rule_set() -> None:
    rules = RuleSet((Structure("lv_epicardium", 1, (1, 2, 3), ("epicardium", "LV epi")),), ())
    assert guess_structure("LV_epi", rules) == "lv_epicardium"
    assert guess_structure("left ventricle", rules) is None
