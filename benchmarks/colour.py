"""Does the quick-start tokenizer learn colour, or only the palette of its training photos?

The built-in training photos (scikit-image's astronaut, chelsea, coffee, hubble_deep_field, immunohistochemistry,
retina, rocket, stereo_motorcycle) hold almost no green; the validation photos (scikit-learn's china and flower)
do. A model that learned only the training palette reconstructs the validation crops well enough but turns their
greens blue, and does worse still on the same crops with their hue rotated. This script trains the quick-start
config twice with the same steps and seed, without (``before``) and with (``after``) the colour augmentation of
the built-in training crops (``data.builtin_hue``, ``data.builtin_saturation``), and reports the validation PSNR
on the fixed validation grid as it is (``crops``) and with its hue rotated by each of ``--rotations`` turns of the
colour circle (``rotated``: the mean over rotations; ``worst``: the lowest). ``gap`` = crops - rotated: near zero
when the model reconstructs every colour as well as the validation photos' own. ``whole`` and ``tiled`` score the two
whole validation photos (mean PSNR): in one pass, and in blended windows of the training size as
``vqgan reconstruct --full-size`` does (:func:`vqgan.inference.reconstruct_tiled`).

    python benchmarks/colour.py [--steps 600] [--workers 2] [--out DIR]
    python benchmarks/colour.py --ckpt runs/quickstart/checkpoints/last.ckpt   # measure one trained model

The two runs go at the same time, one per core, each with one thread. The last line is
``RESULT before_crops=... before_rotated=... after_crops=... after_rotated=... steps=...`` (dB).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table  # noqa: E402

ROTATIONS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)


def experiment(variant: str, steps: int):
    """The quick-start preset shortened to ``steps`` (its cosine schedule ends there), with its colour
    augmentation (``after``) or without (``before``)."""
    from vqgan.config import DataConfig
    from vqgan.registry import get_preset

    cfg = get_preset("quickstart")
    if variant == "before":
        cfg.data = dataclasses.replace(cfg.data, builtin_hue=0.0, builtin_saturation=0.0)
    elif variant != "after":
        raise ValueError(variant)
    assert isinstance(cfg.data, DataConfig)
    cfg.train = dataclasses.replace(
        cfg.train, max_steps=steps, max_time_minutes=None, val_every_n_steps=steps, logger="none",
        diagnostics_every_n_steps=0,
    )
    return cfg


def measure(ckpt: str | Path, rotations: tuple[float, ...] = ROTATIONS) -> dict[str, float]:
    """Validation PSNR of a checkpoint on the built-in validation grid, as it is and hue-rotated."""
    import torch
    from torch.utils.data import DataLoader

    from vqgan import load_model
    from vqgan.data import build_datasets
    from vqgan.data.transforms import rotate_hue
    from vqgan.inference import reconstruct_tiled
    from vqgan.metrics.reconstruction import psnr

    model, exp = load_model(ckpt)
    model.eval()
    _, val = build_datasets(exp.data)
    images = torch.cat([b["image"] for b in DataLoader(val, batch_size=256)])
    scores = {}
    with torch.no_grad():
        for r in (0.0, *rotations):
            x = images if r == 0 else torch.stack([rotate_hue(im, r) for im in images])
            rec = torch.cat([model(c).reconstruction for c in x.split(128)])
            scores[r] = float(psnr(x, rec.clamp(-1, 1)).mean())
        whole, tiled = [], []
        for photo in whole_photos(exp.data.builtin_scale, model.config.spatial_factor):
            whole.append(float(psnr(photo, model(photo).reconstruction.clamp(-1, 1))))
            tiled.append(float(psnr(photo, reconstruct_tiled(model, photo, model.config.resolution).clamp(-1, 1))))
    rotated = [scores[r] for r in rotations]
    return {"crops": scores[0.0], "rotated": sum(rotated) / len(rotated), "worst": min(rotated),
            "whole": sum(whole) / len(whole), "tiled": sum(tiled) / len(tiled),
            **{f"rot{r:g}": scores[r] for r in rotations}}


def whole_photos(scale: float, factor: int):
    """The built-in validation photos (china, flower) as ``(1, 3, H, W)`` in [-1, 1], scaled as the validation
    crops are and cropped to a multiple of the downsampling ``factor``."""
    from vqgan.data.builtin import load_photo
    from vqgan.data.transforms import to_tensor

    for name in ("china", "flower"):
        img = load_photo(name, scale)
        yield to_tensor(img.crop((0, 0, img.width // factor * factor, img.height // factor * factor)))[None]


def run_one(variant: str, steps: int, out_dir: str) -> dict[str, object]:
    """Train one variant in this (worker) process and measure it."""
    import logging

    import torch

    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    from vqgan.train.fit import fit

    run_dir = Path(out_dir) / variant
    with open(Path(out_dir) / f"{variant}.log", "w") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        fit(experiment(variant, steps), run_dir)
    return {"variant": variant, **measure(run_dir / "checkpoints" / "last.ckpt")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600, help="training steps per variant")
    parser.add_argument("--workers", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--out", type=str, default=None, help="folder for the runs (default: a temporary folder)")
    parser.add_argument("--ckpt", type=str, default=None, help="measure this checkpoint instead of training")
    args = parser.parse_args()

    if args.ckpt:
        m = measure(args.ckpt)
        print(table([{"model": args.ckpt, **m}], title="Validation PSNR (dB), crops and hue-rotated crops"))
        print(f"RESULT crops={m['crops']:.3f} rotated={m['rotated']:.3f} worst={m['worst']:.3f} "
              f"gap={m['crops'] - m['rotated']:.3f} whole={m['whole']:.3f} tiled={m['tiled']:.3f}")
        return
    out = args.out or tempfile.mkdtemp(prefix="vqgan-colour-bench-")
    Path(out).mkdir(parents=True, exist_ok=True)
    print(f"quick-start, {args.steps} steps, before and after the colour augmentation; runs in {out}", flush=True)
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn")) as pool:
        futures = {v: pool.submit(run_one, v, args.steps, out) for v in ("before", "after")}
        rows = {v: f.result() for v, f in futures.items()}
    for r in rows.values():
        r["gap"] = float(r["crops"]) - float(r["rotated"])
    print(table(list(rows.values()), title=f"Validation PSNR (dB) after {args.steps} steps: crops and hue-rotated crops"))
    (Path(out) / "colour.json").write_text(json.dumps(rows, indent=1))
    b, a = rows["before"], rows["after"]
    print(
        f"RESULT before_crops={b['crops']:.3f} before_rotated={b['rotated']:.3f} before_worst={b['worst']:.3f} "
        f"after_crops={a['crops']:.3f} after_rotated={a['rotated']:.3f} after_worst={a['worst']:.3f} "
        f"before_tiled={b['tiled']:.3f} after_whole={a['whole']:.3f} after_tiled={a['tiled']:.3f} steps={args.steps}"
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
