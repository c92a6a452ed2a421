"""First-use dependency checks (headless side; the Slicer side runs in the modules' self-tests)."""

from __future__ import annotations

import pytest

from cardiocore.errors import CardioInputError
from cardiocore.mrml.dependencies import REQUIREMENTS, Requirement, ensure_requirements, missing_requirements

ABSENT = Requirement("cardioshape_package_that_does_not_exist", "cardioshape-absent>=1")


def test_this_environment_has_every_requirement() -> None:
    assert missing_requirements() == []


def test_missing_package_is_reported() -> None:
    assert missing_requirements((REQUIREMENTS[0], ABSENT)) == [ABSENT]


def test_nothing_missing_asks_nothing() -> None:
    def never(message: str) -> bool:
        raise AssertionError("must not ask")

    ensure_requirements(never, REQUIREMENTS, inside_slicer=False)


def test_headless_never_installs_and_gives_the_command() -> None:
    with pytest.raises(CardioInputError, match=r"pip install 'cardioshape-absent>=1'"):
        ensure_requirements(lambda m: True, (ABSENT,), inside_slicer=False)


def test_declined_installation_installs_nothing() -> None:
    asked: list[str] = []

    def decline(message: str) -> bool:
        asked.append(message)
        return False

    with pytest.raises(CardioInputError, match="declined"):
        ensure_requirements(decline, (ABSENT,), inside_slicer=True)
    assert len(asked) == 1 and "cardioshape-absent>=1" in asked[0]
