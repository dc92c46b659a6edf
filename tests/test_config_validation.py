"""Configuration mistakes are reported before any training, naming the key and the valid choices: unknown keys
(with the closest valid one), wrong types, invalid choices, and inconsistent combinations -- from YAML, from
dotted command-line options, from the Python API, and from the ``vqgan`` command (stderr, exit code 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vqgan.config import ConfigError, ExperimentConfig, ModelConfig, from_dict, load_config
from vqgan.registry import get_preset

# One thread, and vqgan log handlers restored after each test (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread_and_own_log_handlers")

# (dotted overrides on the test-taming preset, words the message must contain)
INCONSISTENT = [
    (["--model.resolution", "15", "--data.resolution", "15"], ["model.resolution=15", "not divisible", "ch_mult"]),
    (["--model.attn_resolutions", "[5]"], ["model.attn_resolutions=[5]", "never occur", "[16, 8]"]),
    (["--model.quantizer.codebook_size", "1"], ["model.quantizer.codebook_size=1", "at least 2"]),
    (["--loss.reconstruction", "masked_l2"], ["loss.reconstruction=masked_l2", "needs masks", "loss.mask_threshold"]),
    (["--data.resolution", "32"], ["data.resolution=32", "model.resolution=16"]),
    (["--model.num_groups", "3"], ["model.num_groups=3", "must divide"]),
    (["--model.quantizer.decay", "1.5"], ["model.quantizer.decay=1.5", "(0, 1)"]),
    (["--train.keep_last_k", "0"], ["train.keep_last_k=0", "at least 1"]),
    (["--train.max_nonfinite_steps", "0"], ["train.max_nonfinite_steps=0", "at least 1"]),
    (["--data.kind", "folder"], ["data.kind=folder", "data.root"]),
    (["--name", "../../etc"], ["name='../../etc'", "plain name"]),
]


@pytest.mark.parametrize("overrides, words", INCONSISTENT, ids=[o[0][0] for o in INCONSISTENT])
def test_inconsistent_choices_are_named(overrides, words):
    cfg = load_config(overrides=overrides, preset="test-taming")
    with pytest.raises(ConfigError) as info:
        cfg.validate()
    for w in words:
        assert w in str(info.value)


def test_the_command_reports_inconsistent_choices_before_training(tmp_path, capsys):
    from vqgan.cli import main

    for i, (overrides, words) in enumerate(INCONSISTENT):
        run = tmp_path / f"run{i}"
        rc = main(["fit", "--preset", "test-taming", *overrides, "--run-dir", str(run)])
        err = capsys.readouterr().err
        assert rc == 2, overrides
        assert err.startswith("vqgan fit: error: ") and all(w in err for w in words), err
        assert not run.exists()  # stopped before anything was created, let alone trained


def test_the_command_reports_wrong_types_and_choices_with_exit_code_2(tmp_path, capsys):
    from vqgan.cli import main

    cases = {
        ("--model.ch", "abc"): ['"model.ch"', "int", "abc"],
        ("--model.quantizer.kind", "foo"): ['"model.quantizer.kind"', "'vq', 'ema', 'fsq'", "foo"],
    }
    for args, words in cases.items():
        with pytest.raises(SystemExit) as info:  # the argument parser exits by itself
            main(["fit", "--preset", "test-resnet", *args, "--run-dir", str(tmp_path / "run")])
        err = capsys.readouterr().err
        assert info.value.code == 2 and all(w in err for w in words), err[-500:]
    assert not (tmp_path / "run").exists()


def test_unknown_keys_name_the_closest_valid_key():
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["--model.chanels", "3"], preset="test-resnet")
    msg = str(info.value)
    assert "model.chanels" in msg and "did you mean 'model.ch'" not in msg  # closest is in_channels, not ch
    assert "Valid keys of model:" in msg and "in_channels" in msg
    with pytest.raises(ConfigError, match=r"did you mean 'model.quantizer.codebook_size'"):
        load_config(overrides=["--model.quantizer.codebok_size", "8"])
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(ExperimentConfig, {"modle": {}})


def test_yaml_mistakes_name_the_key(tmp_path):
    cases = {
        "model:\n  chh: 3\n": ["model.chh", "did you mean 'model.ch'"],
        "modle:\n  ch: 3\n": ["modle", "did you mean 'model'"],
        "model:\n  ch: abc\n": ['"model.ch"', "int", "abc"],
        "train:\n  lr: [1]\n": ['"train.lr"', "float"],
        "model:\n  quantizer:\n    kind: foo\n": ['"model.quantizer.kind"', "'vq', 'ema'", "foo"],
        "loss:\n  gan_loss: wasserstein\n": ['"loss.gan_loss"', "'hinge', 'non_saturating'"],
    }
    for text, words in cases.items():
        path = tmp_path / "c.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert str(path) in str(info.value)
        for w in words:
            assert w in str(info.value), (text, str(info.value))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_python_api_gets_the_same_type_checks():
    cases = [
        (lambda c: setattr(c.model, "ch", "64"), "model.ch='64' is invalid: expected an integer"),
        (lambda c: setattr(c.model.quantizer, "kind", "kmeans"), "one of ['vq', 'ema'"),
        (lambda c: setattr(c.train, "lr", True), "train.lr=True is invalid: expected a number"),
        (lambda c: setattr(c.model, "ch_mult", [1, 2.5]), "model.ch_mult=[1, 2.5] is invalid: expected a list of integers"),
        (lambda c: setattr(c, "model", {"ch": 8}), "model must be a ModelConfig"),
        (lambda c: setattr(c.data, "root", 3), "data.root=3 is invalid: expected a string or null"),
    ]
    for mutate, message in cases:
        cfg = get_preset("test-taming")
        mutate(cfg)
        with pytest.raises(ConfigError) as info:
            cfg.validate()
        assert message in str(info.value)


def test_default_spatial_factor():
    assert ModelConfig().spatial_factor == 4


def test_cli_subprocess_exit_code_and_stderr(tmp_path):
    """The installed command, end to end: exit code 2 and a message naming the key, no traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  quantizer:\n    codebook_size: 1\n")
    script = Path(sys.executable).with_name("vqgan")
    cmd = [str(script)] if script.exists() else [sys.executable, "-c", "from vqgan.cli import main; raise SystemExit(main())"]
    runs = {
        "unknown key 'model.chh'; did you mean 'model.ch'?": ["--model.chh", "3"],
        "model.quantizer.codebook_size=1 must be at least 2": ["--config", str(bad)],
    }
    for expect, args in runs.items():
        r = subprocess.run([*cmd, "fit", "--preset", "test-taming", *args, "--run-dir", str(tmp_path / "run")],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and expect in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "run").exists()
