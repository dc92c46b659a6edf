"""README.md as a test: every ```python block and every ```bash block is run, shrunk, in README order, in one
folder that stands for the user's working directory, so that the documentation cannot drift from the code.

- Python blocks run in order in one namespace.
- Bash blocks: every `vqgan ...` command (also after `torchrun ... -m vqgan.cli` or `srun .venv/bin/vqgan`) runs
  in-process with tiny overrides appended (a few steps, a few images). A command that names an input the folder
  does not hold (a dataset, weights, a checkpoint of a run the README does not make) is parsed with the real
  parser instead: option names and values are checked, nothing runs. Benchmark scripts are checked to exist and to
  declare the options used.
- A block preceded by ``<!-- readme-test: skip (REASON) -->`` is not run; ``<!-- readme-test: parse-only (REASON) -->``
  parses its commands without running them. The reason is printed.

The folder starts with what a user brings: the configs, a folder of photos, a video, a taming tokenizer (a tiny
stand-in) and a smoke-VQGAN run with its 4-channel projection (tiny stand-ins too); `runs/quickstart` (what
`make demo` writes) is the run the README itself trains in `runs/qs`.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

pytestmark = pytest.mark.usefixtures("one_thread_and_own_log_handlers")


@dataclass
class Block:
    lang: str
    line: int
    code: str
    mode: str = "run"  # run, parse-only, skip
    reason: str = ""


def readme_blocks(text: str) -> list[Block]:
    """The python and bash/console blocks of the README, with the mode of the marker comment before them."""
    blocks: list[Block] = []
    marker = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"<!-- readme-test: (skip|parse-only) \((.*)\) -->", lines[i].strip())
        if m:
            marker = m.groups()
        fence = re.match(r"```(\w*)", lines[i])
        if fence:
            lang, start = fence.group(1), i + 1
            i += 1
            while not lines[i].startswith("```"):
                i += 1
            if lang in ("python", "bash", "console", "sh"):
                b = Block("python" if lang == "python" else "bash", start, "\n".join(lines[start:i]))
                if marker:
                    b.mode, b.reason = marker
                blocks.append(b)
            marker = None
        i += 1
    return blocks


BLOCKS = readme_blocks(README.read_text())

# Appended to each running command (later options win): a few steps, a few images, no logger, CPU.
SHRINK = {
    "fit": ["--max-steps", "2", "--data.builtin_train_crops", "16", "--data.val_size", "4", "--data.batch_size", "4",
            "--train.val_every_n_steps", "2", "--train.logger", "none", "--train.accelerator", "cpu",
            "--train.max_time_minutes", "null", "--train.diagnostics_every_n_steps", "1"],
    "fit-prior": ["--max-steps", "2", "--train.val_every_n_steps", "2", "--train.logger", "none",
                  "--train.accelerator", "cpu", "--data.batch_size", "8", "--train.num_samples", "2"],
    "encode": ["--data.builtin_train_crops", "32", "--progress", "false", "--device", "cpu"],
    "sample": ["--num", "4", "--ncol", "2", "--device", "cpu"],
    "validate": ["--data.val_size", "8", "--device", "cpu"],
    "reconstruct": ["--device", "cpu"],
    "reconstruct-video": ["--max-frames", "3", "--device", "cpu"],
    "evaluate": ["--max-images", "8", "--progress", "false", "--device", "cpu"],
    "visualize": ["--num-images", "8", "--tsne-points", "16", "--device", "cpu"],
    "report": ["--device", "cpu"],
    "fit-projection": ["--steps", "2", "--data.resolution", "16", "--data.builtin_train_crops", "8",
                       "--data.val_size", "4", "--device", "cpu"],
    "project-latents": ["--data.resolution", "16", "--data.builtin_train_crops", "8", "--max-items", "4",
                        "--device", "cpu"],
}
# Options whose value is an input that must exist for the command to run.
INPUTS = ("--config", "--ckpt", "--input", "--data.root", "--data.val_root", "--prior", "--tokens",
          "--loss.backbone_weights", "--lpips-weights", "--fid-weights", "--projection", "--tokenizer")


def _video(path: Path) -> None:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for i in range(4):
            frame = np.full((32, 32, 3), 40 * i, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread):
    """The user's working directory (see the module docstring); the tests run with it as the current folder."""
    from vqgan.interop.projection import fit_projection, save_projection
    from vqgan.models.io import load_model
    from vqgan.registry import get_preset
    from vqgan.train import fit

    w = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "configs", w / "configs")
    shutil.copy(w / "configs" / "quickstart.yaml", w / "configs" / "my_run.yaml")
    (w / "benchmarks").symlink_to(ROOT / "benchmarks")
    (w / "photos").mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        Image.fromarray(rng.integers(0, 255, (40 + 8 * k, 48, 3), dtype=np.uint8)).save(w / "photos" / f"p{k}.png")
    _video(w / "clip.mp4")
    (w / "runs").mkdir()
    (w / "runs" / "quickstart").symlink_to("qs")  # `make demo`'s run: the one the README trains in runs/qs
    # Stand-ins for what the user brings: a smoke-VQGAN run with its projection, a taming tokenizer.
    cfg = get_preset("test-taming")
    cfg.loss.perceptual = "none"
    cfg.train.max_steps, cfg.train.logger, cfg.train.accelerator = 1, "none", "cpu"
    cfg.data.builtin_train_crops, cfg.data.val_size = 4, 4
    smoke = w / "runs" / "smoke-vqgan"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        fit(cfg, smoke)
    shutil.copy(smoke / "checkpoints" / "last.ckpt", smoke / "checkpoints" / "best.ckpt")
    model, _ = load_model(smoke / "checkpoints" / "best.ckpt")
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    p = fit_projection(model, [images], out_channels=4, steps=1)
    save_projection(p.projection, smoke / "projection-4ch", summary={"steps": 1})
    model.save_pretrained(str(w / "tokenizers" / "taming-f16-1024"))
    cwd = os.getcwd()
    os.chdir(w)
    yield {"dir": w, "namespace": {}}
    os.chdir(cwd)


def commands(code: str) -> list[list[str]]:
    """Shell lines of a bash block as argument lists (continuations joined, comments and blank lines dropped)."""
    joined = re.sub(r"\\\n\s*", " ", code)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = re.sub(r"\$(\w+)", lambda m: {"NODE_RANK": "0"}.get(m.group(1), "localhost"), line)
        out.append(shlex.split(line, comments=True))
    return out


def vqgan_argv(args: list[str]) -> list[str] | None:
    """The arguments after the `vqgan` program (`vqgan`, `.venv/bin/vqgan`, `-m vqgan.cli`), else None."""
    for i, a in enumerate(args):
        if a == "vqgan" or a.endswith("/vqgan"):
            return args[i + 1 :]
        if a == "-m" and i + 1 < len(args) and args[i + 1] == "vqgan.cli":
            return args[i + 2 :]
    return None


def missing_inputs(argv: list[str]) -> list[str]:
    missing = [v for k, v in zip(argv, argv[1:], strict=False) if k in INPUTS and not Path(v).exists()]
    if "--resume" in argv and "--run-dir" in argv:
        run = argv[argv.index("--run-dir") + 1]
        if not (Path(run) / "checkpoints").is_dir():
            missing.append(f"{run} (a run to resume)")
    return missing


def parse(argv: list[str]) -> None:
    """Parse ``argv`` with the real parser, as `vqgan` does before running anything."""
    from vqgan.cli import build_parser
    from vqgan.config import EXPERIMENT_SECTIONS
    from vqgan.config_checks import unknown_cli_keys

    if argv[:1] == ["fit"]:
        problem = unknown_cli_keys(argv[1:], tuple(EXPERIMENT_SECTIONS))
        assert not problem, problem
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            build_parser(argv).parse_args(argv)
    except SystemExit as e:
        raise AssertionError(f"`vqgan {' '.join(argv)}` does not parse: {err.getvalue()[-1500:]}") from e


def run(argv: list[str]) -> None:
    from vqgan.cli import main

    argv = [a.replace("/tmp/", "tmp/") for a in argv]  # keep runs inside the test folder
    full = argv + SHRINK.get(argv[0], [])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(full)
    assert rc == 0, f"`vqgan {' '.join(full)}` exited {rc}:\n{err.getvalue()[-3000:]}"


def check_benchmark(args: list[str]) -> None:
    script = next(a for a in args if a.endswith(".py"))
    source = (ROOT / script).read_text()
    assert (ROOT / script).is_file() and "RESULT" in source
    for opt in (a for a in args[args.index(script) + 1 :] if a.startswith("--")):
        assert f'"{opt}"' in source, f"{script} has no option {opt}"


@pytest.mark.parametrize("block", BLOCKS, ids=[f"L{b.line}-{b.lang}" for b in BLOCKS])
def test_readme_block(block: Block, world, capsys):
    if block.mode == "skip":
        pytest.skip(f"README line {block.line}: {block.reason}")
    if block.lang == "python":
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(block.code, f"README.md:{block.line}", "exec"), world["namespace"])  # noqa: S102
        return
    notes = []
    for args in commands(block.code):
        argv = vqgan_argv(args)
        if argv is None:
            assert any(a.endswith(".py") and a.startswith("benchmarks/") for a in args), f"unknown command {args}"
            check_benchmark(args)
            notes.append(f"checked {' '.join(args[1:3])} exists and declares its options")
            continue
        missing = missing_inputs(argv)
        if block.mode == "parse-only" or missing:
            parse(argv)
            why = block.reason if block.mode == "parse-only" else f"needs {', '.join(missing)}"
            notes.append(f"parsed only ({why}): vqgan {' '.join(argv[:1])}")
        else:
            run(argv)
            notes.append(f"ran shrunk: vqgan {' '.join(argv[:1])}")
    with capsys.disabled():
        print(f"\nREADME line {block.line}: " + "; ".join(notes))
