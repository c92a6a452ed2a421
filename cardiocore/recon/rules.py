"""Structures and relational rules of a multi-structure heart model, as data.

A :class:`RuleSet` is a table of structures (identifier, label value in the label map, display
colour, alternative names) and a list of rules between them:

- ``Rule("disjoint", a, b)``: A and B never overlap (a point inside both violates);
- ``Rule("inside", a, b)``: A lies within B (a point inside A and outside B violates).

These are exactly the two rules of :mod:`cardiocore.metrics.violation`, which measures them on
closed meshes, and of the MIE loss (:mod:`cardiocore.recon.mie`), which enforces them.

Representation of the LV (one choice, used everywhere in CardioReconstruct): the structure
``lv_myocardium`` is the **solid wall**, the closed surface around the myocardial tissue only (a
thick cup whose inner face is the endocardium and outer face the epicardium), exactly the voxels
that carry the myocardium label in MM-WHS-style label maps. The LV cavity is then a separate
closed surface that is **disjoint** from the wall; "the cavity lies inside the epicardium" holds
because the cavity can only touch the wall, never cross it. In a label map every voxel has one
label, so every pair of the seven default structures is disjoint: the default rule set is the
21 pairwise ``disjoint`` rules. ``inside`` rules serve other representations (e.g. a closed
epicardium containing the cavity) passed as JSON.

JSON form (:meth:`RuleSet.from_json`, :meth:`RuleSet.to_dict`)::

    {"structures": [{"name": "lv_cavity", "label": 1, "color": [204, 62, 62],
                     "aliases": ["left ventricle", "LV"]}, ...],
     "rules": [{"kind": "disjoint", "a": "lv_cavity", "b": "lv_myocardium"}, ...]}

:func:`guess_structure` maps segment names from the Segment Editor, TotalSegmentator and
common abbreviations to the default structure identifiers.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cardiocore.errors import CardioInputError
from cardiocore.phantoms.heart import HEART_STRUCTURES

RuleKind = Literal["inside", "disjoint"]
RULE_KINDS: tuple[str, ...] = ("inside", "disjoint")


@dataclass(frozen=True)
class Structure:
    """One structure of the model.

    Attributes:
        name: identifier (lower case, no spaces), e.g. ``"lv_cavity"``; also the mesh file stem.
        label: value of the structure's voxels in the label map (> 0).
        color: display colour, RGB 0-255.
        aliases: other names of the structure (matched case-insensitively by
            :func:`guess_structure`).
    """

    name: str
    label: int
    color: tuple[int, int, int]
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rule:
    """A relation between structures ``a`` and ``b``: ``"disjoint"`` or ``"inside"`` (a in b)."""

    kind: RuleKind
    a: str
    b: str


# Alternative names per default structure: Segment Editor / terminology names, abbreviations
# and TotalSegmentator (``heartchambers_highres`` and ``total``) class names.
_DEFAULT_ALIASES: dict[str, tuple[str, ...]] = {
    "lv_cavity": (
        "LV cavity", "LV", "left ventricle", "left ventricular cavity", "LV blood pool",
        "left ventricle blood pool", "left ventricular blood pool", "LVBP", "LV endocardium",
        "heart_ventricle_left",
    ),
    "lv_myocardium": (
        "LV myocardium", "myocardium", "myo", "LV myo", "LVM", "left ventricular myocardium",
        "left ventricle myocardium", "myocardium of left ventricle", "LV wall", "heart_myocardium",
    ),
    "rv": (
        "RV", "right ventricle", "right ventricular cavity", "RV cavity", "RV blood pool",
        "right ventricle blood pool", "heart_ventricle_right",
    ),
    "la": ("LA", "left atrium", "left atrial cavity", "LA cavity", "heart_atrium_left"),
    "ra": ("RA", "right atrium", "right atrial cavity", "RA cavity", "heart_atrium_right"),
    "aorta": ("aorta", "ascending aorta", "Ao", "aortic root", "aortic arch"),
    "pulmonary_artery": (
        "pulmonary artery", "PA", "pulmonary trunk", "main pulmonary artery", "MPA",
        "pulmonary_artery",
    ),
}
# Words a segment name may add to a structure's alias and still denote that structure; any other
# word (scar, epicardium, papillary, wall of an atrium, ...) makes the guess None.
_NEUTRAL_WORDS = frozenset({
    "cavity", "lumen", "blood", "pool", "chamber", "endocardium", "endocardial", "endo", "heart", "cardiac",
    "segment", "seg", "segmentation", "label", "mask", "contour", "volume", "the", "of",
    "ed", "es", "end", "diastole", "diastolic", "systole", "systolic", "phase",
})


def _normalise(name: str) -> str:
    """Lower case, separators (_ - . / ( ) ,) as single spaces."""
    return " ".join(re.sub(r"[_\-./(),:;]+", " ", name.lower()).split())


def _identifier(display_name: str) -> str:
    """``"pulmonary artery"`` -> ``"pulmonary_artery"``."""
    return "_".join(_normalise(display_name).split())


def _default_structures(label_of: Mapping[str, int] | None = None) -> tuple[Structure, ...]:
    """The seven structures of :data:`cardiocore.phantoms.heart.HEART_STRUCTURES` with
    identifiers, colours and aliases; labels from ``label_of`` (identifier -> label) if given."""
    structures = []
    for phantom in HEART_STRUCTURES:
        name = _identifier(phantom.name)
        label = phantom.label if label_of is None else label_of[name]
        structures.append(Structure(name, label, phantom.color, _DEFAULT_ALIASES[name]))
    return tuple(structures)


def _all_disjoint(names: Sequence[str]) -> tuple[Rule, ...]:
    return tuple(Rule("disjoint", a, b) for a, b in itertools.combinations(names, 2))


def _as_color(value: Any, where: str) -> tuple[int, int, int]:
    try:
        color = tuple(int(c) for c in value)
    except (TypeError, ValueError):
        raise CardioInputError(where, f"colour must be three integers 0-255, got {value!r}") from None
    if len(color) != 3 or any(c < 0 or c > 255 for c in color):
        raise CardioInputError(where, f"colour must be three integers 0-255, got {value!r}")
    return color  # type: ignore[return-value]


@dataclass(frozen=True)
class RuleSet:
    """Structures and the rules between them; validated on creation.

    Raises:
        CardioInputError: an empty structure table, a duplicate name, label or alias, a label
            that is not a positive integer, a bad colour, an unknown rule kind, a rule naming an
            unknown structure or relating a structure to itself, a repeated rule, or
            contradicting rules (A inside B and A disjoint B).
    """

    structures: tuple[Structure, ...]
    rules: tuple[Rule, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "structures", tuple(self.structures))
        object.__setattr__(self, "rules", tuple(self.rules))
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        if not self.structures:
            raise CardioInputError("structures", "the rule set has no structure")
        seen_names: set[str] = set()
        seen_labels: dict[int, str] = {}
        seen_aliases: dict[str, str] = {}
        for s in self.structures:
            what = f"structure {s.name!r}"
            if not isinstance(s.name, str) or not s.name.strip():
                raise CardioInputError("structures", f"a structure has an empty name: {s!r}")
            if s.name in seen_names:
                raise CardioInputError(what, "is listed twice", "give every structure a unique name")
            seen_names.add(s.name)
            if isinstance(s.label, bool) or not isinstance(s.label, int) or s.label <= 0:
                raise CardioInputError(what, f"label must be a positive integer, got {s.label!r}",
                                       "0 is the background")
            if s.label in seen_labels:
                raise CardioInputError(what, f"label {s.label} is already used by {seen_labels[s.label]!r}",
                                       "every structure needs its own label value")
            seen_labels[s.label] = s.name
            _as_color(s.color, what)
            for alias in (s.name, *s.aliases):
                key = _normalise(alias)
                owner = seen_aliases.get(key)
                if owner is not None and owner != s.name:
                    raise CardioInputError(what, f"alias {alias!r} is also a name of {owner!r}")
                seen_aliases[key] = s.name
        by_pair: dict[frozenset[str], list[Rule]] = {}
        for rule in self.rules:
            what = f"rule {rule.kind} ({rule.a!r}, {rule.b!r})"
            if rule.kind not in RULE_KINDS:
                raise CardioInputError(what, f"unknown rule kind {rule.kind!r}", "use 'inside' or 'disjoint'")
            for name in (rule.a, rule.b):
                if name not in seen_names:
                    raise CardioInputError(what, f"names the unknown structure {name!r}",
                                           f"known structures: {', '.join(sorted(seen_names))}")
            if rule.a == rule.b:
                raise CardioInputError(what, "relates a structure to itself")
            pair = by_pair.setdefault(frozenset((rule.a, rule.b)), [])
            for previous in pair:
                if previous == rule or previous.kind == rule.kind == "disjoint":
                    raise CardioInputError(what, "is listed twice")
                raise CardioInputError(what, f"contradicts the rule {previous.kind} "
                                       f"({previous.a!r}, {previous.b!r}) on the same pair")
            pair.append(rule)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def default(cls) -> RuleSet:
        """The seven cardiac structures with the labels 1..7 of
        :func:`cardiocore.phantoms.heart.heart_label_phantom` (LV cavity 1, LV myocardium 2,
        RV 3, LA 4, RA 5, aorta 6, pulmonary artery 7) and all pairs disjoint."""
        return cls.label_map(_default_structures())

    @classmethod
    def label_map(cls, structures: Sequence[Structure]) -> RuleSet:
        """``structures`` with every pair disjoint: the rules a label map implies (each voxel
        has one label)."""
        return cls(tuple(structures), _all_disjoint([s.name for s in structures]))

    @classmethod
    def mmwhs(cls, reindexed: bool = False) -> RuleSet:
        """The default structures and rules in MM-WHS label coding: 205 LV myocardium, 420 LA,
        500 LV blood pool, 550 RA, 600 RV, 820 aorta, 850 pulmonary artery.

        Args:
            reindexed: use the MM-WHS labels re-indexed 1..7 in ascending order (205 -> 1,
                420 -> 2, ..., 850 -> 7), the coding of the HeartDeformNets label maps.
        """
        codes = {_identifier(s.name): s.mmwhs_label for s in HEART_STRUCTURES}
        if reindexed:
            codes = {name: rank + 1 for rank, name in enumerate(sorted(codes, key=codes.__getitem__))}
        return cls.label_map(_default_structures(codes))

    @classmethod
    def from_json(cls, source: str | os.PathLike | Mapping[str, Any]) -> RuleSet:
        """A rule set from a JSON file or an already parsed dict (see the module docstring).

        Raises:
            CardioInputError: unreadable file, invalid JSON or a malformed / invalid table.
        """
        what = "rule set"
        if isinstance(source, Mapping):
            data: Any = source
        else:
            what = str(source)
            try:
                data = json.loads(Path(source).read_text())
            except OSError as error:
                raise CardioInputError(what, f"cannot be read: {error.strerror or error}") from None
            except json.JSONDecodeError as error:
                raise CardioInputError(what, f"is not valid JSON: {error}") from None
        if not isinstance(data, Mapping) or not isinstance(data.get("structures"), list):
            raise CardioInputError(what, "must be an object with a 'structures' list and a 'rules' list")
        try:
            structures = tuple(
                Structure(
                    name=str(item["name"]),
                    label=item["label"],
                    color=_as_color(item.get("color", (128, 128, 128)), f"{what}: {item['name']!r}"),
                    aliases=tuple(str(a) for a in item.get("aliases", ())),
                )
                for item in data["structures"]
            )
            rules = tuple(Rule(str(r["kind"]), str(r["a"]), str(r["b"])) for r in data.get("rules", []))  # type: ignore[arg-type]
        except (KeyError, TypeError) as error:
            raise CardioInputError(what, f"malformed entry ({error!r})",
                                   "structures need name and label; rules need kind, a and b") from None
        return cls(structures, rules)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable form read back by :meth:`from_json`."""
        return {
            "structures": [
                {"name": s.name, "label": s.label, "color": list(s.color), "aliases": list(s.aliases)}
                for s in self.structures
            ],
            "rules": [{"kind": r.kind, "a": r.a, "b": r.b} for r in self.rules],
        }

    # ------------------------------------------------------------------ queries
    @property
    def names(self) -> tuple[str, ...]:
        """Structure identifiers in table order."""
        return tuple(s.name for s in self.structures)

    def structure(self, name: str) -> Structure:
        """The structure called ``name``.

        Raises:
            CardioInputError: unknown name.
        """
        for s in self.structures:
            if s.name == name:
                return s
        raise CardioInputError("structure", f"{name!r} is not in the rule set",
                               f"known structures: {', '.join(self.names)}")

    def subset(self, names: Iterable[str]) -> RuleSet:
        """The structures in ``names`` (table order kept) and the rules between them only.

        Raises:
            CardioInputError: an unknown name, or no name at all.
        """
        wanted = set(names)
        for name in wanted:
            self.structure(name)
        kept = tuple(s for s in self.structures if s.name in wanted)
        rules = tuple(r for r in self.rules if r.a in wanted and r.b in wanted)
        return RuleSet(kept, rules)


def resolve_rule_set(spec: RuleSet | str | os.PathLike | Mapping[str, Any] | None) -> RuleSet:
    """A rule set from ``None`` or ``"default"`` (labels 1..7), ``"mmwhs"`` (MM-WHS coding),
    ``"mmwhs-reindexed"`` (HeartDeformNets coding), a JSON path or dict, or a RuleSet."""
    if spec is None or isinstance(spec, RuleSet):
        return spec if spec is not None else RuleSet.default()
    if isinstance(spec, str) and spec in ("default", "mmwhs", "mmwhs-reindexed"):
        return {"default": RuleSet.default, "mmwhs": RuleSet.mmwhs,
                "mmwhs-reindexed": lambda: RuleSet.mmwhs(reindexed=True)}[spec]()
    return RuleSet.from_json(spec)


def guess_structure(segment_name: str, rule_set: RuleSet | None = None) -> str | None:
    """The structure a segment name most likely denotes, or None when unsure.

    Case, underscores and punctuation are ignored. An exact match with a structure's name or
    alias wins; otherwise the structure whose alias shares the most words with the name is
    chosen, where all of the alias's words must appear and every other word of the name must be a
    word of that structure's names and aliases, a number, or a neutral qualifier
    (:data:`_NEUTRAL_WORDS`: cavity, lumen, blood pool, phase names, ...). So a name that says
    more than the structure gets no guess rather than the structure it mentions: another tissue or
    region (``"LV scar"``, ``"LV epicardium"``, ``"LV papillary muscles"``, ``"LA wall"``) or
    another structure (pulmonary or caval veins, valves, appendages, coronaries, the septum,
    right-ventricular myocardium); so does a name on which two structures tie.

    Examples: ``"Left ventricle"``, ``"LV blood pool"``, ``"heart_ventricle_left"``,
    ``"LV lumen ED"`` -> ``"lv_cavity"``; ``"Myocardium"``, ``"heart_myocardium"`` ->
    ``"lv_myocardium"``; ``"pulmonary_artery"`` -> ``"pulmonary_artery"``; ``"pulmonary_vein"``,
    ``"LV scar"``, ``"Segment_1"`` -> None.

    Args:
        segment_name: the segment's name.
        rule_set: structures to choose from (default: :meth:`RuleSet.default`).
    """
    structures = (rule_set or RuleSet.default()).structures
    key = _normalise(segment_name)
    if not key:
        return None
    for s in structures:
        if key in {_normalise(a) for a in (s.name, *s.aliases)}:
            return s.name
    words = set(key.split())
    best: dict[str, int] = {}
    for s in structures:
        aliases = [set(_normalise(alias).split()) for alias in (s.name, *s.aliases)]
        own_words = set().union(*aliases)
        extra = {w for w in words - own_words if not w.isdigit()} - _NEUTRAL_WORDS
        if extra:
            continue
        for alias_words in aliases:
            if alias_words <= words:
                best[s.name] = max(best.get(s.name, 0), len(alias_words))
    if not best:
        return None
    top = max(best.values())
    winners = [name for name, score in best.items() if score == top]
    return winners[0] if len(winners) == 1 else None
