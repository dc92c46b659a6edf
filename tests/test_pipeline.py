"""`vqgan pipeline`: both stages from one command (seed 002's `make ffhq`), in its DEBUG mode on test presets."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.usefixtures("one_thread_and_own_log_handlers")


def test_pipeline_debug_writes_every_stage(tmp_path, capsys):
    from vqgan.cli import main
    from vqgan.data.tokens import TokenDataset, read_manifest
    from vqgan.viz.samples import image_grid

    run = tmp_path / "run"
    argv = ["pipeline", "--preset", "test-taming", "--loss.perceptual", "none", "--train.debug", "true",
            "--train.logger", "none", "--train.accelerator", "cpu", "--data.builtin_train_crops", "64",
            "--prior-preset", "test-gpt", "--prior.train.max_steps", "3", "--prior.train.logger", "none",
            "--prior.train.accelerator", "cpu", "--run-dir", str(run), "--num-samples", "6", "--ncol", "3",
            "--device", "cpu"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # Stage 1: a checkpoint, and debug mode ran a handful of steps only.
    assert (run / "tokenizer" / "checkpoints" / "last.ckpt").is_file() and out["tokenizer"].endswith("last.ckpt")
    tok_metrics = json.loads((run / "tokenizer" / "metrics.json").read_text())
    assert 1 <= tok_metrics["steps"] <= 10
    # Encoding: complete token shards of (a debug-sized part of) the training set, 8x8 codes of the tokenizer.
    manifest = read_manifest(run / "tokens")
    assert manifest.complete and manifest.num_written == 64 and manifest.token_shape == [8, 8]
    assert sorted(p.name for p in (run / "tokens").glob("shard_*.safetensors"))
    assert len(TokenDataset(run / "tokens")) == 64
    # Stage 2: the prior checkpoint, trained for the overridden number of steps.
    prior_metrics = json.loads((run / "prior" / "metrics.json").read_text())
    assert (run / "prior" / "checkpoints" / "last.ckpt").is_file() and prior_metrics["steps"] == 3
    # Samples: a grid of 6 images of the tokenizer's resolution in 3 columns, and the images themselves.
    with Image.open(run / "samples" / "grid.png") as grid:
        size = grid.size
    expected = image_grid(torch.zeros(6, 3, 16, 16), 3)
    scale = 2  # small images are upscaled in the grid
    assert size == (expected.shape[-1] * scale, expected.shape[-2] * scale)
    assert len(list((run / "samples" / "images").glob("*.png"))) == 6
    assert json.loads((run / "pipeline.json").read_text())["grid"] == str(run / "samples" / "grid.png")

    # The same command again finds every stage done and only samples again.
    assert main(argv) == 0
    assert json.loads((run / "prior" / "metrics.json").read_text()) == prior_metrics


def test_pipeline_names_a_missing_prior_config(tmp_path, capsys):
    from vqgan.cli import main

    rc = main(["pipeline", "--preset", "test-taming", "--prior-config", str(tmp_path / "nope.yaml"),
               "--run-dir", str(tmp_path / "run")])
    assert rc == 2 and "nope.yaml" in capsys.readouterr().err
    assert not (tmp_path / "run" / "tokenizer").exists()  # refused before any training
