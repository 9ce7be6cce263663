"""The built-in registry of released weights and user registry files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from genesis.errors import ConfigError
from genesis.weights import WeightsRegistry, WeightsSettings
from genesis.weights.manifest import entry_from_dict, read_manifest_file
from weights import CARD_DIR, MANIFEST_DIR


def test_builtin_manifests_are_valid_and_complete():
    registry = WeightsRegistry.load()
    names = set(registry.names())
    assert {"unet3d.genesis_chest_ct", "unet3d.genesis_chest_ct_keras", "r3d_18.kinetics400",
            "r2plus1d_18.kinetics400", "mc3_18.kinetics400", "resnet18.imagenet1k_v1",
            "resnet18_3d.medicalnet"} <= names
    for path in MANIFEST_DIR.glob("*.yaml"):
        if not path.name.startswith("_"):
            (entry,) = read_manifest_file(path)
            assert path.stem == entry.name, "one manifest per model, named after it"
            assert entry.license and entry.paper and entry.architecture.get("name")
    official = registry.get("unet3d.genesis_chest_ct")
    assert official.sha256 is None and official.checksum_status == "unknown-upstream"
    assert official.urls[0].startswith("https://huggingface.co/MrGiovanni/ModelsGenesis/")
    assert registry.get("unet3d.genesis_chest_ct_keras").architecture["args"]["up_mode"] == "upsample"
    for entry in registry.entries():
        if entry.format == "torchvision":  # torchvision names carry the sha256 prefix: "<arch>-<prefix>.pth"
            assert entry.cache_filename == f"{entry.cache_filename.split('-')[0]}-{entry.sha256_prefix}.pth"


def test_template_is_marked_and_not_registered():
    (template,) = read_manifest_file(MANIFEST_DIR / "_template.yaml")
    assert template.example and not template.urls and template.sha256 is None
    assert template.name not in WeightsRegistry.load()
    assert CARD_DIR.is_dir()


def test_user_registry_files_from_env(tmp_path: Path):
    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    one.write_text(yaml.safe_dump({"name": "unet3d.mine", "urls": ["http://127.0.0.1:9/a.pt"]}))
    two.write_text(yaml.safe_dump([{"name": "unet3d.other", "urls": ["file:///tmp/b.pt"]},
                                   {"name": "unet3d.genesis_chest_ct", "urls": ["http://127.0.0.1:9/g.pt"]}]))
    env = {"GENESIS_WEIGHTS_REGISTRY": os.pathsep.join([str(one), str(two)]), "GENESIS_CACHE": str(tmp_path / "c"),
           "GENESIS_OFFLINE": "1"}
    settings = WeightsSettings.from_env(env)
    assert settings.offline and settings.cache_dir == tmp_path / "c"
    registry = settings.registry()
    assert {"unet3d.mine", "unet3d.other"} <= set(registry.names())
    assert registry.get("unet3d.genesis_chest_ct").urls == ["http://127.0.0.1:9/g.pt"]  # user overrides
    assert WeightsSettings.from_env({"HOME": str(tmp_path)}).cache_dir.name == "genesis"


@pytest.mark.parametrize("bad, message", [
    ({"name": "NoTag", "urls": ["http://127.0.0.1:9/y"]}, "arch.tag"),
    ({"name": "unet3d.a", "urls": ["ftp://x/y"]}, "scheme"),
    ({"name": "unet3d.a", "urls": ["http://127.0.0.1:9/y"], "sha256": "abc"}, "hex digest"),
    ({"name": "unet3d.a", "urls": ["http://127.0.0.1:9/y"], "format": "onnx"}, "format"),
    ({"name": "unet3d.a"}, "urls"),
    ({"name": "unet3d.a", "urls": ["http://127.0.0.1:9/y"], "colour": "red"}, "unknown manifest keys"),
])
def test_invalid_entries_are_reported(bad, message):
    with pytest.raises(ConfigError, match=message):
        entry_from_dict(bad, "user.yaml")


def test_bad_registry_file_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="broken.yaml"):
        read_manifest_file(path)
    with pytest.raises(ConfigError, match="not found"):
        read_manifest_file(tmp_path / "absent.yaml")


def test_cards_have_front_matter_matching_the_registry():
    from genesis.weights import read_card

    names = set(WeightsRegistry.load().names()) | {"unet3d.example_template"}
    cards = sorted(CARD_DIR.glob("*.md"))
    assert cards
    for card in cards:
        meta, body = read_card(card)
        assert meta["name"] in names and body.strip().startswith("#"), card.name
