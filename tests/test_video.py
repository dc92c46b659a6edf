"""Video data (UCF101 layout, video folders, clip sampling, frames/patches/chunks, unreadable files), the causal
3D tokenizer, training both tokenizers for two steps, and video reconstruction output."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vqgan.config import DataConfig, ExperimentConfig, LossConfig, ModelConfig, QuantizerConfig, load_config
from vqgan.data import build_datasets, collate_skip
from vqgan.data.video import (
    Exploded,
    VideoChunks,
    VideoClips,
    clip_indices,
    decode_frames,
    explode,
    list_videos,
    ucf101_records,
)
from vqgan.models import PatchDiscriminator, VideoVQModel, build_model
from vqgan.registry import get_preset

N_FRAMES, FPS, H, W = 12, 10, 24, 32


def _level(i: int) -> int:
    """The grey level that encodes frame ``i`` (so tests can tell which frames a clip holds)."""
    return 10 + 20 * i


def write_video(path: Path, codec: str, shift: int = 0) -> Path:
    """A real video written with PyAV: frame ``i`` is uniform grey ``_level(i)`` with a red square moving right."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=FPS)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        if codec == "libx264":
            s.options = {"crf": "10"}
        for i in range(N_FRAMES):
            f = np.full((H, W, 3), _level(i), np.uint8)
            f[4:12, 2 * i + shift : 2 * i + shift + 8] = (255, 0, 0)
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def ucf(tmp_path_factory) -> Path:
    """A UCF101-shaped tree: ``UCF-101/<Class>/v_*.{avi,mp4}``, ``ucfTrainTestlist/{classInd,trainlist01,testlist01}.txt``,
    with one truncated video in the training list and one listed video missing on disk."""
    base = tmp_path_factory.mktemp("ucf")
    root = base / "UCF-101"
    write_video(root / "Archery" / "v_Archery_g01_c01.avi", "mpeg4")
    write_video(root / "Archery" / "v_Archery_g02_c01.mp4", "libx264", shift=1)
    write_video(root / "Bowling" / "v_Bowling_g01_c01.mp4", "libx264", shift=2)
    write_video(root / "Bowling" / "v_Bowling_g02_c01.avi", "mpeg4", shift=3)
    good = write_video(root / "Bowling" / "v_Bowling_g03_c01.mp4", "libx264")
    data = good.read_bytes()
    (root / "Bowling" / "v_Bowling_g03_c01.mp4").write_bytes(data[: len(data) // 2])  # truncated
    ann = base / "ucfTrainTestlist"
    ann.mkdir()
    (ann / "classInd.txt").write_text("1 Archery\n2 Bowling\n")
    (ann / "trainlist01.txt").write_text(
        "Archery/v_Archery_g01_c01.avi 1\nBowling/v_Bowling_g01_c01.mp4 2\nBowling/v_Bowling_g03_c01.mp4 2\n"
        "Bowling/v_Bowling_g09_c01.avi 2\n"
    )
    (ann / "testlist01.txt").write_text("Archery/v_Archery_g02_c01.mp4\nBowling/v_Bowling_g02_c01.avi\n")
    return root


def _frame_numbers(clip: torch.Tensor) -> list[int]:
    """Recover frame numbers from the grey level of the lower half of each frame of a (C, T, H, W) clip."""
    grey = (clip[:, :, clip.shape[2] // 2 + 2 :].mean(dim=(0, 2, 3)) + 1) * 127.5
    return [int(round((g - 10) / 20)) for g in grey.tolist()]


# -- data ---------------------------------------------------------------------------------------------------------
def test_ucf101_splits_labels_and_missing_files(ucf, caplog):
    with caplog.at_level(logging.WARNING, logger="vqgan"):
        train, classes = ucf101_records(ucf, split=1, train=True)
    assert classes == ["Archery", "Bowling"]
    assert [(r.path.name, r.label) for r in train] == [
        ("v_Archery_g01_c01.avi", 0), ("v_Bowling_g01_c01.mp4", 1), ("v_Bowling_g03_c01.mp4", 1),
    ]
    assert "1 videos listed in trainlist01.txt are missing" in caplog.text
    test, _ = ucf101_records(ucf, split=1, train=False)
    assert [(r.path.name, r.label) for r in test] == [("v_Archery_g02_c01.mp4", 0), ("v_Bowling_g02_c01.avi", 1)]
    with pytest.raises(Exception, match="testlist02"):
        ucf101_records(ucf, split=2, train=False)


def test_clip_sampling_stride_fps_and_offsets(ucf):
    rec = ucf101_records(ucf, 1, train=False)[0]
    # Uniform offset, stride 2: 4 frames spanning 6 source frames, centred in the 12-frame video.
    ds = VideoClips(rec, resolution=16, frames=4, frame_stride=2, clip_offset="uniform")
    item = ds[0]
    assert item["image"].shape == (3, 4, 16, 16) and int(item["label"]) == 0
    assert _frame_numbers(item["image"]) == [2, 4, 6, 8] == clip_indices(12, FPS, 4, 2, None, 0.5)
    # Half the frame rate: consecutive clip frames are two source frames apart; three evenly spread clips.
    ds = VideoClips(rec, resolution=16, frames=3, fps=FPS / 2, clip_offset="uniform", clips_per_video=3)
    assert len(ds) == 6
    assert [_frame_numbers(ds[k]["image"]) for k in range(3)] == [[0, 2, 4], [4, 6, 8], [7, 9, 11]]
    # Random offsets stay inside the video and differ between draws.
    torch.manual_seed(0)
    ds = VideoClips(rec, resolution=16, frames=3, clip_offset="random")
    starts = {_frame_numbers(ds[0]["image"])[0] for _ in range(6)}
    assert len(starts) > 1 and all(0 <= s <= 9 for s in starts)
    # A clip longer than the video repeats its last frame rather than failing.
    arr, fps = decode_frames(rec[0].path, [10, 11, 12, 13])
    assert fps == FPS and arr.shape[0] == 4 and np.array_equal(arr[2], arr[1]) and np.array_equal(arr[3], arr[1])


def test_truncated_video_is_skipped_and_counted(ucf, caplog):
    cfg = DataConfig(kind="ucf101", root=str(ucf), resolution=16, frames=3, batch_size=4, crop="center", flip=False)
    train, val = build_datasets(cfg, seed=0)
    assert len(train) == 3 and len(val) == 2
    assert train.classes == val.classes == ["Archery", "Bowling"]  # classInd.txt's names, kept for `vqgan encode`
    with caplog.at_level(logging.WARNING, logger="vqgan"):
        batches = list(DataLoader(train, batch_size=4, collate_fn=collate_skip))
    assert len(batches) == 1
    assert int(batches[0]["skipped"]) == 1
    assert batches[0]["image"].shape == (2, 3, 3, 16, 16)
    assert batches[0]["label"].tolist() == [0, 1]
    assert "v_Bowling_g03_c01.mp4" in caplog.text and "skipping unreadable video" in caplog.text


def test_video_folder_labels_from_subfolders(ucf):
    records = list_videos(ucf)
    assert {(r.path.parent.name, r.label) for r in records} == {("Archery", 0), ("Bowling", 1)}
    train, val = build_datasets(DataConfig(kind="video_folder", root=str(ucf), resolution=16, frames=2), seed=0)
    assert len(train) + len(val) == len(records) and len(val) == 1


def test_frames_as_images_and_patches(ucf):
    rec = ucf101_records(ucf, 1, train=False)[0]
    clips = VideoClips(rec, resolution=16, frames=3, clip_offset="uniform")
    frames = Exploded(clips, 3, frames_as_images=True, patch_size=None)
    assert len(frames) == 6 and frames[4]["image"].shape == (3, 16, 16)
    assert torch.equal(frames[4]["image"], clips[1]["image"][:, 1]) and int(frames[4]["label"]) == 1
    tiles = explode(clips[0], frames_as_images=True, patch_size=8)
    assert len(tiles) == 3 * 4 and tiles[0]["image"].shape == (3, 8, 8)
    # The four tiles of frame 0 put back together are the frame.
    top = torch.cat([tiles[0]["image"], tiles[1]["image"]], -1)
    bottom = torch.cat([tiles[2]["image"], tiles[3]["image"]], -1)
    assert torch.equal(torch.cat([top, bottom], -2), clips[0]["image"][:, 0])
    cfg = DataConfig(kind="ucf101", root=str(ucf), resolution=16, frames=2, frames_as_images=True, patch_size=8)
    train, val = build_datasets(cfg, 0)
    assert len(train) == 3 * 2 * 4 and val[0]["image"].shape == (3, 8, 8)


def test_video_chunks_visit_each_chunk_epochs_per_chunk_times(ucf):
    rec = ucf101_records(ucf, 1, train=False)[0] * 2  # 4 readable videos
    clips = VideoClips(rec, resolution=16, frames=2, clip_offset="uniform")
    chunks = VideoChunks(clips, videos_per_chunk=2, epochs_per_chunk=3, frames_as_images=True, seed=0)
    items = list(chunks)
    assert len(items) == len(chunks) == 4 * 2 * 3
    # The first chunk (2 videos -> 4 frames) is seen 3 times before any frame of the second chunk.
    first = items[:12]
    keys = lambda its: sorted((int(it["label"]), _frame_numbers(it["image"][:, None])[0]) for it in its)  # noqa: E731
    assert keys(first[:4]) == keys(first[4:8]) == keys(first[8:12])
    loader = DataLoader(chunks, batch_size=5, collate_fn=collate_skip)
    assert sum(b["image"].shape[0] for b in loader) == 24


# -- the 3D tokenizer ---------------------------------------------------------------------------------------------
def _tiny_video_model(temporal_downsample: int = 2) -> VideoVQModel:
    torch.manual_seed(0)
    cfg = ModelConfig(
        arch="video3d", in_channels=1, resolution=16, ch=8, ch_mult=[1, 2, 2], num_res_blocks=1, z_channels=8,
        embed_dim=8, num_groups=4, attn_resolutions=[8], temporal_downsample=temporal_downsample,
        quantizer=QuantizerConfig(kind="vq", codebook_size=16, kmeans_init=False, dead_code_threshold=0.0),
    )
    return build_model(cfg).eval()


@torch.no_grad()
def test_causal_encoder_future_frames_never_change_past_codes():
    model = _tiny_video_model(temporal_downsample=2)  # s = 4: 9 frames -> 3 latent frames
    s = model.time_factor
    x = torch.rand(2, 1, 9, 16, 16) * 2 - 1
    ref = model.encode(x)
    assert ref.indices.shape == (2, 3, 4, 4)
    for t in range(1, 9):
        y = x.clone()
        y[:, :, t:] = torch.rand_like(y[:, :, t:]) * 2 - 1
        out = model.encode(y)
        past = [j for j in range(3) if j * s < t]  # latent frame j sees input frames <= j * s
        for j in range(3):
            same = torch.equal(out.latents[:, :, j], ref.latents[:, :, j])
            assert same == (j in past), (t, j)
        assert torch.equal(out.indices[:, past], ref.indices[:, past])
    # The first frame is encoded on its own: a one-frame clip gives the first latent frame.
    torch.testing.assert_close(model.encode(x[:, :, :1]).latents, ref.latents[:, :, :1], rtol=0, atol=1e-6)


@torch.no_grad()
def test_video_model_round_trip_and_shapes():
    model = _tiny_video_model(temporal_downsample=1)
    x = torch.rand(1, 1, 5, 16, 16) * 2 - 1
    out = model(x)
    assert out.reconstruction.shape == x.shape and out.latents.shape == (1, 8, 3, 4, 4)
    torch.testing.assert_close(model.decode_codes(model.encode(x).indices), out.reconstruction, rtol=0, atol=1e-5)
    assert model(x[:, :, 0]).reconstruction.shape == (1, 1, 16, 16)  # images are one-frame clips
    with pytest.raises(ValueError, match="1 \\+ k \\* 2"):
        model(torch.zeros(1, 1, 4, 16, 16))


def test_3d_and_framewise_discriminators_on_clips():
    d3 = PatchDiscriminator(get_preset("test-video3d").discriminator, 1)
    assert d3(torch.zeros(2, 1, 5, 16, 16)).shape[:3] == (2, 1, 2)  # time: 5 -> 3 -> 2 -> 2 -> 2
    d2 = PatchDiscriminator(get_preset("test-taming").discriminator, 3)
    x = torch.randn(2, 3, 4, 16, 16)
    out = d2.eval()(x)
    torch.testing.assert_close(out[4:8], d2(x[1].transpose(0, 1)))


def test_config_checks_clip_length():
    cfg = get_preset("test-video3d")
    cfg.data.frames = 4
    with pytest.raises(Exception, match="1 \\+ k \\* 2"):
        cfg.validate()


# -- training and reconstruction ----------------------------------------------------------------------------------
def _fast(cfg: ExperimentConfig) -> ExperimentConfig:
    cfg.train.max_steps, cfg.train.val_every_n_steps, cfg.train.logger = 2, 2, "none"
    cfg.train.diagnostics_every_n_steps = 0
    cfg.data.val_size = 2
    return cfg


def test_train_frame_and_3d_tokenizers_two_steps_and_reconstruct(ucf, tmp_path):
    from vqgan.cli import main
    from vqgan.train import fit

    # Frame tokenizer: the 2D model on UCF101 frames as independent images, loaded in chunks of videos (seed 000's
    # setup, tiny).
    cfg = _fast(get_preset("test-taming"))
    cfg.loss = LossConfig(perceptual="none", disc_start=1, disc_weight=0.5)
    cfg.data = DataConfig(
        kind="ucf101", root=str(ucf), resolution=16, frames=2, frames_as_images=True, batch_size=2, val_size=2,
        videos_per_chunk=2, epochs_per_chunk=2,
    )
    m2d = fit(cfg, tmp_path / "frames")
    assert m2d["steps"] == 2 and np.isfinite(m2d["psnr"])
    # 3D tokenizer on grey clips of the same videos, with the 3D PatchGAN from step 1.
    cfg = _fast(get_preset("test-video3d"))
    cfg.data = DataConfig(kind="ucf101", root=str(ucf), resolution=16, channels=1, frames=5, batch_size=2, val_size=2)
    m3d = fit(cfg, tmp_path / "video3d")
    assert m3d["steps"] == 2 and np.isfinite(m3d["psnr"])
    # Reconstruct a video file with each: side-by-side MP4 and GIF, frames, temporal figure.
    video = ucf / "Archery" / "v_Archery_g02_c01.mp4"
    for run, frames in (("frames", 12), ("video3d", 11)):
        out = tmp_path / f"rec_{run}"
        rc = main(["reconstruct", "--ckpt", str(tmp_path / run / "checkpoints" / "last.ckpt"), "--input", str(video), "--output", str(out)])
        assert rc == 0
        arr, _ = decode_frames(out / "v_Archery_g02_c01_compare.mp4")
        assert arr.shape == (frames, 6 * 16, 6 * (2 * 16 + 2), 3)  # enlarged 6x to about 96 pixels
        from PIL import Image

        with Image.open(out / "v_Archery_g02_c01_compare.gif") as gif:
            assert gif.n_frames == frames
        assert (out / "v_Archery_g02_c01_temporal.png").stat().st_size > 1000


# -- reconstruction output ----------------------------------------------------------------------------------------
def test_write_video_round_trips_through_mp4_and_gif(tmp_path):
    from PIL import Image

    from vqgan.viz.video import write_video

    t = torch.linspace(-0.8, 0.8, 5)
    clip = t.view(1, 5, 1, 1).expand(3, 5, 10, 14).contiguous()  # uniform frames of increasing brightness
    mp4 = write_video(clip, tmp_path / "c.mp4", fps=5)
    arr, fps = decode_frames(mp4)
    assert arr.shape == (5, 10, 14, 3) and fps == 5
    expected = ((t + 1) * 127.5).numpy()
    np.testing.assert_allclose(arr.reshape(5, -1).mean(1), expected, atol=3)
    gif = write_video(clip[:1], tmp_path / "c.gif", fps=5, scale=2)
    with Image.open(gif) as im:
        assert im.n_frames == 5 and im.size == (28, 20)
    with pytest.raises(ValueError, match="suffix"):
        write_video(clip, tmp_path / "c.txt")


def test_per_frame_psnr_and_temporal_consistency():
    from vqgan.metrics.reconstruction import psnr
    from vqgan.viz.video import per_frame_psnr, temporal_consistency

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 6, 8, 8, generator=g) * 1.6 - 0.8
    noisy = x + 0.1 * torch.randn(x.shape, generator=g)
    p = per_frame_psnr(x, noisy)
    assert p.shape == (6,)
    torch.testing.assert_close(p[2], psnr(x[:, 2][None], noisy[:, 2][None])[0])
    # An error that is the same in every frame adds no flicker; independent noise per frame does.
    shifted = x + 0.1
    tc = temporal_consistency(x, shifted)
    assert tc["flicker"].abs().max() < 1e-6
    torch.testing.assert_close(tc["motion_original"], tc["motion_reconstruction"])
    assert temporal_consistency(x, noisy)["flicker"].min() > 0.02


def test_seed000_yaml_matches_its_preset_and_moving_digits_yaml_validates():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    for name, preset in (("ucf101_vqgan", "seed000-ucf101-vqgan"), ("moving_digits_video", "moving-digits-video3d")):
        cfg, ref = load_config(root / f"{name}.yaml"), get_preset(preset)
        ref.name = cfg.name
        assert cfg == ref
    m = get_preset("seed000-ucf101-vqgan").model
    assert (m.ch, m.ch_mult, m.z_channels, m.embed_dim, m.quantizer.codebook_size) == (64, [1, 2, 4, 8], 32, 32, 512)
    load_config(root / "moving_digits_video.yaml").validate()
