"""Untrusted files: checkpoints and weights load with ``weights_only=True`` or from safetensors, so a file that
would execute code when unpickled is refused with a clear error (and the code does not run); YAML configs load
without Python tags; paths from configs never write outside the run folder unless given as absolute paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from vqgan.config import ConfigError, load_config
from vqgan.config_checks import check_plain_name, resolve_output_path
from vqgan.models.io import CheckpointError, load_checkpoint_file, load_model, verify_checkpoint

# One thread, and vqgan log handlers restored after each test (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread_and_own_log_handlers")


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: a stand-in for any code an attacker would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious_checkpoint(path: Path, marker: Path, legacy: bool = False) -> Path:
    state = {"state_dict": {"model.w": torch.zeros(2)}, "global_step": 1, "optimizer_states": [], "loops": {},
             "hyper_parameters": {"config": _Payload(marker)}}
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    return path


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    for legacy in (False, True):
        evil = _malicious_checkpoint(tmp_path / f"evil{int(legacy)}.ckpt", marker, legacy)
        for loader in (load_checkpoint_file, load_model, verify_checkpoint):
            with pytest.raises(CheckpointError) as info:
                loader(evil)
            msg = str(info.value)
            assert str(evil) in msg and ("refusing to load" in msg or "not a torch zip archive" in msg), msg
            assert not marker.exists()
    # Sanity check that the file really is malicious: a plain unpickling runs the payload.
    torch.load(tmp_path / "evil0.ckpt", weights_only=False)
    assert marker.exists()


def test_the_commands_refuse_a_malicious_checkpoint(tmp_path, capsys):
    from vqgan.cli import main

    marker = tmp_path / "pwned"
    evil = _malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    for argv in (
        ["validate", "--ckpt", str(evil)],
        ["reconstruct", "--ckpt", str(evil), "--input", str(tmp_path), "--output", str(tmp_path / "out")],
        ["fit", "--preset", "test-resnet", "--run-dir", str(tmp_path / "run"), "--resume", str(evil)],
    ):
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 1 and "refusing to load" in err and "Traceback" not in err, (argv, err[-1000:])
        assert not marker.exists()


def test_pretrained_weights_are_safetensors_and_backbones_weights_only(tmp_path):
    from vqgan.losses.perceptual import load_backbone_features
    from vqgan.models.pretrained import WEIGHTS_NAME, from_pretrained, save_pretrained
    from vqgan.registry import create_model

    model = create_model("test-resnet")
    folder = save_pretrained(model, tmp_path / "pretrained")
    assert (folder / WEIGHTS_NAME).is_file() and not list(folder.glob("*.ckpt")) and not list(folder.glob("*.pt"))
    loaded = from_pretrained(folder)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True))
    marker = tmp_path / "pwned"
    evil = tmp_path / "vgg16.pth"
    torch.save({"features.0.weight": _Payload(marker)}, evil)
    with pytest.raises(Exception) as info:
        load_backbone_features("vgg", str(evil))
    assert "Weights only load failed" in str(info.value) or "refus" in str(info.value)
    assert not marker.exists()


def test_yaml_configs_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    for text in (
        f"name: !!python/object/apply:os.system ['touch {marker}']\n",
        "model: !!python/name:os.system\n",
        f"name: !!python/object/new:pathlib.Path ['{marker}']\n",
    ):
        path = tmp_path / "evil.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=str(path)):
            load_config(path)
        assert not marker.exists()


def test_relative_config_paths_stay_inside_the_run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert resolve_output_path(run, "samples/x.png") == (run / "samples" / "x.png").resolve()
    assert resolve_output_path(run, "a/../b") == (run / "b").resolve()
    for escape in ("../outside.txt", "samples/../../outside"):
        with pytest.raises(ConfigError, match="would write outside the run folder") as info:
            resolve_output_path(run, escape, key="train.samples_dir")
        assert "train.samples_dir" in str(info.value)
    (run / "link").symlink_to(tmp_path)  # a link inside the run folder that leads out of it
    with pytest.raises(ConfigError, match="outside the run folder"):
        resolve_output_path(run, "link/escaped.txt")
    absolute = tmp_path / "elsewhere" / "file.txt"
    assert resolve_output_path(run, absolute) == absolute  # given as an absolute path by the user: allowed
    for bad in ("../x", "a/b", "a\\b", "..", "", "x\0y"):
        with pytest.raises(ConfigError, match="plain name"):
            check_plain_name(bad)
    check_plain_name("vqgan-f16_1024")


def test_training_writes_only_inside_the_run_folder(tmp_path, monkeypatch):
    """A real run from an empty working folder: everything it writes is under ``run_dir``."""
    from vqgan.registry import get_preset
    from vqgan.train import fit

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    cfg = get_preset("test-resnet")
    cfg.train.max_steps = 1
    before = set(tmp_path.rglob("*"))
    fit(cfg, tmp_path / "run")
    created = set(tmp_path.rglob("*")) - before
    assert created and all(p == tmp_path / "run" or (tmp_path / "run") in p.parents for p in created), sorted(created)
    assert not os.listdir(cwd)
    # Checkpoint files hold plain data only: they load with weights_only=True.
    for ckpt in (tmp_path / "run" / "checkpoints").glob("*.ckpt"):
        verify_checkpoint(ckpt)
