"""The ``vqgan`` command: help for every sub-command, validate, reconstruct, presets, error exits."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqgan.cli import COMMANDS, build_parser, main
from vqgan.registry import get_preset
from vqgan.train import fit


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    fit(get_preset("test-taming"), run)
    return run


def test_help_for_every_subcommand(capsys):
    build_parser([])
    assert {"fit", "validate", "reconstruct", "presets"} <= set(COMMANDS)
    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "usage:" in out and "--help" in out
    fit_help = _help(capsys, "fit")
    for option in ("--config", "--run-dir", "--max-steps", "--model.quantizer.kind", "--loss.disc_start", "--resume"):
        assert option in fit_help


def _help(capsys, name):
    with pytest.raises(SystemExit):
        main([name, "--help"])
    return capsys.readouterr().out


def test_top_level_help_runs_as_a_program():
    out = subprocess.run([str(Path(sys.executable).with_name("vqgan")), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for name in ("fit", "validate", "reconstruct"):
        assert name in out.stdout


def test_validate_prints_one_json_object(run_dir, capsys):
    assert main(["validate", "--ckpt", str(run_dir / "checkpoints" / "last.ckpt")]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((run_dir / "metrics.json").read_text())
    for key in ("psnr", "ssim", "codebook_usage", "perplexity"):
        assert metrics[key] == pytest.approx(saved[key], rel=1e-4, abs=1e-4)


def test_reconstruct_a_folder(run_dir, tmp_path, capsys):
    src = tmp_path / "images" / "nested"
    src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(src / f"img{i}.png")
    out = tmp_path / "out"
    assert main(["reconstruct", "--ckpt", str(run_dir / "checkpoints" / "last.ckpt"), "--input", str(tmp_path / "images"), "--output", str(out)]) == 0
    for i in range(2):
        rec = Image.open(out / f"img{i}_rec.png")
        cmp = Image.open(out / f"img{i}_compare.png")
        assert rec.size == (16, 16) and cmp.size == (32, 16)
    assert "PSNR" in capsys.readouterr().out


def test_presets_listing(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("quickstart", "seed001-taming-f16-1024", "test-taming"):
        assert name in out


def test_errors_exit_2_with_the_reason(tmp_path, capsys):
    rc = main(["validate", "--ckpt", str(tmp_path / "missing.ckpt")])
    assert rc == 1  # checkpoint errors exit 1, configuration errors 2
    assert "missing.ckpt" in capsys.readouterr().err
    rc = main(["fit", "--preset", "test-taming", "--run-dir", str(tmp_path / "r"), "--model.resolution", "15", "--data.resolution", "15"])
    assert rc == 2
    assert "model.resolution" in capsys.readouterr().err


def test_a_new_run_refuses_a_folder_that_holds_an_earlier_run(tmp_path, capsys):
    """A second `fit` without --resume would overwrite the first run's config.yaml and mix two runs' checkpoints:
    it stops before touching anything and says how to continue or where to start; --resume last continues."""
    run_dir = tmp_path / "run"
    fit(get_preset("test-taming"), run_dir)
    config_before = (run_dir / "config.yaml").read_bytes()
    ckpts_before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    rc = main(["fit", "--preset", "test-taming", "--run-dir", str(run_dir), "--train.max_steps", "4"])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(run_dir) in err and "--resume last" in err and "another --run-dir" in err
    assert (run_dir / "config.yaml").read_bytes() == config_before
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ckpts_before
    steps = get_preset("test-taming").train.max_steps
    rc = main(["fit", "--preset", "test-taming", "--run-dir", str(run_dir), "--resume", "last",
               "--train.max_steps", str(steps + 1)])
    assert rc == 0
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == steps + 1
