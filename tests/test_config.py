"""Configs: YAML + dotted overrides, unknown keys, validation, the files in configs/ and the presets."""

from pathlib import Path

import pytest
import yaml

from vqgan.config import ConfigError, ExperimentConfig, dump_config, load_config, to_dict
from vqgan.registry import get_preset, list_presets

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# configs/ files that mirror a registered stage-1 preset one to one.
CONFIG_PRESETS = {
    "quickstart.yaml": "quickstart",
    "ffhq_vqgan_f16.yaml": "seed001-taming-f16-1024",
    "celeba_vqvae.yaml": "seed003-celeba-vqvae",
    "smoke_vqvae.yaml": "seed004-smoke-vqvae",
    "smoke_vqgan.yaml": "seed004-smoke-vqgan",
}


def test_yaml_then_overrides(tmp_path):
    cfg = load_config(CONFIGS / "quickstart.yaml", ["--model.ch", "32", "--train.lr=0.005", "--model.quantizer.kind", "vq"])
    assert cfg.model.ch == 32
    assert cfg.train.lr == 0.005
    assert cfg.model.quantizer.kind == "vq"
    # untouched values come from the file
    assert cfg.model.quantizer.codebook_size == 1024
    assert cfg.data.kind == "builtin"


@pytest.mark.parametrize("file,preset", sorted(CONFIG_PRESETS.items()))
def test_config_files_match_presets(file, preset):
    cfg = load_config(CONFIGS / file)
    expected = to_dict(get_preset(preset))
    got = to_dict(cfg)
    got.pop("name"), expected.pop("name")
    assert got == expected


def test_dump_load_round_trip(tmp_path):
    cfg = get_preset("seed004-smoke-vqgan")
    cfg.model.ch_mult = [1, 2, 3]
    path = dump_config(cfg, tmp_path / "config.yaml")
    again = load_config(path)
    assert to_dict(again) == to_dict(cfg)


def test_unknown_key_names_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": {"chanels": 4}}))
    with pytest.raises(ConfigError, match="chanels"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no_such"):
        load_config(None, ["--model.no_such", "1"])


def test_wrong_type_and_bad_choice():
    with pytest.raises(ConfigError, match="model.ch"):
        load_config(None, ["--model.ch", "many"])
    with pytest.raises(ConfigError, match="quantizer.kind"):
        load_config(None, ["--model.quantizer.kind", "nearest"])


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["--model.resolution", "30", "--data.resolution", "30"], "not divisible"),
        (["--model.attn_resolutions", "[5]"], "never occur"),
        (["--model.quantizer.codebook_size", "1"], "at least 2"),
        (["--loss.reconstruction", "masked_l2"], "needs masks"),
        (["--data.channels", "1"], "data.channels"),
    ],
)
def test_validate_names_the_key(overrides, match):
    cfg = load_config(CONFIGS / "quickstart.yaml", overrides)
    with pytest.raises(ConfigError, match=match):
        cfg.validate()


def test_every_preset_is_valid():
    for name in list_presets():
        cfg = get_preset(name)
        if isinstance(cfg, ExperimentConfig):
            cfg.validate()
