"""LandSegmenter network: shapes per modality, gradients, overfitting, fusion, SAM2 loading."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest
import torch
import torch.nn.functional as F

from las_builder.model.bands import parse_band_spec, sar_pseudo_wavelength_um
from las_builder.model.fusion import class_confidence, fuse
from las_builder.model.model import (
    MLP,
    MODEL_SIZES,
    HighFrequencyFusion,
    LandSegmenter,
    MultiScaleBlock,
    WavelengthPatchEmbed,
    fusion_heads,
    high_frequency,
    load_sam2_weights,
    model_config,
)

S2_WL = torch.tensor(
    [0.443, 0.49, 0.56, 0.665, 0.704, 0.74, 0.783, 0.842, 0.865, 0.945, 1.61, 2.19]
)
S1_WL = torch.full((2,), sar_pseudo_wavelength_um(5.405))
S1_POL = torch.tensor([1, 2])
NAIP_WL = torch.tensor([0.635, 0.555, 0.47, 0.845])


@pytest.fixture(scope="module")
def net() -> LandSegmenter:
    torch.manual_seed(0)
    return LandSegmenter(model_config("tiny"))


@pytest.mark.parametrize(
    ("name", "bands", "wl", "pol", "size"),
    [
        ("sentinel-2", 12, S2_WL, None, 32),
        ("sentinel-1", 2, S1_WL, S1_POL, 32),
        ("naip", 4, NAIP_WL, None, 128),
        ("mixed", 14, torch.cat([S2_WL, S1_WL]), torch.cat([torch.zeros(12).long(), S1_POL]), 64),
        ("odd-size", 3, S2_WL[1:4], None, 40),
    ],
)
def test_shapes_for_every_modality(
    net: LandSegmenter,
    name: str,
    bands: int,
    wl: torch.Tensor,
    pol: torch.Tensor | None,
    size: int,
) -> None:
    text = torch.randn(5, 384)
    with torch.no_grad():
        out = net(torch.rand(2, bands, size, size + 8), wl, text, pol, with_prior=True)
    assert out["logits"].shape == (2, 5, size, size + 8), name
    assert out["prior_logits"].shape == (2, 5, size, size + 8)
    assert out["presence_logits"].shape == (2, 5)
    assert torch.isfinite(out["logits"]).all()


def test_per_batch_text_and_encoder_stages(net: LandSegmenter) -> None:
    feats = net.encode(torch.rand(2, 12, 64, 64), S2_WL)
    assert [f.shape[1] for f in feats[:4]] == [32, 64, 128, 256]
    assert [f.shape[-1] for f in feats[:4]] == [16, 8, 4, 2]
    assert feats[4].shape == (2, 64, 64, 32)  # full-resolution pixel features
    out = net.decode(feats, torch.randn(2, 3, 384), (64, 64))
    assert out["logits"].shape == (2, 3, 64, 64)


def test_band_kernels_depend_on_wavelength_and_polarisation() -> None:
    torch.manual_seed(0)
    embed = WavelengthPatchEmbed(16, wave_dim=32)
    w_red, _ = embed.generate(torch.tensor([0.665]))
    w_nir, _ = embed.generate(torch.tensor([0.842]))
    assert not torch.allclose(w_red, w_nir)
    w_vv, _ = embed.generate(S1_WL[:1], torch.tensor([1]))
    w_vh, _ = embed.generate(S1_WL[:1], torch.tensor([2]))
    assert not torch.allclose(w_vv, w_vh)
    assert w_red.shape == (16, 1, 7, 7)


def test_high_frequency_removes_flat_signal() -> None:
    flat = torch.full((1, 2, 16, 16), 0.3)
    assert high_frequency(flat).abs().max() < 1e-6
    edge = torch.zeros(1, 1, 16, 16)
    edge[..., 8:] = 1.0
    assert high_frequency(edge).abs().max() > 0.1


def test_gradients_reach_wavelength_adapter_fusion_and_decoder() -> None:
    torch.manual_seed(0)
    net = LandSegmenter(model_config("tiny"))
    out = net(torch.rand(2, 12, 32, 32), S2_WL, torch.randn(4, 384))
    target = torch.randint(0, 4, (2, 32, 32))
    loss = F.cross_entropy(out["logits"], target) + out["presence_logits"].mean()
    loss.backward()
    trunk = net.image_encoder.trunk
    for name, param in [
        ("wavelength hypernetwork", trunk.patch_embed.to_weight.weight),
        ("band mixer", trunk.patch_embed.band_mlp.layers[0].weight),
        ("HF embedding", trunk.hf_embed.to_weight.weight),
        ("HF fusion gate", trunk.fusions[0].gate),
        ("HF fusion attention", cast(HighFrequencyFusion, trunk.fusions[-1]).kv.weight),
        ("decoder prompt MLP", cast(MLP, net.decoder.prompt_mlp[1]).layers[0].weight),
        ("decoder hyper MLP", net.decoder.hyper.layers[-1].weight),
        ("pixel embedding", net.pixel_embed.to_weight.weight),
        ("image-text prior", net.prior.proj[1].weight),
    ]:
        assert isinstance(param, torch.Tensor), name
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_overfits_one_batch() -> None:
    torch.manual_seed(0)
    net = LandSegmenter(model_config("tiny"))
    # 8 px blocks of 3 classes, each with its own spectrum plus noise
    target = torch.randint(0, 3, (2, 4, 4)).repeat_interleave(8, 1).repeat_interleave(8, 2)
    spectra = torch.tensor(
        [[0.05, 0.04, 0.02, 0.01], [0.04, 0.08, 0.05, 0.40], [0.2, 0.2, 0.2, 0.3]]
    )
    image = spectra[target].permute(0, 3, 1, 2) + 0.02 * torch.randn(2, 4, 32, 32)
    text = torch.randn(3, 384)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(50):
        out = net(image, NAIP_WL, text)
        loss = F.cross_entropy(out["logits"], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0], losses[::5]


def test_fusion_keeps_confident_classes_and_recovers_omitted_ones() -> None:
    seg = torch.zeros(1, 3, 4, 4)
    seg[:, 0] = 3.0  # class 0 wins everywhere
    seg[:, 2, :2, :2] = 2.6  # class 2 is the runner-up in one corner, never the winner
    conf = class_confidence(seg.softmax(1))
    assert conf[0, 0] > 0.5 and conf[0, 1] == 0 and conf[0, 2] == 0
    fused, w = fuse(seg, torch.tensor([[0.0, 0.0, 6.0]]))  # the prior: class 2 is present
    pred = fused.argmax(1)[0]
    assert (pred[:2, :2] == 2).all()
    assert (pred[2:, :] == 0).all() and (pred[:, 2:] == 0).all()
    assert torch.allclose(w, conf)
    # the prior ruling class 2 out keeps the segmenter's map
    assert (fuse(seg, torch.tensor([[0.0, 0.0, -6.0]]))[0].argmax(1) == 0).all()


def test_sam2_checkpoint_loads_what_matches(tmp_path: Path) -> None:
    torch.manual_seed(0)
    donor = LandSegmenter(model_config("tiny"))
    state = {
        k: v.clone()
        for k, v in donor.state_dict().items()
        if k.startswith("image_encoder.trunk.blocks.") or k.endswith("pos_embed")
    }
    state["image_encoder.trunk.patch_embed.proj.weight"] = torch.randn(32, 3, 7, 7)  # RGB conv
    state["image_encoder.neck.convs.0.conv.weight"] = torch.randn(256, 256, 1, 1)
    state["image_encoder.trunk.pos_embed_window"] = torch.randn(1, 32, 4, 4)  # wrong shape
    path = tmp_path / "sam2_fake.pt"
    torch.save({"model": state}, path)
    net = LandSegmenter(model_config("tiny"))
    report = load_sam2_weights(net, path)
    assert "image_encoder.trunk.blocks.0.attn.qkv.weight" in report["loaded"]
    assert "image_encoder.neck.convs.0.conv.weight" in report["unused"]
    assert "image_encoder.trunk.patch_embed.proj.weight" in report["unused"]
    assert any(
        m.startswith("image_encoder.trunk.pos_embed_window") for m in report["shape_mismatch"]
    )
    assert "decoder.hyper.layers.0.weight" in report["not_in_checkpoint"]
    torch.testing.assert_close(
        cast(MultiScaleBlock, net.image_encoder.trunk.blocks[1]).mlp.layers[0].weight,
        cast(MultiScaleBlock, donor.image_encoder.trunk.blocks[1]).mlp.layers[0].weight,
    )


def test_band_spec_parsing() -> None:
    wl, pol = parse_band_spec("B02,B8A,0.7,vv,vh,sar:1.27:hh")
    assert wl[:3] == [0.49, 0.865, 0.7]
    assert pol == [0, 0, 0, 1, 2, 3]
    assert wl[3] == pytest.approx(55465.76, rel=1e-4)
    assert wl[5] == pytest.approx(236057.0, rel=1e-3)
    with pytest.raises(ValueError, match="not understood"):
        parse_band_spec("B99")


@pytest.mark.parametrize("size", sorted(MODEL_SIZES))
def test_every_preset_fuses_high_frequencies_at_every_stage(size: str) -> None:
    """Each stage's fusion splits its channels into heads (Hiera-B+'s 112 in 3 did not: every
    forward pass of the base preset failed)."""
    cfg = MODEL_SIZES[size]
    for stage in range(len(cfg.stages)):
        dim = cfg.embed_dim * 2**stage
        heads = fusion_heads(dim)
        assert dim % heads == 0 and 1 <= heads <= max(1, dim // 32)
        fusion = HighFrequencyFusion(dim, heads, cfg.hf_window, cfg.hf_gate_init)
        x = torch.randn(1, 3, 5, dim)
        assert fusion(x, torch.randn_like(x)).shape == x.shape
    assert (fusion_heads(112), fusion_heads(96), fusion_heads(144)) == (2, 3, 4)
