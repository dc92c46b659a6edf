"""Configs: YAML + dotted overrides, unknown keys, validation, the presets and the files in configs/ generated from
them, and the one registry behind presets, quantizers and data kinds."""

from pathlib import Path

import pytest
import yaml

from vqgan.config import ConfigError, ExperimentConfig, dump_config, load_config, to_dict
from vqgan.registry import (
    CONFIG_FILES,
    PRESETS,
    Registry,
    UnknownNameError,
    get_preset,
    list_presets,
    preset_yaml,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_yaml_then_overrides(tmp_path):
    cfg = load_config(CONFIGS / "quickstart.yaml", ["--model.ch", "32", "--train.lr=0.005", "--model.quantizer.kind", "vq"])
    assert cfg.model.ch == 32
    assert cfg.train.lr == 0.005
    assert cfg.model.quantizer.kind == "vq"
    # untouched values come from the file
    assert cfg.model.quantizer.codebook_size == 1024
    assert cfg.data.kind == "builtin"


def test_every_config_file_is_generated_from_its_preset(tmp_path):
    """One source of truth: each configs/ file is the output of its preset (regenerate with
    `vqgan presets --write-configs configs/`), and loads back to exactly the preset."""
    from vqgan.cli import main
    from vqgan.models.prior.config import get_prior_preset, load_prior_config

    assert sorted(CONFIG_FILES) == sorted(p.name for p in CONFIGS.glob("*.yaml"))
    for file, (stage, name) in CONFIG_FILES.items():
        text = (CONFIGS / file).read_text()
        assert text == preset_yaml(name, stage), f"configs/{file} is stale: run vqgan presets --write-configs configs/"
        loaded, preset = (load_prior_config, get_prior_preset) if stage == "prior" else (load_config, get_preset)
        assert to_dict(loaded(CONFIGS / file)) == to_dict(preset(name))
    assert main(["presets", "--write-configs", str(tmp_path)]) == 0
    for file in CONFIG_FILES:
        assert (tmp_path / file).read_text() == (CONFIGS / file).read_text()


def test_one_registry_for_presets_quantizers_data_and_commands():
    import typing

    from vqgan.cli import COMMANDS
    from vqgan.config import DataKind, QuantizerKind
    from vqgan.data import DATA_KINDS, available_data, register_data
    from vqgan.models.prior.config import PRIOR_PRESETS, register_prior_preset
    from vqgan.quantizers import QUANTIZERS, available_quantizers, register_quantizer

    for reg in (PRESETS, PRIOR_PRESETS, QUANTIZERS, DATA_KINDS, COMMANDS):
        assert isinstance(reg, Registry) and len(reg) > 0
    # the config's choices are exactly what is registered
    assert sorted(typing.get_args(QuantizerKind)) == QUANTIZERS.names() == available_quantizers()
    assert sorted(typing.get_args(DataKind)) == DATA_KINDS.names() == available_data()
    # the decorators are thin uses of it: a second registration under a taken name is refused
    for register, taken in ((register_quantizer, "vq"), (register_data, "folder"), (register_prior_preset, "test-gpt")):
        with pytest.raises(ValueError, match="already registered"):
            register(taken)(lambda *a: None)
    # a typo names the closest entry, as a KeyError and as a ValueError
    with pytest.raises(KeyError, match="did you mean 'quickstart'"):
        get_preset("quickstrat")
    from vqgan.config import QuantizerConfig
    from vqgan.quantizers import build_quantizer

    with pytest.raises(ValueError, match=r"unknown quantizer kind 'fsqq' \(did you mean 'fsq'\?\)"):
        build_quantizer(QuantizerConfig(kind="fsqq"), 8)


def test_registry_mechanism():
    reg: Registry = Registry("widget")

    @reg.register("b-one", "the first")
    def one():
        """Ignored: the explicit help wins."""

    @reg.register("a-two")
    def two():
        """Second widget.

        More words."""

    assert reg.names() == ["a-two", "b-one"] and list(reg) == reg.names() and "a-two" in reg
    assert reg.describe() == {"a-two": "Second widget.", "b-one": "the first"}
    assert reg["b-one"] is one and reg.names("b") == ["b-one"]
    with pytest.raises(UnknownNameError) as info:
        reg["b-onr"]
    assert str(info.value) == "unknown widget 'b-onr' (did you mean 'b-one'?); choose one of a-two, b-one"


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


def test_replace_keys_changes_nested_keys_and_refuses_unknown_ones():
    from vqgan.config import replace_keys

    base = get_preset("test-taming")
    cfg = replace_keys(base, {"model": {"quantizer": {"codebook_size": 64}}, "train": {"lr": 0.5}})
    assert (cfg.model.quantizer.codebook_size, cfg.train.lr) == (64, 0.5)
    assert cfg.model.ch == base.model.ch and base.train.lr != 0.5  # the rest kept, the original untouched
    with pytest.raises(ConfigError, match="codebook_sise"):
        replace_keys(base, {"model": {"quantizer": {"codebook_sise": 64}}})
