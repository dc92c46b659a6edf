"""Bad data: a folder of deliberately broken and unusual image files, generated here, run through the pipeline.

Readable files (grayscale, RGBA, palette with transparency, 16-bit, float, CMYK, 1-bit, tiny, wrong extension,
EXIF-rotated) are converted with the right values; unreadable ones (zero bytes, truncated, random bytes, text,
corrupt pixel data, decompression bomb, 1 pixel) are skipped with a warning and counted in the training logs and
``metrics.json``; an empty, missing or entirely unreadable folder stops before training with a clear message.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vqgan.config import DataConfig
from vqgan.data import EmptyDatasetError, ImageFolder, build_datasets, collate_skip
from vqgan.data.transforms import to_mode

# One thread, and vqgan log handlers restored after each test (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread_and_own_log_handlers")

RES = 16


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png() -> bytes:
    """A valid 60-byte PNG whose header claims 100000 x 100000 pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00\x00")
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def _gradient(w: int = 24, h: int = 20) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (w + h - 2)], -1).astype(np.uint8)


def make_readable(d: Path) -> dict[str, Path]:
    """One file per kind of unusual but valid image."""
    d.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(_gradient())
    jpeg = io.BytesIO()
    rgb.save(jpeg, format="JPEG", quality=90)
    files = {
        "rgb_jpeg": _save(rgb, d / "rgb.jpg", quality=90),
        "grayscale": _save(rgb.convert("L"), d / "gray.png"),
        "rgba_transparent": _save(Image.new("RGBA", (20, 20), (255, 0, 0, 0)), d / "rgba.png"),
        "gray_alpha": _save(Image.new("LA", (20, 20), (0, 0)), d / "la.png"),
        "16bit": _save(Image.fromarray(np.full((20, 20), 65535, np.uint16)), d / "bits16.png"),
        "float_tiff": _save(Image.fromarray(np.linspace(-3, 5, 400, dtype=np.float32).reshape(20, 20)), d / "f.tif"),
        "cmyk": _save(Image.new("CMYK", (20, 20), (255, 0, 0, 0)), d / "cmyk.jpg", quality=100),
        "bilevel": _save(Image.new("1", (20, 20), 1), d / "bw.bmp"),
        "tiny_3x2": _save(Image.new("RGB", (3, 2), (0, 0, 255)), d / "tiny.png"),
        "png_named_jpg": _save(rgb, d / "actually_png.jpg", format="PNG"),
    }
    pal = Image.new("P", (20, 20), 0)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.info["transparency"] = 0
    files["palette_transparent"] = _save(pal, d / "palette.png", transparency=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    files["exif_rotated"] = _save(Image.new("RGB", (32, 20), (0, 255, 0)), d / "exif.jpg", exif=exif.tobytes())
    return files


def make_unreadable(d: Path) -> dict[str, Path]:
    """One file per kind of unreadable input."""
    d.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(_gradient(64, 64)).save(buf, format="JPEG", quality=95)
    jpeg = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    png = bytearray(buf.getvalue())
    idat = png.find(b"IDAT")
    png[idat + 40 : idat + 80] = bytes(40)  # corrupt compressed pixel data (and its CRC no longer matches)
    files = {
        "zero_bytes": d / "empty.png",
        "truncated_jpeg": d / "truncated.jpg",
        "random_bytes": d / "noise.jpg",
        "text_as_png": d / "notes.png",
        "corrupt_pixels": d / "corrupt.png",
        "decompression_bomb": d / "bomb.png",
        "one_pixel": d / "dot.png",
    }
    files["zero_bytes"].write_bytes(b"")
    files["truncated_jpeg"].write_bytes(jpeg[: len(jpeg) // 2])
    files["random_bytes"].write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    files["text_as_png"].write_text("this is not an image\n")
    files["corrupt_pixels"].write_bytes(bytes(png))
    files["decompression_bomb"].write_bytes(_bomb_png())
    Image.new("RGB", (1, 1)).save(files["one_pixel"])
    (d / "folder.png").mkdir()  # a directory with an image name is not a file: never listed
    return files


def test_readable_kinds_are_converted_with_the_right_values(tmp_path):
    files = make_readable(tmp_path)
    for kind, path in files.items():
        for channels in (3, 1):
            item = ImageFolder([path], RES, channels=channels, probe=0)[0]
            assert item is not None, kind
            x = item["image"]
            assert x.shape == (channels, RES, RES), kind
            assert x.dtype == torch.float32 and torch.isfinite(x).all() and x.min() >= -1 and x.max() <= 1, kind
    img = lambda k, c=3: ImageFolder([files[k]], RES, channels=c, probe=0)[0]["image"]  # noqa: E731
    # Transparent pixels are composited over white, not shown as their (red / black) colour.
    assert torch.allclose(img("rgba_transparent"), torch.ones(3, RES, RES))
    assert torch.allclose(img("gray_alpha", 1), torch.ones(1, RES, RES))
    assert torch.allclose(img("palette_transparent"), torch.ones(3, RES, RES))
    # 16-bit full scale is white (rescaled from 65535, not clipped from 255 or wrapped).
    assert torch.allclose(img("16bit", 1), torch.ones(1, RES, RES))
    # CMYK pure cyan is RGB (0, 255, 255) (JPEG rounding: within 2 levels).
    assert torch.allclose(img("cmyk")[:, 8, 8], torch.tensor([-1.0, 1.0, 1.0]), atol=4 / 127.5)
    # Float images are min-max scaled to the full range.
    f = to_mode(Image.open(files["float_tiff"]), 1)
    assert np.asarray(f).min() == 0 and np.asarray(f).max() == 255
    # A tiny image is upscaled to the crop (blue everywhere).
    assert torch.allclose(img("tiny_3x2"), torch.tensor([-1.0, -1.0, 1.0])[:, None, None].expand(3, RES, RES))
    # EXIF orientation is applied: a 32x20 landscape photo stored rotated comes out portrait (20 wide, 32 high).
    from vqgan.data.images import load_image

    assert load_image(files["exif_rotated"]).size == (20, 32)


def test_unreadable_kinds_are_skipped_with_a_warning(tmp_path, caplog):
    files = make_unreadable(tmp_path)
    ds = ImageFolder(list(files.values()), RES, probe=0)
    with caplog.at_level(logging.WARNING, logger="vqgan.data.images"):
        items = [ds[i] for i in range(len(ds))]
    assert items == [None] * len(files)
    for path in files.values():
        assert any(str(path) in r.getMessage() for r in caplog.records), path
    assert "folder.png" not in [p.name for p in ImageFolder(tmp_path, RES, probe=0).files]


def test_mixed_folder_through_the_loader_counts_skipped_items(tmp_path):
    good = make_readable(tmp_path / "good")
    bad = make_unreadable(tmp_path / "bad")
    ds = ImageFolder(tmp_path, RES, random_crop=True, flip=True)
    assert len(ds) == len(good) + len(bad)  # the directory named folder.png is not listed
    loader = DataLoader(ds, batch_size=4, collate_fn=collate_skip)
    images, skipped = 0, 0
    for batch in loader:
        skipped += int(batch["skipped"])
        images += batch["image"].shape[0] if "image" in batch else 0
    assert images == len(good) and skipped == len(bad)
    # Augmentations are a function of (seed, index): the same item twice, a new crop for the next epoch's index.
    k, n = ds.files.index(good["rgb_jpeg"]), len(ds)
    assert torch.equal(ds[k]["image"], ds[k]["image"])
    epochs = [ds[k + e * n]["image"] for e in range(6)]
    assert any(not torch.equal(epochs[0], x) for x in epochs[1:])


def test_empty_missing_or_unreadable_folder_stops_before_training(tmp_path):
    from vqgan.registry import get_preset
    from vqgan.train import fit

    (tmp_path / "empty").mkdir()
    make_unreadable(tmp_path / "broken")
    cases = {
        "empty": "no images found under",
        "missing": "does not exist",
        "broken": "can be read",
    }
    for name, message in cases.items():
        cfg = get_preset("test-resnet")
        cfg.data = DataConfig(kind="folder", root=str(tmp_path / name), resolution=RES, batch_size=2)
        with pytest.raises(EmptyDatasetError, match=message):
            build_datasets(cfg.data)
        run = tmp_path / f"run_{name}"
        with pytest.raises(EmptyDatasetError, match=message):
            fit(cfg, run)
        assert not (run / "checkpoints").exists()  # nothing was trained


def test_cli_reports_an_empty_folder_with_exit_code_2(tmp_path, capsys):
    from vqgan.cli import main

    (tmp_path / "empty").mkdir()
    rc = main(["fit", "--preset", "test-resnet", "--data.kind", "folder", "--data.root", str(tmp_path / "empty"),
               "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "no images found under" in err and "Traceback" not in err


def test_skipped_items_reach_the_logs_and_metrics_json(tmp_path, caplog):
    """One training step over every training file and one validation: the count is exact."""
    from vqgan.registry import get_preset
    from vqgan.train import fit

    make_readable(tmp_path / "data" / "good")
    make_unreadable(tmp_path / "data" / "bad")
    val = tmp_path / "val"
    for _, path in [*make_readable(tmp_path / "v1").items()][:2] + [*make_unreadable(tmp_path / "v2").items()][:2]:
        path.rename(val.mkdir(exist_ok=True) or val / path.name)
    cfg = get_preset("test-resnet")
    cfg.data = DataConfig(kind="folder", root=str(tmp_path / "data"), val_root=str(val), resolution=RES, val_size=4)
    train_ds, val_ds = build_datasets(cfg.data)
    cfg.data.batch_size = len(train_ds)  # one step sees each training file once
    cfg.train.max_steps = 1
    cfg.train.logger = "tensorboard"
    expected = sum(train_ds[i] is None for i in range(len(train_ds))) + sum(
        val_ds[i] is None for i in range(len(val_ds))
    )
    assert expected > 0
    with caplog.at_level(logging.WARNING, logger="vqgan"):
        metrics = fit(cfg, tmp_path / "run")
    assert metrics["skipped_data"] == expected
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["skipped_data"] == expected
    assert any(f"{expected} unreadable data item(s) were skipped" in r.getMessage() for r in caplog.records)
    assert any("skipping unreadable image" in r.getMessage() for r in caplog.records)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "run" / "logs")).Reload()
    assert "train/skipped_data" in acc.Tags()["scalars"]
    assert acc.Scalars("train/skipped_data")[-1].value >= sum(train_ds[i] is None for i in range(len(train_ds)))


def test_unreadable_videos_are_skipped_and_counted(tmp_path, caplog):
    import av

    from vqgan.data.video import VideoClips, VideoRecord

    good = tmp_path / "good.mp4"
    with av.open(str(good), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 32, 24, "yuv420p"
        for i in range(10):
            frame = np.full((24, 32, 3), 20 * i, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    data = good.read_bytes()
    bad = {
        "zero.mp4": b"",
        "header_only.mp4": data[:64],
        "noise.avi": np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "text.mkv": b"not a video\n" * 20,
    }
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
    records = [VideoRecord(good)] + [VideoRecord(tmp_path / n) for n in bad]
    ds = VideoClips(records, resolution=16, frames=4, clip_offset="uniform")
    with caplog.at_level(logging.WARNING):
        batch = collate_skip([ds[i] for i in range(len(ds))])
    assert batch["image"].shape == (1, 3, 4, 16, 16) and int(batch["skipped"]) == len(bad)
    assert all(name in caplog.text for name in bad)


# -- the inference commands: a bad file is skipped and counted, the rest of the folder is written -----------------
@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory) -> Path:
    """A tiny untrained tokenizer in the pretrained folder format (what `--ckpt` also accepts)."""
    from vqgan.registry import create_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tok") / "tokenizer"
    create_model("test-taming").eval().save_pretrained(str(folder))
    return folder


def _write_video(path: Path, frames: int = 6) -> Path:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 32, 24, "yuv420p"
        for i in range(frames):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((24, 32, 3), 30 * i, np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_cli_reconstruct_skips_unreadable_images_and_writes_the_rest(tmp_path, tokenizer_folder, capsys, caplog):
    from vqgan.cli import main

    d = tmp_path / "photos"
    d.mkdir()
    good = [_save(Image.fromarray(_gradient(24 + 4 * i, 20)), d / f"good{i}.png") for i in range(2)]
    bad = make_unreadable(d)
    with caplog.at_level(logging.WARNING):
        rc = main(["reconstruct", "--ckpt", str(tokenizer_folder), "--input", str(d), "--output", str(tmp_path / "out"),
                   "--device", "cpu"])
    captured = capsys.readouterr()
    # Every readable file is reconstructed (the files sort after the bad ones: the run went on past them) ...
    assert {p.name for p in (tmp_path / "out").glob("*_rec.png")} == {f"{p.stem}_rec.png" for p in good}
    assert captured.out.count("PSNR") == len(good)
    # ... each bad one is named in a warning and counted in the summary line, and the exit status says so.
    assert all(str(p) in caplog.text for p in bad.values())
    assert rc == 1
    assert f"skipped {len(bad)} of {len(bad) + len(good)} input file(s)" in captured.err
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("kind", ["truncated_jpeg", "text_as_png", "zero_bytes"])
def test_cli_reconstruct_one_unreadable_image_is_a_one_line_error(tmp_path, tokenizer_folder, capsys, kind):
    from vqgan.cli import main

    path = make_unreadable(tmp_path / "bad")[kind]
    rc = main(["reconstruct", "--ckpt", str(tokenizer_folder), "--input", str(path), "--output", str(tmp_path / "out"),
               "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("vqgan reconstruct: error: cannot read image") and str(path) in err
    assert len(err.splitlines()) == 1


def test_cli_reconstruct_video_skips_broken_videos_and_one_broken_file_is_an_error(tmp_path, tokenizer_folder, capsys):
    from vqgan.cli import main

    d = tmp_path / "videos"
    d.mkdir()
    (d / "a_broken.mp4").write_bytes(b"not a video\n" * 20)
    (d / "b_empty.avi").write_bytes(b"")
    _write_video(d / "c_good.mp4")
    common = ["--ckpt", str(tokenizer_folder), "--output", str(tmp_path / "out"), "--device", "cpu", "--max-frames", "3",
              "--formats", "[gif]"]
    rc = main(["reconstruct-video", "--input", str(d), *common])
    captured = capsys.readouterr()
    written = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
    assert [Path(r["file"]).name for r in written] == ["c_good.mp4"]  # the good video after the broken ones
    assert Path(written[0]["files"]["gif"]).is_file()
    assert rc == 1 and "skipped 2 of 3 input file(s)" in captured.err and "Traceback" not in captured.err
    for cmd in ("reconstruct-video", "reconstruct"):  # a single broken file named on the command line
        rc = main([cmd, "--input", str(d / "a_broken.mp4"), *common[:6]])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith(f"vqgan {cmd}: error: cannot read video") and len(err.splitlines()) == 1
        assert "a_broken.mp4" in err


def test_cli_encode_skips_unreadable_images_and_counts_them(tmp_path, tokenizer_folder, capsys):
    from vqgan.cli import main
    from vqgan.data.tokens import TokenDataset

    d = tmp_path / "photos"
    d.mkdir()
    good = [_save(Image.fromarray(_gradient(24, 20 + 2 * i)), d / f"g{i}.png") for i in range(5)]
    bad = make_unreadable(d)
    val = tmp_path / "val"
    val.mkdir()
    _save(Image.fromarray(_gradient()), val / "v.png")
    rc = main(["encode", "--ckpt", str(tokenizer_folder), "--data.kind", "folder", "--data.root", str(d),
               "--data.val_root", str(val), "--data.resolution", "16", "--output", str(tmp_path / "tokens"),
               "--shard-size", "4", "--batch-size", "2", "--progress", "false", "--device", "cpu"])
    captured = capsys.readouterr()
    assert captured.out, captured.err
    out = json.loads(captured.out.strip().splitlines()[-1])
    total = len(good) + len(bad)
    assert out["complete"] and (out["items"], out["skipped"]) == (len(good), len(bad))
    assert rc == 1 and f"skipped {len(bad)} of {total}" in captured.err
    tokens = TokenDataset(tmp_path / "tokens")
    assert len(tokens) == out["items"] and list(tokens[0]["tokens"].shape) == out["token_shape"]
