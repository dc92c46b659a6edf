"""Loading foreign tokenizers (taming, LlamaGen, diffusers) and our own folder format.

taming and LlamaGen are not installable, so their checkpoints are written here from their published architecture
definitions (taming-transformers ``taming/modules/diffusionmodules/model.py`` + ``taming/models/vqgan.py``;
LlamaGen ``tokenizer/tokenizer_image/vq_model.py``): key names and shapes of a small random model, saved in their
file formats, and compared against a functional reference forward pass written below from the same definitions
(plain ``F.conv2d`` / ``F.group_norm`` / ``bmm`` attention on the state dict, no vqgan modules). diffusers is
installed and is its own reference.
"""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save_file

from vqgan.config import ModelConfig, QuantizerConfig
from vqgan.interop import ConversionError, detect_format, load_pretrained, save_diffusers, to_diffusers
from vqgan.models import VQModel
from vqgan.models.pretrained import HubVQModel, from_pretrained, save_pretrained

ATOL = 1e-5  # fp32, same operations in a different order


# One intra-op thread for the whole module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

# --------------------------------------------------------------------------------------------------------------
# taming's state-dict layout and a functional reference of its forward pass
# --------------------------------------------------------------------------------------------------------------
CH, CH_MULT, NRB, ATTN_LEVELS, Z, EMBED, N_EMBED, IN_CH = 32, (1, 2), 1, (1,), 8, 8, 64, 3
LEVELS = len(CH_MULT)


def taming_layout(ch=CH, ch_mult=CH_MULT, nrb=NRB, attn_levels=ATTN_LEVELS, z=Z, embed=EMBED, n_embed=N_EMBED,
                  in_ch=IN_CH) -> dict[str, tuple[int, ...]]:
    """Key -> shape of taming's VQModel (encoder, quant_conv, quantize, post_quant_conv, decoder)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(p, cin, cout, k):
        shapes[p + ".weight"], shapes[p + ".bias"] = (cout, cin, k, k), (cout,)

    def norm(p, c):
        shapes[p + ".weight"], shapes[p + ".bias"] = (c,), (c,)

    def res(p, cin, cout):
        norm(p + ".norm1", cin)
        conv(p + ".conv1", cin, cout, 3)
        norm(p + ".norm2", cout)
        conv(p + ".conv2", cout, cout, 3)
        if cin != cout:
            conv(p + ".nin_shortcut", cin, cout, 1)

    def attn(p, c):
        norm(p + ".norm", c)
        for n in ("q", "k", "v", "proj_out"):
            conv(f"{p}.{n}", c, c, 1)

    def mid(p, c):
        res(p + ".mid.block_1", c, c)
        attn(p + ".mid.attn_1", c)
        res(p + ".mid.block_2", c, c)

    n = len(ch_mult)
    conv("encoder.conv_in", in_ch, ch, 3)
    cin = ch
    for i, m in enumerate(ch_mult):
        for j in range(nrb):
            res(f"encoder.down.{i}.block.{j}", cin, ch * m)
            cin = ch * m
            if i in attn_levels:
                attn(f"encoder.down.{i}.attn.{j}", cin)
        if i != n - 1:
            conv(f"encoder.down.{i}.downsample.conv", cin, cin, 3)
    mid("encoder", cin)
    norm("encoder.norm_out", cin)
    conv("encoder.conv_out", cin, z, 3)
    conv("quant_conv", z, embed, 1)
    shapes["quantize.embedding.weight"] = (n_embed, embed)
    conv("post_quant_conv", embed, z, 1)
    cin = ch * ch_mult[-1]
    conv("decoder.conv_in", z, cin, 3)
    mid("decoder", cin)
    for i in reversed(range(n)):
        for j in range(nrb + 1):
            res(f"decoder.up.{i}.block.{j}", cin, ch * ch_mult[i])
            cin = ch * ch_mult[i]
            if i in attn_levels:
                attn(f"decoder.up.{i}.attn.{j}", cin)
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", cin, cin, 3)
    norm("decoder.norm_out", cin)
    conv("decoder.conv_out", cin, in_ch, 3)
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in shapes.items():
        if k == "quantize.embedding.weight":
            out[k] = torch.randn(s, generator=g)
        elif len(s) == 1 and ("norm" in k.rsplit(".", 2)[-2]) and k.endswith(".weight"):
            out[k] = 1 + 0.1 * torch.randn(s, generator=g)
        elif len(s) == 1:
            out[k] = 0.1 * torch.randn(s, generator=g)
        else:
            fan_in = s[1] * s[2] * s[3]
            out[k] = torch.randn(s, generator=g) / fan_in**0.5
    return out


def _conv(sd, p, x, stride=1, padding=0):
    return F.conv2d(x, sd[p + ".weight"], sd[p + ".bias"], stride=stride, padding=padding)


def _gn(sd, p, x):
    return F.group_norm(x, 32, sd[p + ".weight"], sd[p + ".bias"], eps=1e-6)  # taming/LlamaGen: 32 groups


def _res(sd, p, x):
    h = _conv(sd, p + ".conv1", F.silu(_gn(sd, p + ".norm1", x)), padding=1)
    h = _conv(sd, p + ".conv2", F.silu(_gn(sd, p + ".norm2", h)), padding=1)
    if p + ".nin_shortcut.weight" in sd:
        x = _conv(sd, p + ".nin_shortcut", x)
    return x + h


def _attn(sd, p, x):
    h = _gn(sd, p + ".norm", x)
    q, k, v = (_conv(sd, f"{p}.{n}", h) for n in "qkv")
    b, c, hh, ww = q.shape
    w = torch.bmm(q.reshape(b, c, -1).permute(0, 2, 1), k.reshape(b, c, -1)) * c**-0.5
    w = torch.softmax(w, dim=2)
    out = torch.bmm(v.reshape(b, c, -1), w.permute(0, 2, 1)).reshape(b, c, hh, ww)
    return x + _conv(sd, p + ".proj_out", out)


def _mid(sd, p, h):
    return _res(sd, p + ".mid.block_2", _attn(sd, p + ".mid.attn_1", _res(sd, p + ".mid.block_1", h)))


def ref_encode(sd, x, n=LEVELS, nrb=NRB):
    h = _conv(sd, "encoder.conv_in", x, padding=1)
    for i in range(n):
        for j in range(nrb):
            h = _res(sd, f"encoder.down.{i}.block.{j}", h)
            if f"encoder.down.{i}.attn.{j}.q.weight" in sd:
                h = _attn(sd, f"encoder.down.{i}.attn.{j}", h)
        if i != n - 1:
            h = _conv(sd, f"encoder.down.{i}.downsample.conv", F.pad(h, (0, 1, 0, 1)), stride=2)
    h = _mid(sd, "encoder", h)
    h = _conv(sd, "encoder.conv_out", F.silu(_gn(sd, "encoder.norm_out", h)), padding=1)
    return _conv(sd, "quant_conv", h)


def ref_quantize(sd, z, l2=False):
    """Nearest code (taming's VectorQuantizer2; LlamaGen's with l2-normalised latents and codes)."""
    e = sd["quantize.embedding.weight"]
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    if l2:
        flat, e = F.normalize(flat, dim=-1), F.normalize(e, dim=-1)
    d = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * flat @ e.T
    idx = d.argmin(1)
    b, _, h, w = z.shape
    return idx.reshape(b, h, w), e[idx].reshape(b, h, w, -1).permute(0, 3, 1, 2)


def ref_decode(sd, zq, n=LEVELS, nrb=NRB):
    h = _conv(sd, "decoder.conv_in", _conv(sd, "post_quant_conv", zq), padding=1)
    h = _mid(sd, "decoder", h)
    for i in reversed(range(n)):
        for j in range(nrb + 1):
            h = _res(sd, f"decoder.up.{i}.block.{j}", h)
            if f"decoder.up.{i}.attn.{j}.q.weight" in sd:
                h = _attn(sd, f"decoder.up.{i}.attn.{j}", h)
        if i != 0:
            h = _conv(sd, f"decoder.up.{i}.upsample.conv", F.interpolate(h, scale_factor=2.0, mode="nearest"), padding=1)
    return _conv(sd, "decoder.conv_out", F.silu(_gn(sd, "decoder.norm_out", h)), padding=1)


def to_llamagen_keys(sd: dict[str, torch.Tensor], n=LEVELS) -> dict[str, torch.Tensor]:
    """LlamaGen's names for a taming-layout state dict (its Encoder/Decoder ``conv_blocks``, ``res``, ``mid``
    ModuleList; the decoder's blocks are stored deepest level first)."""
    import re

    out = {}
    for k, v in sd.items():
        m = re.match(r"encoder\.down\.(\d+)\.(block|attn|downsample)\.(.*)", k)
        if m:
            kind = {"block": "res"}.get(m.group(2), m.group(2))
            k = f"encoder.conv_blocks.{m.group(1)}.{kind}.{m.group(3)}"
        m = re.match(r"decoder\.up\.(\d+)\.(block|attn|upsample)\.(.*)", k)
        if m:
            kind = {"block": "res"}.get(m.group(2), m.group(2))
            k = f"decoder.conv_blocks.{n - 1 - int(m.group(1))}.{kind}.{m.group(3)}"
        for ours, theirs in (("mid.block_1", "mid.0"), ("mid.attn_1", "mid.1"), ("mid.block_2", "mid.2")):
            k = k.replace(ours, theirs)
        out[k] = v
    out["quantize.codebook_used"] = torch.zeros(65536)
    return out


def taming_yaml(**over) -> dict:
    dd = dict(double_z=False, z_channels=Z, resolution=16, in_channels=IN_CH, out_ch=IN_CH, ch=CH,
              ch_mult=list(CH_MULT), num_res_blocks=NRB, attn_resolutions=[8], dropout=0.0)
    dd.update(over)
    return {"model": {"base_learning_rate": 4.5e-6, "target": "taming.models.vqgan.VQModel",
                      "params": {"embed_dim": EMBED, "n_embed": N_EMBED, "ddconfig": dd,
                                 "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                                                "params": {"disc_start": 250001}}}}}


@pytest.fixture(scope="module")
def taming_sd():
    return random_state(taming_layout(), seed=1)


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, IN_CH, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1


def _check_against_reference(model, sd, images, l2=False):
    with torch.no_grad():
        z_ref = ref_encode(sd, images)
        idx_ref, zq_ref = ref_quantize(sd, z_ref, l2)
        x_ref = ref_decode(sd, zq_ref)
        enc = model.encode(images)
        torch.testing.assert_close(enc.latents, z_ref, atol=ATOL, rtol=0)
        assert torch.equal(enc.indices, idx_ref)
        torch.testing.assert_close(enc.quantized, zq_ref, atol=ATOL, rtol=0)
        torch.testing.assert_close(model(images).reconstruction, x_ref, atol=ATOL, rtol=0)
        torch.testing.assert_close(model.decode_codes(idx_ref), x_ref, atol=ATOL, rtol=0)
    assert x_ref.abs().mean() > 0.05  # a non-trivial output


# --------------------------------------------------------------------------------------------------------------
# taming
# --------------------------------------------------------------------------------------------------------------
def _write_taming(tmp_path, sd, extra=None, yaml_cfg=None):
    ckpt = tmp_path / "last.ckpt"
    state = {**sd, "loss.discriminator.main.0.weight": torch.randn(4, 3, 4, 4), "loss.logvar": torch.zeros(())}
    torch.save({"state_dict": state, "epoch": 3, "global_step": 1000, **(extra or {})}, ckpt)
    if yaml_cfg is not False:
        (tmp_path / "last.yaml").write_text(yaml.safe_dump(yaml_cfg or taming_yaml()))
    return ckpt


def test_taming_checkpoint_matches_reference(tmp_path, taming_sd, images):
    ckpt = _write_taming(tmp_path, taming_sd)
    assert detect_format(ckpt) == "taming"
    model = load_pretrained(ckpt)
    c = model.config
    assert (c.ch, c.ch_mult, c.num_res_blocks, c.attn_resolutions, c.z_channels, c.embed_dim) == (
        CH, list(CH_MULT), NRB, [8], Z, EMBED)
    assert c.quantizer.codebook_size == N_EMBED and not c.quantizer.l2_normalize
    _check_against_reference(model, taming_sd, images)


def test_taming_log_layout_and_yaml_checks(tmp_path, taming_sd):
    # taming's logs/RUN/checkpoints/last.ckpt + logs/RUN/configs/RUN-project.yaml
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "configs").mkdir()
    ckpt = _write_taming(tmp_path / "checkpoints", taming_sd, yaml_cfg=False)
    (tmp_path / "configs" / "2020-11-09T13-31-51-project.yaml").write_text(yaml.safe_dump(taming_yaml()))
    assert load_pretrained(ckpt, source="taming").config.attn_resolutions == [8]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(taming_yaml(ch=64, num_res_blocks=2)))
    with pytest.raises(ConversionError, match=r"ch: config 64 vs weights 32.*num_res_blocks: config 2 vs weights 1"):
        load_pretrained(ckpt, source="taming", config=bad)
    gumbel = tmp_path / "gumbel.yaml"
    cfg = taming_yaml()
    cfg["model"]["target"] = "taming.models.vqgan.GumbelVQ"
    gumbel.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConversionError, match="GumbelVQ.*not supported"):
        load_pretrained(ckpt, source="taming", config=gumbel)


def test_unknown_and_missing_keys_are_listed(tmp_path, taming_sd):
    sd = dict(taming_sd)
    sd["encoder.down.0.block.0.extra_gate.weight"] = torch.zeros(3)
    del sd["decoder.conv_out.bias"]
    ckpt = _write_taming(tmp_path, sd)
    with pytest.raises(ConversionError) as e:
        load_pretrained(ckpt)
    msg = str(e.value)
    assert "missing: decoder.conv_out.bias" in msg
    assert "unexpected: encoder.down.0.block.0.extra_gate.weight" in msg


class FakeModelCheckpoint:
    """Stands for the Lightning callback class that real taming checkpoints pickle (as a dict key)."""


def test_lightning_objects_refused_or_read_with_stand_ins(tmp_path, taming_sd, images):
    ckpt = _write_taming(tmp_path, taming_sd, extra={"callbacks": {FakeModelCheckpoint: {"best_model_score": 1.0}}})
    with pytest.raises(ConversionError, match=r"refusing to load.*FakeModelCheckpoint.*allow-stand-ins"):
        load_pretrained(ckpt)
    model = load_pretrained(ckpt, allow_stand_ins=True)
    _check_against_reference(model, taming_sd, images)


# --------------------------------------------------------------------------------------------------------------
# safety
# --------------------------------------------------------------------------------------------------------------
class _Evil:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _EvilOpen:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("evil_cls", [_Evil, _EvilOpen])
@pytest.mark.parametrize("container", ["torch", "pickle"])
def test_malicious_pickle_never_runs(tmp_path, taming_sd, evil_cls, container):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    obj = {"state_dict": taming_sd, "payload": evil_cls(str(target))}
    if container == "torch":
        torch.save(obj, path)
    else:  # a plain (non-zip) pickle
        path.write_bytes(pickle.dumps(obj))
    with pytest.raises(ConversionError, match="refusing to load"):
        load_pretrained(path)
    if container == "torch":
        # With stand-ins the payload is an inert placeholder (or torch refuses its module outright, as for
        # posix.system): either way nothing runs.
        try:
            assert isinstance(load_pretrained(path, allow_stand_ins=True), VQModel)
        except ConversionError as e:
            assert "blocked" in str(e)
    assert not target.exists()


# --------------------------------------------------------------------------------------------------------------
# LlamaGen
# --------------------------------------------------------------------------------------------------------------
def test_llamagen_checkpoint_matches_reference(tmp_path, taming_sd, images):
    path = tmp_path / "vq_ds2_c2i.pt"
    torch.save({"model": to_llamagen_keys(taming_sd), "steps": 10}, path)
    assert detect_format(path) == "llamagen"
    model = load_pretrained(path)
    assert model.config.quantizer.l2_normalize and model.config.attn_resolutions == [128]
    _check_against_reference(model, taming_sd, images, l2=True)
    # The codes decoded are l2-normalised (LlamaGen's get_codebook_entry).
    norms = model.quantize.indices_to_codes(torch.zeros(1, 1, 1, dtype=torch.long)).flatten().norm()
    assert abs(float(norms) - 1) < 1e-6
    # Without l2 normalisation the lookup differs: the option is honoured.
    plain = load_pretrained(path, source="llamagen", l2_normalize=False)
    assert not plain.config.quantizer.l2_normalize


def test_llamagen_args_namespace_read_with_stand_ins(tmp_path, taming_sd):
    import argparse

    path = tmp_path / "vq.pt"
    args = argparse.Namespace(codebook_l2_norm=False, codebook_size=N_EMBED)
    torch.save({"model": to_llamagen_keys(taming_sd), "args": args}, path)
    with pytest.raises(ConversionError, match="argparse.Namespace"):
        load_pretrained(path)
    model = load_pretrained(path, allow_stand_ins=True)
    assert model.config.quantizer.l2_normalize is False  # read from args


# --------------------------------------------------------------------------------------------------------------
# diffusers
# --------------------------------------------------------------------------------------------------------------
def _random_diffusers(**over):
    from diffusers import VQModel as DVQ

    torch.manual_seed(0)
    kw = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
              up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(16, 32),
              layers_per_block=1, latent_channels=8, sample_size=16, num_vq_embeddings=32, norm_num_groups=8,
              vq_embed_dim=4)
    kw.update(over)
    m = DVQ(**kw).eval()
    with torch.no_grad():  # move away from the default init (zeros, ones) so that every weight matters
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def test_diffusers_folder_matches_diffusers(tmp_path, images):
    ref = _random_diffusers()
    ref.save_pretrained(tmp_path / "vq")
    assert detect_format(tmp_path / "vq") == "diffusers"
    model = load_pretrained(tmp_path / "vq")
    assert model.config.attn_resolutions == [8] and model.config.embed_dim == 4
    with torch.no_grad():
        h = ref.encode(images).latents
        quant, _, (_, _, idx) = ref.quantize(h)
        enc = model.encode(images)
        torch.testing.assert_close(enc.latents, h, atol=ATOL, rtol=0)
        assert torch.equal(enc.indices.flatten(), idx.flatten())
        out = ref.decode(h).sample
        torch.testing.assert_close(model(images).reconstruction, out, atol=ATOL, rtol=0)
        torch.testing.assert_close(model.decode_codes(enc.indices), out, atol=ATOL, rtol=0)


def test_ours_to_diffusers_and_back(tmp_path, images):
    torch.manual_seed(3)
    cfg = ModelConfig(ch=16, ch_mult=[1, 2, 2], num_res_blocks=2, attn_resolutions=[4], z_channels=8, embed_dim=6,
                      resolution=16, num_groups=8,
                      quantizer=QuantizerConfig(kind="ema", codebook_size=40, kmeans_init=False))
    ours = VQModel(cfg).eval()
    save_diffusers(ours, tmp_path / "d")
    theirs = to_diffusers(ours)
    with torch.no_grad():
        torch.testing.assert_close(theirs(images).sample, ours(images).reconstruction, atol=ATOL, rtol=0)
    back = load_pretrained(tmp_path / "d")
    for k, v in back.state_dict().items():
        if not k.startswith("quantize.") or k == "quantize.embedding.weight":
            assert torch.equal(v, ours.state_dict()[k]), k
    bad = VQModel(ModelConfig(ch=16, ch_mult=[1, 2], resolution=16, num_groups=8, z_channels=8, embed_dim=8,
                              quantizer=QuantizerConfig(kind="vq", codebook_size=8, l2_normalize=True)))
    with pytest.raises(ConversionError, match="l2_normalize"):
        to_diffusers(bad)


def test_diffusers_pipeline_folder_and_bin_weights(tmp_path, images):
    ref = _random_diffusers()
    ref.save_pretrained(tmp_path / "pipe" / "vqvae", safe_serialization=False)  # diffusion_pytorch_model.bin
    index = {"_class_name": "LDMPipeline", "vqvae": ["diffusers", "VQModel"]}
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps(index))
    assert (tmp_path / "pipe" / "vqvae" / "diffusion_pytorch_model.bin").is_file()
    model = load_pretrained(tmp_path / "pipe")
    with torch.no_grad():
        torch.testing.assert_close(model(images).reconstruction, ref(images).sample, atol=ATOL, rtol=0)


def test_taming_transformer_checkpoint_holds_the_tokenizer(tmp_path, taming_sd, images):
    # A Net2NetTransformer checkpoint stores the tokenizer under first_stage_model.
    state = {f"first_stage_model.{k}": v for k, v in taming_sd.items()}
    state["transformer.tok_emb.weight"] = torch.zeros(4, 2)
    torch.save({"state_dict": state}, tmp_path / "net2net.ckpt")
    model = load_pretrained(tmp_path / "net2net.ckpt")
    _check_against_reference(model, taming_sd, images)


@pytest.mark.parametrize(
    "over, message",
    [
        ({"norm_type": "spatial"}, "norm_type='spatial'"),
        ({"act_fn": "gelu"}, "act_fn='gelu'"),
        ({"up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"]}, "symmetrically"),
        ({"block_out_channels": [16, 24]}, "multiples"),
    ],
)
def test_diffusers_unsupported_options_are_named(tmp_path, over, message):
    cfg = {"_class_name": "VQModel", "_diffusers_version": "0.30.0",
           "down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
           "up_block_types": ["AttnUpDecoderBlock2D", "UpDecoderBlock2D"], "block_out_channels": [16, 32], **over}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match=message):
        load_pretrained(tmp_path)


# --------------------------------------------------------------------------------------------------------------
# our folder format and the hub mixin
# --------------------------------------------------------------------------------------------------------------
def _trained_like_model() -> VQModel:
    torch.manual_seed(7)
    cfg = ModelConfig(ch=16, ch_mult=[1, 2], attn_resolutions=[8], z_channels=8, embed_dim=8, resolution=16,
                      num_groups=8, quantizer=QuantizerConfig(kind="ema", codebook_size=32))
    model = VQModel(cfg)
    model.train()
    model(torch.rand(4, 3, 16, 16) * 2 - 1)  # k-means init and one EMA update change buffers
    return model.eval()


def test_our_folder_round_trip_is_bit_identical(tmp_path, images):
    model = _trained_like_model()
    save_pretrained(model, tmp_path / "ours")
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == ["config.json", "model.safetensors"]
    import vqgan

    back = vqgan.load_pretrained(tmp_path / "ours")  # the public entry point
    assert back.config == model.config
    state, back_state = model.state_dict(), back.state_dict()
    assert state.keys() == back_state.keys()
    assert all(torch.equal(state[k], back_state[k]) for k in state)
    with torch.no_grad():
        assert torch.equal(model(images).reconstruction, back(images).reconstruction)


def test_hub_mixin_saves_and_loads_offline(tmp_path, monkeypatch, images):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = HubVQModel.from_model(_trained_like_model())
    hub.save_pretrained(tmp_path / "hub")
    names = sorted(p.name for p in (tmp_path / "hub").iterdir())
    assert names == ["README.md", "config.json", "model.safetensors"]
    assert "library_name: vqgan" in (tmp_path / "hub" / "README.md").read_text()
    back = HubVQModel.from_pretrained(tmp_path / "hub")
    assert isinstance(back, HubVQModel)
    plain = from_pretrained(tmp_path / "hub")  # the same folder, read without the hub code
    with torch.no_grad():
        ref = hub(images).reconstruction
        assert torch.equal(back(images).reconstruction, ref)
        assert torch.equal(plain(images).reconstruction, ref)


def test_cli_convert(tmp_path, capsys):
    from vqgan.cli import main

    _random_diffusers().save_pretrained(tmp_path / "d")
    assert main(["convert", "--from", "diffusers", "--input", str(tmp_path / "d"), "--output", str(tmp_path / "o")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["config"]["ch_mult"] == [1, 2]
    assert (tmp_path / "o" / "model.safetensors").is_file()
    assert main(["convert", "--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "x")]) == 2


def test_cli_convert_names_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    """An image, a config or bare safetensors weights given as a checkpoint: the message says what the file looks
    like, not that it "needs to execute code to unpickle"."""
    from PIL import Image

    from vqgan.cli import main

    Image.new("RGB", (4, 4)).save(tmp_path / "photo.ckpt", format="PNG")
    (tmp_path / "config.ckpt").write_text("model:\n  ch: 64\n")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "weights.ckpt"))
    capsys.readouterr()
    for name, what in (("photo", "a PNG image"), ("config", "a text file"), ("weights", "a safetensors file")):
        argv = ["convert", "--input", str(tmp_path / f"{name}.ckpt"), "--output", str(tmp_path / "o")]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path / name}.ckpt is" in err and f"not a PyTorch checkpoint: it looks like {what}" in err, err
        assert "unpickl" not in err and "Traceback" not in err
    # The training-checkpoint reader (reconstruct, encode, sample...) says the same.
    from vqgan.models.io import CheckpointError, load_model

    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint: it looks like a PNG image"):
        load_model(tmp_path / "photo.ckpt")


# --------------------------------------------------------------------------------------------------------------
# the released architectures at full size (shapes only, on the meta device: no memory, no compute)
# --------------------------------------------------------------------------------------------------------------
def _meta_state(shapes):
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def _our_meta_shapes(cfg):
    with torch.device("meta"):
        model = VQModel(cfg)
    buffers = {k for k, _ in model.named_buffers()}
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in buffers or k.endswith("embedding.weight")}


def test_taming_f16_1024_layout_maps_one_to_one():
    from vqgan.interop.common import infer_taming_config

    # vqgan_imagenet_f16_1024: ddconfig ch=128, ch_mult=[1,1,2,2,4], num_res_blocks=2, attn_resolutions=[16],
    # z_channels=256, resolution=256; embed_dim=256, n_embed=1024.
    shapes = taming_layout(ch=128, ch_mult=(1, 1, 2, 2, 4), nrb=2, attn_levels=(4,), z=256, embed=256, n_embed=1024)
    cfg = infer_taming_config(_meta_state(shapes), resolution=256)
    assert (cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.attn_resolutions) == (128, [1, 1, 2, 2, 4], 2, [16])
    assert (cfg.z_channels, cfg.embed_dim, cfg.quantizer.codebook_size) == (256, 256, 1024)
    assert _our_meta_shapes(cfg) == shapes


def test_llamagen_vq16_layout_maps_one_to_one():
    from vqgan.interop.llamagen import llamagen_state_dict

    # LlamaGen VQ-16: ch=128, ch_mult=[1,1,2,2,4], num_res_blocks=2, z_channels=256, codebook 16384 x 8 (l2-normed).
    shapes = taming_layout(ch=128, ch_mult=(1, 1, 2, 2, 4), nrb=2, attn_levels=(4,), z=256, embed=8, n_embed=16384)
    theirs = to_llamagen_keys(_meta_state(shapes), n=5)
    ours = llamagen_state_dict({"model": theirs}, "VQ-16")
    assert {k: tuple(v.shape) for k, v in ours.items()} == shapes


def test_diffusers_default_layout_maps_one_to_one():
    from diffusers import VQModel as DVQ

    from vqgan.interop.common import rename_pieces
    from vqgan.interop.diffusers import _LEGACY, DIFFUSERS_DEFAULTS, NAMES, diffusers_to_model_config

    kw = dict(down_block_types=("DownEncoderBlock2D",) * 3 + ("AttnDownEncoderBlock2D",),
              up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 3,
              block_out_channels=(128, 256, 256, 512), layers_per_block=2, latent_channels=4, sample_size=256,
              num_vq_embeddings=8192, vq_embed_dim=4)
    with torch.device("meta"):
        ref = DVQ(**kw)
    cfg = diffusers_to_model_config({**DIFFUSERS_DEFAULTS, **kw})
    mapped = {}
    for k, v in ref.state_dict().items():
        new = rename_pieces(k, NAMES + _LEGACY, 4)
        mapped[new] = tuple(v.shape) + ((1, 1) if v.dim() == 2 and ".attn" in new and "weight" in new else ())
    assert mapped == _our_meta_shapes(cfg)
