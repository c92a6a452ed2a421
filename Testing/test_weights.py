"""cardiocore.weights: manifest validation, model resolution, checksums, versions, user registry."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

import cardiocore
from cardiocore.errors import CardioInputError, WeightsError
from cardiocore.train.checkpoint import export_model_weights
from cardiocore.train.loop import TrainConfig, Trainer
from cardiocore.weights import (
    ENTRY_FIELDS,
    ModelRegistry,
    cache_dir,
    load_manifest,
    parse_version,
    register_user_model,
    resolve_model,
    sha256_of,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
WEIGHT_BYTES = b"toy weights " * 100


def make_entry(name: str = "toy", version: str = "1.0.0", payload: bytes = WEIGHT_BYTES, **changes) -> dict:
    entry = {
        "name": name,
        "version": version,
        "task": "testing",
        "file": f"{name}-{version}.pt",
        "sha256": hashlib.sha256(payload).hexdigest(),
        "size_bytes": len(payload),
        "training_data": "none (synthetic bytes)",
        "data_license": "CC0-1.0",
        "metrics": {"chamfer_mm": 1.5},
        "date": "2026-11-23",
        "cardiocore_min_version": "0.1.0",
        "architecture": {"latent": 16},
    }
    entry.update(changes)
    return entry


@pytest.fixture
def places(tmp_path, monkeypatch) -> dict[str, Path]:
    """A bundled Resources folder and a user cache, both found through the environment."""
    resources, cache = tmp_path / "Resources", tmp_path / "cache"
    (resources / "Models").mkdir(parents=True)
    monkeypatch.setenv("CARDIOSHAPE_RESOURCES", str(resources))
    monkeypatch.setenv("CARDIOSHAPE_CACHE", str(cache))
    return {"bundled": resources / "Models", "cache": cache}


def write_manifest(folder: Path, entries: list[dict], schema_version: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "models.json"
    path.write_text(json.dumps({"schema_version": schema_version, "models": entries}))
    return path


def test_shipped_manifest_is_valid_and_its_weights_verify(monkeypatch, tmp_path):
    monkeypatch.delenv("CARDIOSHAPE_RESOURCES", raising=False)
    monkeypatch.setenv("CARDIOSHAPE_CACHE", str(tmp_path))
    manifest = load_manifest()
    assert manifest["schema_version"] == 1 and manifest["models"]
    for entry in manifest["models"]:  # every bundled file is present and matches its SHA-256
        assert resolve_model(entry["name"], entry["version"]).name == entry["file"]
    raw = json.loads((REPO_ROOT / "Resources" / "Models" / "models.json").read_text())
    assert set(raw["fields"]) == set(ENTRY_FIELDS)


def test_sha256_and_version_parsing_known_answers(tmp_path):
    sample = tmp_path / "abc.bin"
    sample.write_bytes(b"abc")
    assert sha256_of(sample) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert parse_version("1.2.0") == parse_version("1.2") == (1, 2)
    assert parse_version("1.10") > parse_version("1.9")
    with pytest.raises(CardioInputError, match="dotted version"):
        parse_version("1.0-beta")


def test_resolve_verifies_checksum_and_prefers_bundled_folder(places):
    write_manifest(places["bundled"], [make_entry()])
    (places["bundled"] / "toy-1.0.0.pt").write_bytes(WEIGHT_BYTES)
    assert resolve_model("toy") == places["bundled"] / "toy-1.0.0.pt"
    assert resolve_model("toy", "1.0") == places["bundled"] / "toy-1.0.0.pt"
    places["cache"].mkdir()
    (places["bundled"] / "toy-1.0.0.pt").rename(places["cache"] / "toy-1.0.0.pt")
    assert resolve_model("toy") == places["cache"] / "toy-1.0.0.pt"  # downloaded into the cache instead


def test_resolve_reports_checksum_and_size_mismatch(places):
    write_manifest(places["bundled"], [make_entry()])
    weights = places["bundled"] / "toy-1.0.0.pt"
    tampered = WEIGHT_BYTES[:-1] + b"!"
    weights.write_bytes(tampered)
    with pytest.raises(WeightsError) as caught:
        resolve_model("toy")
    message = str(caught.value)
    assert hashlib.sha256(tampered).hexdigest() in message and hashlib.sha256(WEIGHT_BYTES).hexdigest() in message
    assert "delete" in message and "download" in message
    weights.write_bytes(WEIGHT_BYTES[:10])
    with pytest.raises(WeightsError, match=f"has 10 bytes, the manifest expects {len(WEIGHT_BYTES)}"):
        resolve_model("toy")


def test_resolve_missing_file_names_every_place_looked(places):
    write_manifest(places["bundled"], [make_entry()])
    with pytest.raises(WeightsError) as caught:
        resolve_model("toy")
    message = str(caught.value)
    assert str(places["bundled"] / "toy-1.0.0.pt") in message and str(places["cache"] / "toy-1.0.0.pt") in message


def test_resolve_unknown_names_and_versions_list_the_alternatives(places):
    write_manifest(places["bundled"], [make_entry(), make_entry(version="1.1.0")])
    with pytest.raises(WeightsError, match="available models: toy"):
        resolve_model("cardiogen")
    with pytest.raises(WeightsError, match="available versions: 1.0.0, 1.1.0"):
        resolve_model("toy", "2.0.0")


def test_version_choice_and_incompatible_versions(places):
    too_new = "99.0.0"
    write_manifest(
        places["bundled"],
        [
            make_entry(version="1.0.0"),
            make_entry(version="1.2.0"),
            make_entry(version="2.0.0", cardiocore_min_version=too_new),
        ],
    )
    for version in ("1.0.0", "1.2.0", "2.0.0"):
        (places["bundled"] / f"toy-{version}.pt").write_bytes(WEIGHT_BYTES)
    assert resolve_model("toy").name == "toy-1.2.0.pt"  # the highest version this cardiocore loads
    with pytest.raises(WeightsError) as caught:
        resolve_model("toy", "2.0.0")
    assert f"needs cardiocore >= {too_new}" in str(caught.value)
    assert f"cardiocore {cardiocore.__version__} is installed" in str(caught.value)


@pytest.mark.parametrize(
    ("manifest_text", "expected"),
    [
        ("{not json", "not a readable JSON manifest"),
        (json.dumps({"schema_version": 2, "models": []}), "upgrade cardiocore"),
        (
            json.dumps({"schema_version": 1, "models": [{k: v for k, v in make_entry().items() if k != "sha256"}]}),
            "lacks the field",
        ),
        (json.dumps({"schema_version": 1, "models": [make_entry(size_bytes="12")]}), "size_bytes"),
        (json.dumps({"schema_version": 1, "models": [make_entry(file="../escape.pt")]}), "bare file name"),
    ],
)
def test_malformed_manifests_are_rejected(places, manifest_text, expected):
    (places["bundled"] / "models.json").write_text(manifest_text)
    with pytest.raises(WeightsError, match=expected):
        load_manifest(places["bundled"] / "models.json")
    with pytest.raises(WeightsError, match="not found"):
        load_manifest(places["bundled"] / "absent.json")


def test_register_user_model_round_trip(places, tmp_path):
    write_manifest(places["bundled"], [make_entry(name="bundled-model")])
    trained = tmp_path / "trained.pt"
    trained.write_bytes(b"first weights")
    entry = register_user_model(
        trained,
        name="my-lv-vae",
        version="0.1.0",
        task="lv-mesh-generation",
        training_data="my 40 meshes",
        data_license="private",
        metrics={"chamfer_mm": 2.0},
        architecture={"latent": 16},
    )
    assert entry["sha256"] == hashlib.sha256(b"first weights").hexdigest() and entry["size_bytes"] == 13
    assert entry["cardiocore_min_version"] == cardiocore.__version__
    path = resolve_model("my-lv-vae")
    assert path == places["cache"] / "my-lv-vae-0.1.0.pt" and path.read_bytes() == b"first weights"
    on_disk = load_manifest(places["cache"] / "models.json")
    assert on_disk["models"] == [entry]

    trained.write_bytes(b"second weights")
    with pytest.raises(CardioInputError, match="already registered"):
        register_user_model(trained, name="my-lv-vae", version="0.1.0", task="t", training_data="d", data_license="l")
    register_user_model(
        trained, name="my-lv-vae", version="0.1.0", task="t", training_data="d", data_license="l", overwrite=True
    )
    register_user_model(trained, name="my-lv-vae", version="0.2.0", task="t", training_data="d", data_license="l")
    assert resolve_model("my-lv-vae", "0.1.0").read_bytes() == b"second weights"
    assert resolve_model("my-lv-vae").name == "my-lv-vae-0.2.0.pt"
    assert [item["version"] for item in load_manifest(places["cache"] / "models.json")["models"]] == ["0.1.0", "0.2.0"]
    assert sorted(entry.name for entry in places["cache"].iterdir()) == [
        "models.json",
        "my-lv-vae-0.1.0.pt",
        "my-lv-vae-0.2.0.pt",
    ]  # no temporary files left

    with pytest.raises(CardioInputError, match="bundled model"):
        register_user_model(
            trained,
            name="bundled-model",
            version="1.0.0",
            task="t",
            training_data="d",
            data_license="l",
            overwrite=True,
        )
    with pytest.raises(CardioInputError, match="JSON-compatible"):
        register_user_model(
            trained,
            name="other",
            version="1.0.0",
            task="t",
            training_data="d",
            data_license="l",
            metrics={"chamfer_mm": object()},
        )
    with pytest.raises(CardioInputError, match="weight file not found"):
        register_user_model(
            tmp_path / "absent.pt", name="other", version="1.0.0", task="t", training_data="d", data_license="l"
        )
    assert ModelRegistry().find("my-lv-vae").source == "user"


def test_trained_checkpoint_exports_registers_and_loads_back(places, tmp_path):
    """Train -> export the model from best.pt -> register -> resolve -> load into a fresh model."""
    x = torch.linspace(-1, 1, 32).unsqueeze(1)
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    data = TensorDataset(x, 3 * x)
    config = TrainConfig(batch_size=8, epochs=3, checkpoint_dir=tmp_path / "run", device="cpu", show_progress=False)
    loss = lambda net, batch: torch.nn.functional.mse_loss(net(batch[0]), batch[1])  # noqa: E731
    Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), loss, data, data, config=config).fit()
    exported = export_model_weights(tmp_path / "run" / "best.pt", tmp_path / "line.pt")
    write_manifest(places["bundled"], [])
    register_user_model(
        exported, name="line", version="1.0.0", task="regression", training_data="y = 3 x", data_license="CC0-1.0"
    )
    weights = torch.load(resolve_model("line"), weights_only=True)
    assert set(weights) == {"model", "config", "cardiocore_version", "step"} and weights["step"] == 12
    fresh = torch.nn.Linear(1, 1)
    fresh.load_state_dict(weights["model"])
    assert torch.equal(fresh.weight, model.weight) and torch.equal(fresh.bias, model.bias)


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="Linux/XDG default")
def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("CARDIOSHAPE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "cardioshape" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "cardioshape" / "models"


class _CodeObject:
    """A class torch's weights-only loader refuses (loading it would import and run code)."""


def test_unreadable_torch_files_give_actionable_errors_and_never_run_code(tmp_path):
    """Not a torch file, a file holding a class instance, an empty and a truncated file: each a
    WeightsError naming the file; torch's advice to load with weights_only=False is not passed on."""
    from cardiocore.train.torch_file import load_tensors

    good = tmp_path / "good.pt"
    torch.save({"weights": torch.ones(1000)}, good)
    assert torch.equal(load_tensors(good, "model")["weights"], torch.ones(1000))
    text, code = tmp_path / "notes.pt", tmp_path / "code.pt"
    text.write_text("not a torch file")
    torch.save({"weights": _CodeObject()}, code)
    for path in (text, code):
        with pytest.raises(WeightsError, match=f"{path.name}: cannot be read as a model: it is not a PyTorch file "
                                               "of tensors and plain data") as caught:
            load_tensors(path, "model")
        assert "weights_only" not in str(caught.value)
    empty, truncated = tmp_path / "empty.pt", tmp_path / "truncated.pt"
    empty.write_bytes(b"")
    truncated.write_bytes(good.read_bytes()[:2000])
    for path in (empty, truncated):
        with pytest.raises(WeightsError, match=f"{path.name}: cannot be read as a model \\(.*\\) \\(the file may be "
                                               "truncated or damaged"):
            load_tensors(path, "model")
