"""Token shards: round trip, resumption of an interrupted encoding, both file formats, and the errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import Dataset

from vqgan.config import QuantizerConfig
from vqgan.data.tokens import TokenDataset, TokenFolderError, encode_dataset, read_manifest
from vqgan.registry import create_model

# One intra-op thread for the whole module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


class Images(Dataset):
    """Deterministic 16x16 images; every third one unlabelled."""

    classes = ["a", "b", "c"]

    def __init__(self, n: int):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 3, 16, 16, generator=g) * 2 - 1

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return {"image": self.x[i], "label": torch.tensor(i % 3 if i % 3 else -1)}


@pytest.fixture(scope="module")
def tokenizer():
    torch.manual_seed(0)
    q = QuantizerConfig(kind="vq", codebook_size=32, kmeans_init=False, dead_code_threshold=0.0)
    return create_model("test-taming", quantizer=q).eval()


def test_round_trip_matches_the_tokenizer(tmp_path, tokenizer):
    ds = Images(10)
    m = encode_dataset(tokenizer, ds, tmp_path, shard_size=4, batch_size=3, progress=False, source={"tokenizer": "x"})
    assert m.complete and len(m.shards) == 3 and m.num_written == 10
    assert m.token_shape == [8, 8] and m.codebook_size == 32 and m.class_names == ["a", "b", "c"]
    tokens = TokenDataset(tmp_path)
    assert len(tokens) == 10
    with torch.no_grad():
        expected = tokenizer.encode(ds.x).indices
    got = torch.stack([tokens[i]["tokens"] for i in range(10)])
    assert got.dtype == torch.long and torch.equal(got, expected)
    assert [int(tokens[i]["label"]) for i in range(4)] == [-1, 1, 2, -1]
    assert torch.equal(tokens.code_histogram(), torch.bincount(expected.flatten(), minlength=32))
    sub = tokens.subset([1, 3, 5])
    assert len(sub) == 3 and torch.equal(sub[1]["tokens"], expected[3]) and torch.equal(sub.subset([2])[0]["tokens"], expected[5])
    assert torch.equal(sub.code_histogram(), torch.bincount(expected[[1, 3, 5]].flatten(), minlength=32))
    assert json.loads((tmp_path / "manifest.json").read_text())["complete"] is True
    # Indices fit in int16 on disk.
    from safetensors.torch import load_file

    assert load_file(str(tmp_path / "shard_00000.safetensors"))["indices"].dtype == torch.int16


def test_interrupted_encoding_resumes_to_the_same_result(tmp_path, tokenizer):
    ds = Images(10)
    full = encode_dataset(tokenizer, ds, tmp_path / "full", shard_size=4, progress=False)
    part = encode_dataset(tokenizer, ds, tmp_path / "part", shard_size=4, progress=False, max_shards=1)
    assert not part.complete and part.num_written == 4
    with pytest.raises(TokenFolderError, match="incomplete"):
        TokenDataset(tmp_path / "part")
    assert len(TokenDataset(tmp_path / "part", allow_incomplete=True)) == 4
    first = (tmp_path / "part" / "shard_00000.safetensors").stat().st_mtime_ns
    done = encode_dataset(tokenizer, ds, tmp_path / "part", shard_size=4, progress=False)
    assert done.complete and done.shards == full.shards
    assert (tmp_path / "part" / "shard_00000.safetensors").stat().st_mtime_ns == first  # not rewritten
    assert torch.equal(TokenDataset(tmp_path / "part").data, TokenDataset(tmp_path / "full").data)
    # Other settings in the same folder are refused instead of mixed.
    with pytest.raises(TokenFolderError, match="other settings"):
        encode_dataset(tokenizer, ds, tmp_path / "part", shard_size=5, progress=False)


@pytest.mark.parametrize("what", ["quantized", "continuous"])
def test_latents_and_npy_format(tmp_path, tokenizer, what):
    ds = Images(5)
    m = encode_dataset(tokenizer, ds, tmp_path, what=what, shard_size=2, file_format="npy", progress=False)
    assert m.token_shape == [8, 8, 8]
    assert sorted(p.name for p in tmp_path.glob("shard_00000.*")) == ["shard_00000.labels.npy", "shard_00000.latents.npy"]
    latents = TokenDataset(tmp_path)
    with torch.no_grad():
        enc = tokenizer.encode(ds.x)
    expected = enc.quantized if what == "quantized" else enc.latents
    torch.testing.assert_close(torch.stack([latents[i]["latents"] for i in range(5)]), expected)
    assert read_manifest(tmp_path).what == what


def test_missing_folder_is_reported(tmp_path):
    with pytest.raises(TokenFolderError, match="vqgan encode"):
        TokenDataset(tmp_path)
