"""Model weights: the versioned manifest, where weight files live, and their verification.

Two manifests (both ``models.json``, schema below) list the models CardioShape can load:

- the bundled one, ``Resources/Models/models.json`` next to the ``cardiocore`` package
  (or ``$CARDIOSHAPE_RESOURCES/Models``), shipped with the extension;
- the user's, in the cache folder (``$CARDIOSHAPE_CACHE``, else ``~/.cache/cardioshape/models``
  on Linux, ``~/Library/Caches/cardioshape/models`` on macOS,
  ``%LOCALAPPDATA%\\cardioshape\\Cache\\models`` on Windows), where ``register_user_model``
  records models trained by the user.

A weight file is looked for in the bundled ``Models`` folder first, then in the cache folder,
and is used only if its size and SHA-256 match the manifest and the installed cardiocore is at
least the entry's ``cardiocore_min_version``.

Manifest schema (``schema_version`` 1)::

    {"schema_version": 1,
     "models": [{
        "name": "cardiogen-lv-vae",          # [A-Za-z0-9._-], what code asks for
        "version": "1.0.0",                  # dotted integers; the highest compatible is default
        "task": "generation",                # what the model does
        "file": "cardiogen-lv-vae-1.0.0.pt", # file name inside a Models/cache folder
        "sha256": "<64 hex digits>",         # of the file's bytes
        "size_bytes": 123456,
        "training_data": "...",              # data set(s) and split used for training
        "data_license": "CC-BY-4.0",         # licence of that training data
        "metrics": {"chamfer_mm": 1.2},      # held-out evaluation, name -> number
        "date": "2026-11-23",                # ISO date of training
        "cardiocore_min_version": "0.1.0",   # oldest cardiocore that can load it
        "architecture": {...}                # constructor arguments of the network
     }]}

Unknown extra keys are kept and ignored, so newer manifests stay readable.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cardiocore
from cardiocore.errors import CardioInputError, WeightsError
from cardiocore.train.atomic import atomic_write

SCHEMA_VERSION = 1
MANIFEST_NAME = "models.json"
RESOURCES_ENV_VAR = "CARDIOSHAPE_RESOURCES"
CACHE_ENV_VAR = "CARDIOSHAPE_CACHE"
ENTRY_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "version": str,
    "task": str,
    "file": str,
    "sha256": str,
    "size_bytes": int,
    "training_data": str,
    "data_license": str,
    "metrics": dict,
    "date": str,
    "cardiocore_min_version": str,
    "architecture": dict,
}
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
_CHUNK_BYTES = 1 << 20


# ------------------------------------------------------------------------------- locations


def resources_dir() -> Path:
    """The extension's ``Resources`` folder (``$CARDIOSHAPE_RESOURCES`` overrides)."""
    override = os.environ.get(RESOURCES_ENV_VAR)
    return Path(override) if override else Path(cardiocore.__file__).resolve().parents[1] / "Resources"


def bundled_models_dir() -> Path:
    """``Resources/Models``: weights and the manifest shipped with the extension."""
    return resources_dir() / "Models"


def cache_dir() -> Path:
    """The user's model cache (``$CARDIOSHAPE_CACHE`` overrides the platform default)."""
    override = os.environ.get(CACHE_ENV_VAR)
    if override:
        return Path(override)
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
        return base / "cardioshape" / "Cache" / "models"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "cardioshape" / "models"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cardioshape" / "models"


# ------------------------------------------------------------------------------- helpers


def parse_version(text: str, what: str = "version") -> tuple[int, ...]:
    """``"1.2.0"`` -> ``(1, 2, 0)``; trailing zeros are ignored when comparing."""
    parts = str(text).strip().split(".")
    if not all(part.isdigit() for part in parts):
        raise CardioInputError(what, f"{text!r} is not a dotted version such as 1.0.0")
    numbers = [int(part) for part in parts]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _validate_entry(entry: Any, source: str) -> dict[str, Any]:
    label = f"{source}, model entry {entry.get('name', '?') if isinstance(entry, dict) else '?'}"
    if not isinstance(entry, dict):
        raise WeightsError(source, f"model entries must be JSON objects, found {type(entry).__name__}")
    missing = [name for name in ENTRY_FIELDS if name not in entry]
    if missing:
        raise WeightsError(label, f"lacks the field(s) {', '.join(missing)}", "see the schema in cardiocore/weights.py")
    for name, kind in ENTRY_FIELDS.items():
        if not isinstance(entry[name], kind) or (kind is int and isinstance(entry[name], bool)):
            raise WeightsError(label, f"field {name!r} should be {kind.__name__}, found {entry[name]!r}")
    if not _NAME_PATTERN.match(entry["name"]):
        raise WeightsError(label, f"name {entry['name']!r} may only use letters, digits, '.', '_' and '-'")
    if Path(entry["file"]).name != entry["file"] or entry["file"] in ("", ".", ".."):
        raise WeightsError(label, f"file {entry['file']!r} must be a bare file name, not a path")
    if not _SHA256_PATTERN.match(entry["sha256"]):
        raise WeightsError(label, f"sha256 {entry['sha256']!r} is not 64 lower-case hex digits")
    for name in ("version", "cardiocore_min_version"):
        try:
            parse_version(entry[name])
        except CardioInputError as error:
            raise WeightsError(label, f"field {name!r}: {error.problem}") from error
    return entry


def _read_manifest(path: Path, missing_ok: bool) -> dict[str, Any]:
    if not path.is_file():
        if missing_ok:
            return {"schema_version": SCHEMA_VERSION, "models": []}
        raise WeightsError(
            str(path), "model manifest not found", f"it ships in Resources/Models; set {RESOURCES_ENV_VAR} if moved"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsError(
            str(path), f"is not a readable JSON manifest ({error})", "restore it or delete it to start afresh"
        ) from error
    if not isinstance(manifest, dict) or not isinstance(manifest.get("models"), list):
        raise WeightsError(str(path), 'must be a JSON object with a "models" list')
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise WeightsError(
            str(path),
            f"has manifest schema_version {version!r}; cardiocore {cardiocore.__version__} reads {SCHEMA_VERSION}",
            "upgrade cardiocore"
            if isinstance(version, int) and version > SCHEMA_VERSION
            else "fix the schema_version field",
        )
    for entry in manifest["models"]:
        _validate_entry(entry, str(path))
    return manifest


def load_manifest(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """A validated manifest as a dict (default: the bundled ``Resources/Models/models.json``).

    Raises ``WeightsError`` when the file is missing, not JSON, of another schema version, or
    has an entry lacking a field or with a malformed one.
    """
    return _read_manifest(Path(path) if path is not None else bundled_models_dir() / MANIFEST_NAME, missing_ok=False)


# ------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ManifestEntry:
    """One model entry and the manifest it came from ("bundled" or "user")."""

    entry: Mapping[str, Any]
    source: str
    manifest_path: Path

    @property
    def version(self) -> tuple[int, ...]:
        return parse_version(self.entry["version"])

    @property
    def compatible(self) -> bool:
        return parse_version(self.entry["cardiocore_min_version"]) <= parse_version(cardiocore.__version__)


class ModelRegistry:
    """Bundled and user manifests together: find, verify and register model weights."""

    def __init__(self, bundled_dir: str | os.PathLike | None = None, user_dir: str | os.PathLike | None = None) -> None:
        self.bundled_dir = Path(bundled_dir) if bundled_dir is not None else bundled_models_dir()
        self.user_dir = Path(user_dir) if user_dir is not None else cache_dir()
        self._verified: dict[tuple[str, int, int, str], bool] = {}

    @property
    def user_manifest_path(self) -> Path:
        return self.user_dir / MANIFEST_NAME

    def entries(self) -> list[ManifestEntry]:
        """Every model entry, bundled ones first (a missing user manifest counts as empty)."""
        found = []
        for source, folder, missing_ok in (("bundled", self.bundled_dir, False), ("user", self.user_dir, True)):
            path = folder / MANIFEST_NAME
            found += [ManifestEntry(entry, source, path) for entry in _read_manifest(path, missing_ok)["models"]]
        return found

    def find(self, name: str, version: str | None = None) -> ManifestEntry:
        """The entry for ``name`` (at ``version``, else the highest version this cardiocore can load)."""
        everything = self.entries()
        candidates = [item for item in everything if item.entry["name"] == name]
        if not candidates:
            known = sorted({item.entry["name"] for item in everything}) or ["none"]
            raise WeightsError(
                f"model {name!r}",
                f"is not in the model manifests ({self.bundled_dir / MANIFEST_NAME}, {self.user_manifest_path})",
                f"available models: {', '.join(known)}",
            )
        if version is not None:
            wanted = parse_version(version, "model version")
            candidates = [item for item in candidates if item.version == wanted]
            if not candidates:
                versions = sorted({item.entry["version"] for item in self.entries() if item.entry["name"] == name})
                raise WeightsError(
                    f"model {name!r}", f"has no version {version}", f"available versions: {', '.join(versions)}"
                )
        compatible = [item for item in candidates if item.compatible]
        if not compatible:
            needed = min(candidates, key=lambda item: parse_version(item.entry["cardiocore_min_version"]))
            raise WeightsError(
                f"model {name!r} version {needed.entry['version']}",
                f"needs cardiocore >= {needed.entry['cardiocore_min_version']}, "
                f"but cardiocore {cardiocore.__version__} is installed",
                "upgrade the CardioShape extension (or pip install -U cardiocore)",
            )
        return max(compatible, key=lambda item: item.version)  # max keeps the first (bundled) of equals

    def resolve(self, name: str, version: str | None = None) -> Path:
        """Path of a verified weight file for ``name`` (see ``find`` for the version chosen).

        Raises ``WeightsError`` saying where it looked when the file is absent, and the expected
        and found size or SHA-256 when the file is not the one the manifest describes.
        """
        item = self.find(name, version)
        entry = item.entry
        looked = [self.bundled_dir / entry["file"], self.user_dir / entry["file"]]
        path = next((candidate for candidate in looked if candidate.is_file()), None)
        label = f"model {name!r} version {entry['version']}"
        if path is None:
            raise WeightsError(
                label,
                "weight file not found; looked at " + " and ".join(str(candidate) for candidate in looked),
                f"download or copy {entry['file']} into {self.user_dir}",
            )
        self._verify(path, entry, label)
        return path

    def _verify(self, path: Path, entry: Mapping[str, Any], label: str) -> None:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns, entry["sha256"])
        if self._verified.get(key):
            return
        fix = f"the file is damaged or was replaced: delete {path} and download or copy it again"
        if stat.st_size != entry["size_bytes"]:
            raise WeightsError(
                label, f"{path} has {stat.st_size} bytes, the manifest expects {entry['size_bytes']}", fix
            )
        found = sha256_of(path)
        if found != entry["sha256"]:
            raise WeightsError(label, f"{path} has SHA-256 {found}, the manifest expects {entry['sha256']}", fix)
        self._verified[key] = True

    def register(
        self,
        weights_path: str | os.PathLike,
        *,
        name: str,
        version: str,
        task: str,
        training_data: str,
        data_license: str,
        metrics: Mapping[str, float] | None = None,
        architecture: Mapping[str, Any] | None = None,
        cardiocore_min_version: str | None = None,
        date: str | None = None,
        overwrite: bool = False,
    ) -> dict[str, Any]:
        """Copy a trained weight file into the user cache and add it to the user manifest.

        The file is stored as ``<name>-<version><suffix>``; both the copy and the manifest are
        written atomically. Returns the new entry. Registering a name and version that already
        exist raises ``CardioInputError`` (for a user model, unless ``overwrite``; bundled
        models cannot be shadowed). One registration at a time per cache folder.
        """
        source = Path(weights_path)
        if not source.is_file():
            raise CardioInputError(str(source), "weight file not found")
        if not _NAME_PATTERN.match(name):
            raise CardioInputError("name", f"{name!r} may only use letters, digits, '.', '_' and '-'")
        parse_version(version, "version")
        min_version = cardiocore_min_version or cardiocore.__version__
        parse_version(min_version, "cardiocore_min_version")
        wanted = parse_version(version)
        clash = [item for item in self.entries() if item.entry["name"] == name and item.version == wanted]
        if any(item.source == "bundled" for item in clash):
            raise CardioInputError(
                f"model {name!r} version {version}", "is a bundled model", "register under another version or name"
            )
        if clash and not overwrite:
            raise CardioInputError(
                f"model {name!r} version {version}",
                f"is already registered in {self.user_manifest_path}",
                "pass overwrite=True to replace it, or use a new version",
            )

        file_name = f"{name}-{version}{source.suffix}"
        entry = {
            "name": name,
            "version": version,
            "task": task,
            "file": file_name,
            "sha256": "0" * 64,
            "size_bytes": 0,
            "training_data": training_data,
            "data_license": data_license,
            "metrics": dict(metrics or {}),
            "date": date or datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
            "cardiocore_min_version": min_version,
            "architecture": dict(architecture or {}),
        }
        try:
            _validate_entry(json.loads(json.dumps(entry)), "register_user_model")
        except TypeError as error:
            raise CardioInputError("metrics/architecture", f"must be JSON-compatible ({error})") from error
        except WeightsError as error:
            raise CardioInputError(error.what, error.problem, error.hint) from error

        digest = hashlib.sha256()
        with atomic_write(self.user_dir / file_name) as target, open(source, "rb") as original:
            for chunk in iter(lambda: original.read(_CHUNK_BYTES), b""):
                digest.update(chunk)
                target.write(chunk)
        entry["sha256"] = digest.hexdigest()
        entry["size_bytes"] = (self.user_dir / file_name).stat().st_size
        manifest = _read_manifest(self.user_manifest_path, missing_ok=True)
        manifest["models"] = [
            existing
            for existing in manifest["models"]
            if not (existing["name"] == name and parse_version(existing["version"]) == wanted)
        ] + [entry]
        with atomic_write(self.user_manifest_path) as stream:
            stream.write((json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
        return entry


def resolve_model(name: str, version: str | None = None) -> Path:
    """Path of the verified weight file of model ``name`` (see ``ModelRegistry.resolve``)."""
    return ModelRegistry().resolve(name, version)


def register_user_model(weights_path: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """Add a user-trained model to the cache manifest (see ``ModelRegistry.register``)."""
    return ModelRegistry().register(weights_path, **fields)


# ------------------------------------------------------------------------------ model files
def write_model_file(path: str | os.PathLike, payload: Mapping[str, Any], overwrite: bool = False) -> Path:
    """Write a model payload (``torch.save``) atomically; refuses an existing file unless ``overwrite``."""
    import torch

    target = Path(path)
    if target.exists() and not overwrite:
        raise CardioInputError(str(target), "already exists", "choose another path or pass overwrite=True")
    with atomic_write(target) as stream:
        torch.save(dict(payload), stream)
    return target


def read_model_file(path: str | os.PathLike, file_format: str, version: int, what: str) -> dict[str, Any]:
    """The payload of a model file written by :func:`write_model_file`, checked to be a dict with
    ``format == file_format`` and ``format_version == version`` (tensors loaded on the CPU).

    Args:
        what: the kind of model, for messages (e.g. "CardioGen model").

    Raises:
        WeightsError: missing or unreadable file, another format, another format version.
    """
    from cardiocore.train.torch_file import load_tensors  # torch is imported only when a model is read

    source = Path(path)
    if not source.is_file():
        raise WeightsError(str(source), f"no such {what} file")
    payload = load_tensors(source, what)
    if not isinstance(payload, dict) or payload.get("format") != file_format:
        raise WeightsError(str(source), f"is not a {what} file")
    if payload.get("format_version") != version:
        raise WeightsError(
            str(source),
            f"has {what} format version {payload.get('format_version')}, this cardiocore reads {version}",
            "retrain the model or install the cardiocore version that wrote it",
        )
    return payload

