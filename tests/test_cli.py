"""The ``vqgan`` command: help for every sub-command (built from the functions' signatures and docs), validate
(with ``--data DIR``), reconstruct, presets, one-line errors and their exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqgan.cli import COMMANDS, build_parser, command_parser, main
from vqgan.config import to_dict
from vqgan.registry import get_preset
from vqgan.train import fit


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    fit(get_preset("test-taming"), run)
    return run


def test_help_for_every_subcommand(capsys):
    build_parser()
    assert {"fit", "validate", "reconstruct", "presets"} <= set(COMMANDS)
    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "usage:" in out and "--help" in out
        assert "<function" not in out and "<lambda" not in out, name  # no repr of a type converter
    fit_help = _help(capsys, "fit")
    for option in ("--config", "--preset", "--run-dir", "--max-steps", "--model.quantizer.kind", "--loss.disc_start",
                   "--resume"):
        assert option in fit_help


def test_every_option_has_help_text(capsys):
    """The functions' `Args:` and the config dataclasses' `Attributes:` are the help: no option of any command
    shows only its type and default."""
    for name in COMMANDS:
        parser = command_parser(name)
        bare = [a.option_strings[0] for a in parser._actions
                if a.option_strings and not (a.help or "").strip(" .")]
        assert not bare, f"vqgan {name}: options without help: {bare}"
    assert len([a for a in command_parser("fit")._actions if a.option_strings]) > 100  # every config field
    # and as printed: the text after each option's name is words, not just "(type: ..., default: ...)"
    lines = _help(capsys, "fit").splitlines()
    bare = []
    for i, line in enumerate(lines):
        if line.startswith("  --"):
            inline = line[24:].strip() if len(line) > 24 and line[22:24] == "  " else ""
            first = inline or (lines[i + 1].strip() if i + 1 < len(lines) else "")
            if first.startswith(("(type:", "(required", "(default:")) or not first:
                bare.append(line.split()[0])
    assert not bare, bare


def test_options_are_the_functions_parameters():
    """`--run-dir` (as documented) and `--run_dir` (as the dotted keys are spelled) are the same option; a
    trailing underscore is dropped (`class_` is `--class`); values are checked against the parameter's type."""
    p = command_parser("reconstruct")
    for spelling in ("--full-size", "--full_size"):
        ns = p.parse_args(["--ckpt", "c", "--input", "i", "--output", "o", spelling, "true"], defaults=False)
        assert ns.full_size is True
    ns = command_parser("sample").parse_args(["--prior", "p", "--output", "o", "--class", "all"], defaults=False)
    assert ns.class_ == "all"
    with pytest.raises(Exception, match="onnx"):
        command_parser("export").parse_args(["--ckpt", "c", "--output", "o", "--format", "pdf"])
    # a parameter named `config` that is not a run config (convert's taming YAML) is an ordinary option
    from vqgan.cli import _kwargs

    ns = command_parser("convert").parse_args(["--input", "i", "--output", "o", "--config", "t.yaml", "--from", "taming"],
                                              defaults=False)
    assert _kwargs(COMMANDS["convert"], ns) == {"input": "i", "output": "o", "config": "t.yaml", "from_": "taming"}


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


def _image_folder(folder: Path, n: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (20 + 3 * i, 24, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def test_validate_a_folder_of_images(run_dir, tmp_path, capsys):
    """`--data DIR` evaluates every image in DIR at the model's resolution: the same as spelling out the folder
    options, and not the checkpoint's own validation data."""
    folder = _image_folder(tmp_path / "photos", 5)
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    assert main(["validate", "--ckpt", ckpt, "--data", str(folder)]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["num_images"] == 5 and got["skipped"] == 0
    spelled = ["--data.kind", "folder", "--data.root", str(folder), "--data.val_root", str(folder), "--data.crop",
               "center", "--data.val_size", "100"]
    assert main(["validate", "--ckpt", ckpt, *spelled]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == got
    assert main(["validate", "--ckpt", ckpt]) == 0
    own = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert own["num_images"] == get_preset("test-taming").data.val_size and own["psnr"] != got["psnr"]
    assert main(["validate", "--ckpt", ckpt, "--data", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


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


@pytest.mark.parametrize(
    "argv, words",
    [
        (["fit", "--preset", "test-taming", "--model.chh", "3"], ["unknown key 'model.chh'", "did you mean 'model.ch'?"]),
        (["fit", "--preset", "test-tamin"], ["unknown preset 'test-tamin'", "did you mean 'test-taming'?", "choose one of"]),
        (["fit", "--max_step", "3"], ["unknown option --max_step", "did you mean --max-steps?"]),
        (["validate", "--ckpt", "c", "--data.kindd", "folder"], ["unknown key 'data.kindd'", "'data.kind'"]),
        (["reconstruct", "--ckptt", "c"], ["did you mean --ckpt?"]),
        (["fitt"], ["unknown command 'fitt'", "did you mean 'fit'?"]),
    ],
)
def test_parse_errors_are_one_line_with_the_closest_match(argv, words, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--run-dir", str(tmp_path / "run")] if argv[0] == "fit" else argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("vqgan"), err
    for w in words:
        assert w in err, err
    assert not (tmp_path / "run").exists()


def test_preset_and_config_apply_where_they_stand(tmp_path):
    """Options after --preset / --config override them; the preset's values fill everything else."""
    from vqgan.config import load_config

    p = command_parser("fit")
    ns = p.parse_args(["--preset", "test-taming", "--model.ch", "12", "--run-dir", "r"], defaults=False)
    from vqgan.config import ExperimentConfig, run_config_from_namespace

    cfg = run_config_from_namespace(ExperimentConfig, ns)
    expected = get_preset("test-taming")
    expected.model.ch = 12
    assert to_dict(cfg) == to_dict(expected)
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("model:\n  ch: 24\ntrain:\n  lr: 0.5\n")
    cfg = load_config(yaml_file, ["--train.lr", "0.25"], preset="test-resnet")
    assert (cfg.model.ch, cfg.model.arch, cfg.train.lr, cfg.name) == (24, "resnet", 0.25, "test-resnet")


def test_print_config_prints_the_resolved_run_and_trains_nothing(tmp_path, capsys):
    import yaml

    run = tmp_path / "run"
    assert main(["fit", "--preset", "test-resnet", "--train.lr", "0.5", "--run-dir", str(run), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = to_dict(get_preset("test-resnet"))
    expected["train"]["lr"] = 0.5
    assert printed == expected and not run.exists()


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
