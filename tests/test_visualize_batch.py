"""`vqgan visualize --batch-idx N` (seed 000's ``--batch_idx``): which batch of the evaluation set, or which chunk
of videos for chunked video data, the pictures are drawn from."""

from __future__ import annotations

import pytest
import torch

from vqgan.config import DataConfig

pytestmark = pytest.mark.usefixtures("one_thread_and_own_log_handlers")


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    from vqgan.registry import create_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tok") / "tokenizer"
    create_model("test-taming").eval().save_pretrained(str(folder))
    return folder


def test_visualize_draws_the_chosen_batch(tokenizer_folder, tmp_path, monkeypatch):
    import vqgan.viz.visualize
    from vqgan.cli import main
    from vqgan.data import build_datasets

    seen = []
    monkeypatch.setattr(vqgan.viz.visualize, "visualize_model", lambda model, images, out, **kw: seen.append(images))
    data = ["--data.kind", "builtin", "--data.resolution", "16", "--data.val_size", "16"]
    for idx in (0, 2):
        assert main(["visualize", "--ckpt", str(tokenizer_folder), "--output", str(tmp_path / f"v{idx}"), *data,
                     "--num-images", "5", "--batch-idx", str(idx), "--report", "false", "--device", "cpu"]) == 0
    _, val = build_datasets(DataConfig(kind="builtin", resolution=16, val_size=16))
    expected = torch.stack([val[i]["image"] for i in range(16)])
    assert torch.equal(seen[0], expected[0:5]) and torch.equal(seen[1], expected[10:15])


def test_batch_idx_past_the_end_is_a_clear_error(tokenizer_folder, tmp_path, capsys):
    from vqgan.cli import main

    rc = main(["visualize", "--ckpt", str(tokenizer_folder), "--output", str(tmp_path / "v"), "--data.kind", "builtin",
               "--data.resolution", "16", "--data.val_size", "16", "--num-images", "8", "--batch-idx", "2",
               "--report", "false", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "--batch-idx 2" in err and "batches 0 to 1 of 8" in err


def test_with_chunked_video_data_a_batch_is_one_chunk():
    from vqgan.cli.evaluate import _batch_range

    # 2 videos per chunk, each clip of 5 frames seen as 5 images: a chunk is 10 items.
    data = DataConfig(kind="video_folder", frames=5, frames_as_images=True, videos_per_chunk=2, resolution=16)
    assert _batch_range(data, 40, 1, 64) == range(10, 20)
    assert _batch_range(data, 40, 3, 4) == range(30, 34)  # at most --num-images of the chunk
    assert _batch_range(DataConfig(), 40, 1, 16) == range(16, 32)
    with pytest.raises(ValueError, match="batches 0 to 3 of 10"):
        _batch_range(data, 40, 4, 64)
