"""The extension's metadata: CMakeLists.txt, the Extensions Index catalog entry and its images."""

from __future__ import annotations

import json
import re

import pytest
from conftest import REPO_ROOT
from PIL import Image

REQUIRED_FIELDS = (
    "EXTENSION_HOMEPAGE",
    "EXTENSION_CATEGORY",
    "EXTENSION_CONTRIBUTORS",
    "EXTENSION_DESCRIPTION",
    "EXTENSION_ICONURL",
    "EXTENSION_SCREENSHOTURLS",
    "EXTENSION_DEPENDS",
)
#: Keys allowed by slicer-extension-catalog-entry-schema v1.0.2 (the schema forbids others).
CATALOG_KEYS = {"$schema", "build_dependencies", "build_subdirectory", "category", "scm_revision", "scm_type", "scm_url", "tier"}
#: Categories of the Slicer Extensions Index where cardiac extensions live.
VALID_CATEGORIES = {"Cardiac", "Segmentation", "Shape Analysis", "Quantification", "Registration", "Utilities"}
RAW_PREFIX = "https://raw.githubusercontent.com/cardioshape/CardioShape/main/"


@pytest.fixture(scope="module")
def cmake_fields() -> dict[str, str]:
    text = (REPO_ROOT / "CMakeLists.txt").read_text()
    return dict(re.findall(r'^set\((EXTENSION_\w+)\s+"([^"]*)"\)', text, flags=re.MULTILINE))


@pytest.fixture(scope="module")
def catalog() -> dict:
    return json.loads((REPO_ROOT / "CardioShape.json").read_text())


def test_every_metadata_field_is_set(cmake_fields: dict[str, str]) -> None:
    for field in REQUIRED_FIELDS:
        assert cmake_fields.get(field, "").strip(), f"{field} missing or empty in CMakeLists.txt"
    assert cmake_fields["EXTENSION_CATEGORY"] in VALID_CATEGORIES


def test_cmake_is_a_slicer_extension() -> None:
    text = (REPO_ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"^project\(CardioShape\)", text, flags=re.MULTILINE)
    assert "find_package(Slicer REQUIRED)" in text
    assert "add_subdirectory(${module_name})" in text
    assert "cardioshape_install_backend()" in text


def test_project_name_matches_catalog_file(catalog: dict) -> None:
    name = re.search(r"^project\((\w+)\)", (REPO_ROOT / "CMakeLists.txt").read_text(), flags=re.MULTILINE).group(1)
    assert (REPO_ROOT / f"{name}.json").is_file()


def test_catalog_entry_follows_schema(catalog: dict, cmake_fields: dict[str, str]) -> None:
    assert set(catalog) <= CATALOG_KEYS
    assert catalog["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.2.json#")
    assert catalog["category"] == cmake_fields["EXTENSION_CATEGORY"]
    assert catalog["build_dependencies"] == cmake_fields["EXTENSION_DEPENDS"].split()
    assert catalog["scm_url"].startswith("https://")


def test_icon_is_a_128_png_under_resources(cmake_fields: dict[str, str]) -> None:
    url = cmake_fields["EXTENSION_ICONURL"]
    assert url.startswith(RAW_PREFIX + "Resources/Icons/")
    icon = REPO_ROOT / url.removeprefix(RAW_PREFIX)
    with Image.open(icon) as image:
        assert image.format == "PNG" and image.size == (128, 128)


def test_screenshots_exist(cmake_fields: dict[str, str]) -> None:
    urls = cmake_fields["EXTENSION_SCREENSHOTURLS"].split()
    assert urls
    for url in urls:
        assert url.startswith(RAW_PREFIX)
        with Image.open(REPO_ROOT / url.removeprefix(RAW_PREFIX)) as image:
            assert image.format == "PNG"
