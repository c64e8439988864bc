"""LandSegmenter: a wavelength-conditioned, text-prompted land-cover segmenter.

Architecture (see docs/landsegmenter.md):

* **Wavelength-conditioned patch embedding** (DOFA-style, :class:`WavelengthPatchEmbed`): a
  small hypernetwork turns each band's centre wavelength (plus a polarisation code for SAR,
  whose pseudo-wavelength is ``c / f``) into that band's slice of the patch-embedding kernel, so
  any band set (Sentinel-2, Sentinel-1, NAIP or a mix) enters one network.
* **Hierarchical image encoder** (SAM2's Hiera, :class:`HieraTrunk`): 4 stages at strides 4, 8,
  16, 32 with windowed attention, query pooling between stages and windowed + background
  positional embeddings. Parameter names follow SAM2 (``image_encoder.trunk.blocks.N...``) so a
  SAM2 checkpoint's trunk loads by name (:func:`load_sam2_weights`).
* **High-frequency injection**: the image minus its box-blurred copy is embedded by a second
  wavelength-conditioned embedding, pooled into a 4-level pyramid, and fused into the output of
  *every* encoder block by windowed cross-attention with a learned tanh gate
  (:class:`HighFrequencyFusion`).
* **Prompted mask decoder** (:class:`MaskDecoder`): reads the sum of stage 4 (upsampled) and
  stage 3, lets the class prompts (projected text embeddings) and the image attend to each
  other (SAM-style two-way attention), upsamples with the stage 2 and stage 1 features, and
  predicts one logit map per prompted class as the dot product of per-pixel features and the
  projected prompt. SAM2 stops at stride 4; for 10 m land cover the decoder adds full-resolution
  pixel features (a third wavelength-conditioned embedding, kernel 3, stride 1) after the
  upsampling, so the masks come out at the input size with per-pixel detail.
* **Image-text prior** (:class:`ImageTextPrior`): the decoder input, pooled and projected into
  the text space, scored against the class embeddings (a CLIP-like presence prior, trained
  jointly); used by :mod:`las_builder.model.fusion`.

Example:
    >>> import torch
    >>> from las_builder.model.model import LandSegmenter, model_config
    >>> net = LandSegmenter(model_config("tiny"))
    >>> out = net(torch.rand(2, 12, 64, 64), torch.linspace(0.44, 2.19, 12), torch.randn(5, 384))
    >>> out["logits"].shape
    torch.Size([2, 5, 64, 64])

"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MODEL_SIZES",
    "HieraTrunk",
    "HighFrequencyFusion",
    "ImageTextPrior",
    "LandSegmenter",
    "MaskDecoder",
    "ModelConfig",
    "WavelengthPatchEmbed",
    "fusion_heads",
    "high_frequency",
    "load_sam2_weights",
    "model_config",
    "wavelength_encoding",
]


@dataclass
class ModelConfig:
    """Hyper-parameters of :class:`LandSegmenter`.

    Attributes:
        size: Name of the preset this came from.
        embed_dim: Channels of stage 1 (doubled at each stage).
        num_heads: Attention heads of stage 1 (doubled at each stage).
        stages: Blocks per stage (4 stages).
        window_spec: Attention window per stage (in tokens).
        global_att_blocks: Blocks with global attention instead of windows.
        pos_bkg: Size of the background positional embedding (interpolated to the input).
        mlp_ratio: Hidden size of the blocks' MLP relative to their width.
        drop_path: Stochastic-depth rate of the last block.
        patch_kernel: Kernel of the patch embedding (stride 4, as SAM2).
        wave_dim: Width of the wavelength hypernetwork.
        wave_heads: Attention heads of the hypernetwork's band mixer.
        hf_kernel: Box-blur size whose residual is the high-frequency image.
        hf_window: Window (tokens) of the high-frequency cross-attention.
        hf_gate_init: Initial gate of the high-frequency fusion (tanh of it scales the update).
        decoder_dim: Width of the mask decoder.
        decoder_depth: Two-way attention layers in the decoder.
        decoder_heads: Attention heads in the decoder.
        pixel_dim: Channels of the full-resolution pixel features the masks are read from.
        input_gain: Constant the normalised bands are multiplied by on entry. Reflectances
            (DN / 10000) are mostly 0.02-0.4, so generated kernels with fan-in scaling would
            start with very small activations; x5 brings them to about unit scale (on the demo
            world, 150 steps reach a training loss of 1.05 with it and 1.23 without).
        text_dim: Size of the text embeddings (384 for MiniLM).

    """

    size: str = "tiny"
    embed_dim: int = 32
    num_heads: int = 1
    stages: tuple[int, ...] = (1, 1, 2, 1)
    window_spec: tuple[int, ...] = (8, 4, 4, 2)
    global_att_blocks: tuple[int, ...] = ()
    pos_bkg: tuple[int, int] = (8, 8)
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    patch_kernel: int = 7
    wave_dim: int = 64
    wave_heads: int = 4
    hf_kernel: int = 5
    hf_window: int = 8
    hf_gate_init: float = 0.1
    decoder_dim: int = 64
    decoder_depth: int = 1
    decoder_heads: int = 2
    pixel_dim: int = 32
    input_gain: float = 5.0
    text_dim: int = 384
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples as lists) for checkpoints and YAML."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        for k in ("stages", "window_spec", "global_att_blocks", "pos_bkg"):
            if k in data:
                data[k] = tuple(data[k])
        return cls(**data)


MODEL_SIZES: dict[str, ModelConfig] = {
    # Trains on a CPU in minutes at 32-128 px.
    "tiny": ModelConfig(),
    # SAM2 Hiera-T trunk (sam2.1_hiera_tiny.pt).
    "small": ModelConfig(
        size="small",
        embed_dim=96,
        num_heads=1,
        stages=(1, 2, 7, 2),
        window_spec=(8, 4, 14, 7),
        global_att_blocks=(5, 7, 9),
        pos_bkg=(7, 7),
        drop_path=0.1,
        wave_dim=128,
        decoder_dim=256,
        decoder_depth=2,
        decoder_heads=8,
    ),
    # SAM2 Hiera-B+ trunk (sam2.1_hiera_base_plus.pt).
    "base": ModelConfig(
        size="base",
        embed_dim=112,
        num_heads=2,
        stages=(2, 3, 16, 3),
        window_spec=(8, 4, 14, 7),
        global_att_blocks=(12, 16, 20),
        pos_bkg=(14, 14),
        drop_path=0.1,
        wave_dim=128,
        decoder_dim=256,
        decoder_depth=2,
        decoder_heads=8,
    ),
    # SAM2 Hiera-L trunk (sam2.1_hiera_large.pt).
    "large": ModelConfig(
        size="large",
        embed_dim=144,
        num_heads=2,
        stages=(2, 6, 36, 4),
        window_spec=(8, 4, 16, 8),
        global_att_blocks=(23, 33, 43),
        pos_bkg=(7, 7),
        drop_path=0.2,
        wave_dim=128,
        decoder_dim=256,
        decoder_depth=2,
        decoder_heads=8,
    ),
}
"""Presets: ``tiny`` (CPU), and ``small``/``base``/``large`` matching SAM2 Hiera-T/B+/L."""


def model_config(size: str, **overrides: Any) -> ModelConfig:
    """Return a preset (``tiny``, ``small``, ``base``, ``large``) with overrides applied."""
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; known: {', '.join(MODEL_SIZES)}")
    cfg = replace(MODEL_SIZES[size])
    return ModelConfig.from_dict({**cfg.to_dict(), **overrides})


# --- building blocks -------------------------------------------------------------------------


class MLP(nn.Module):
    """Linear layers with GELU in between (``layers.N`` names as SAM2)."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int, num_layers: int = 2) -> None:
        super().__init__()
        dims = [dim_in] + [hidden] * (num_layers - 1) + [dim_out]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layers."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.gelu(x)
        return x


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample with probability ``p``."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale or drop ``x`` per sample (training only)."""
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device) >= self.p
        return x * keep / (1.0 - self.p)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a ``(B, C, H, W)`` tensor."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise channels."""
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def window_partition(x: torch.Tensor, ws: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(B, H, W, C)`` -> ``(B * nWin, ws, ws, C)`` windows, zero-padding to a multiple."""
    b, h, w, c = x.shape
    ph, pw = (ws - h % ws) % ws, (ws - w % ws) % ws
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    x = x.view(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws, ws, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, ws: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`, cropping the padding."""
    hp, wp = pad_hw
    h, w = hw
    b = windows.shape[0] // ((hp // ws) * (wp // ws))
    x = windows.reshape(b, hp // ws, wp // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, hp, wp, -1)
    return x[:, :h, :w].contiguous()


def _pool(x: torch.Tensor, pool: nn.Module | None) -> torch.Tensor:
    """Apply a 2-D pooling to ``(B, H, W, C)``."""
    if pool is None:
        return x
    pooled: torch.Tensor = pool(x.permute(0, 3, 1, 2))
    return pooled.permute(0, 2, 3, 1)


# --- wavelength-conditioned patch embedding ---------------------------------------------------


def wavelength_encoding(wavelengths_um: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal encoding of log-wavelength.

    The position of a band is ``100 * ln(wavelength / 1 nm)`` (443 nm -> 609, C-band SAR
    55.5 mm -> 1783), encoded as in DOFA / transformers with ``dim / 2`` frequencies
    ``10000 ** (-i / (dim / 2))``. The log scale spans visible light to radar; the factor 100
    keeps neighbouring bands (B08 842 nm vs B8A 865 nm) apart.

    Args:
        wavelengths_um: ``(C,)`` wavelengths in micrometres.
        dim: Encoding size (even).

    Returns:
        ``(C, dim)`` encoding.

    """
    pos = 100.0 * torch.log(wavelengths_um.float().clamp_min(1e-6) * 1000.0)
    half = dim // 2
    omega = 1.0 / 10000 ** (torch.arange(half, device=pos.device, dtype=torch.float32) / half)
    angles = pos[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class WavelengthPatchEmbed(nn.Module):
    """Patch embedding whose kernel is generated from the input bands' wavelengths (DOFA).

    Each band becomes a token (wavelength encoding + polarisation embedding, through an MLP);
    a transformer layer mixes the band tokens with a learned bias token so each band's kernel
    knows which other bands are present; linear heads turn every band token into that band's
    ``embed_dim x k x k`` kernel slice and the bias token into the bias. The kernels are applied
    as one strided convolution (stride 4, padding k // 2, as SAM2's patch embedding). There is
    no normalisation after it: a per-pixel LayerNorm would discard overall brightness, which
    separates e.g. snow from bare ground.

    Args:
        embed_dim: Output channels.
        kernel: Kernel size.
        stride: Stride.
        wave_dim: Width of the hypernetwork.
        heads: Attention heads of the band mixer.
        n_pol: Number of polarisation codes.

    """

    def __init__(
        self,
        embed_dim: int,
        kernel: int = 7,
        stride: int = 4,
        wave_dim: int = 64,
        heads: int = 4,
        n_pol: int = 5,
    ) -> None:
        super().__init__()
        self.embed_dim, self.kernel, self.stride, self.wave_dim = (
            embed_dim,
            kernel,
            stride,
            wave_dim,
        )
        self.pol_embed = nn.Embedding(n_pol, wave_dim)
        self.band_mlp = MLP(wave_dim, wave_dim * 2, wave_dim)
        self.bias_token = nn.Parameter(torch.zeros(1, 1, wave_dim))
        self.mixer = nn.TransformerEncoderLayer(
            wave_dim, heads, wave_dim * 2, dropout=0.0, batch_first=True, norm_first=True
        )
        self.norm = nn.LayerNorm(wave_dim)
        self.to_weight = nn.Linear(wave_dim, embed_dim * kernel * kernel)
        self.to_bias = nn.Linear(wave_dim, embed_dim)
        nn.init.normal_(self.pol_embed.weight, std=0.02)
        nn.init.trunc_normal_(self.bias_token, std=0.02)

    def generate(
        self, wavelengths_um: torch.Tensor, polarisations: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the convolution ``(weight (D, C, k, k), bias (D,))`` for a band set."""
        wl = wavelengths_um.reshape(-1).float()
        c = wl.shape[0]
        pol = (
            torch.zeros(c, dtype=torch.long, device=wl.device)
            if polarisations is None
            else polarisations.reshape(-1).long().to(wl.device)
        )
        tokens = wavelength_encoding(wl, self.wave_dim) + self.pol_embed(pol)
        tokens = self.band_mlp(tokens)[None]
        tokens = torch.cat([tokens, self.bias_token], dim=1)
        tokens = self.norm(self.mixer(tokens))[0]
        k = self.kernel
        weight = self.to_weight(tokens[:c]).view(c, self.embed_dim, k, k).transpose(0, 1)
        weight = weight / math.sqrt(c * k * k)
        return weight, self.to_bias(tokens[c])

    def forward(
        self,
        x: torch.Tensor,
        wavelengths_um: torch.Tensor,
        polarisations: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embed ``x (B, C, H, W)`` -> ``(B, H / stride, W / stride, embed_dim)``."""
        if wavelengths_um.ndim == 2:  # (B, C): one band set per batch
            wavelengths_um = wavelengths_um[0]
            polarisations = None if polarisations is None else polarisations[0]
        if wavelengths_um.numel() != x.shape[1]:
            raise ValueError(
                f"{x.shape[1]} input bands but {wavelengths_um.numel()} wavelengths given"
            )
        weight, bias = self.generate(wavelengths_um.to(x.device), polarisations)
        y = F.conv2d(x, weight, bias, stride=self.stride, padding=self.kernel // 2)
        return y.permute(0, 2, 3, 1)


def high_frequency(x: torch.Tensor, kernel: int = 5) -> torch.Tensor:
    """Return the high-frequency part of an image: ``x`` minus its ``kernel``-box blur.

    The blur uses reflection padding so borders carry no artificial edges.
    """
    pad = kernel // 2
    blurred = F.avg_pool2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), kernel, stride=1)
    return x - blurred


# --- Hiera trunk with high-frequency fusion ---------------------------------------------------


class MultiScaleAttention(nn.Module):
    """Self-attention with optional query pooling (SAM2 names: ``qkv``, ``proj``)."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: nn.Module | None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, H', W', C_out)``."""
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1)
        q, k, v = torch.unbind(qkv, 2)
        if self.q_pool is not None:
            q = _pool(q.reshape(b, h, w, -1), self.q_pool)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )
        proj: torch.Tensor = self.proj(out.transpose(1, 2).reshape(b, h, w, -1))
        return proj


class MultiScaleBlock(nn.Module):
    """A Hiera block (SAM2 names: ``norm1``, ``attn``, ``norm2``, ``mlp``, ``proj``)."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float,
        drop_path: float,
        q_stride: tuple[int, int] | None,
        window_size: int,
    ) -> None:
        super().__init__()
        self.dim, self.dim_out, self.window_size, self.q_stride = (
            dim,
            dim_out,
            window_size,
            q_stride,
        )
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.pool = nn.MaxPool2d(q_stride, q_stride) if q_stride else None
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, self.pool)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, 2)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, H', W', C_out)``."""
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = _pool(self.proj(x), self.pool)
        ws = self.window_size
        if ws > 0:
            h, w = x.shape[1:3]
            x, pad_hw = window_partition(x, ws)
        x = self.attn(x)
        if ws > 0:
            if self.q_stride:
                ws = ws // self.q_stride[0]
                h, w = shortcut.shape[1:3]
                pad_hw = (h + (ws - h % ws) % ws, w + (ws - w % ws) % ws)
            x = window_unpartition(x, ws, pad_hw, (h, w))
        x = shortcut + self.drop_path(x)
        mlp: torch.Tensor = self.drop_path(self.mlp(self.norm2(x)))
        return x + mlp


def fusion_heads(dim: int) -> int:
    """Heads of a :class:`HighFrequencyFusion` over ``dim`` channels: ~32 channels per head.

    The largest count up to ``dim // 32`` that divides ``dim``: Hiera-B+'s first stage has 112
    channels, and 112 // 32 = 3 heads would not split them (every forward pass failed).
    """
    heads = max(1, dim // 32)
    while dim % heads:
        heads -= 1
    return heads


class HighFrequencyFusion(nn.Module):
    """Inject high-frequency features into a block's output by gated cross-attention.

    Block tokens (queries) attend to the high-frequency tokens (keys, values) of the same
    ``window x window`` neighbourhood; the result is added through a per-channel gate
    ``tanh(g)`` (``g`` initialised small, so the pretrained path dominates at the start).

    Args:
        dim: Channels of the block output and of the high-frequency level.
        num_heads: Attention heads.
        window: Window size in tokens.
        gate_init: Initial gate value.

    """

    def __init__(self, dim: int, num_heads: int, window: int, gate_init: float) -> None:
        super().__init__()
        self.num_heads, self.window = num_heads, window
        self.norm_x = nn.LayerNorm(dim, eps=1e-6)
        self.norm_hf = nn.LayerNorm(dim, eps=1e-6)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        self.gate = nn.Parameter(torch.full((dim,), float(gate_init)))

    def forward(self, x: torch.Tensor, hf: torch.Tensor) -> torch.Tensor:
        """Fuse ``hf (B, H, W, C)`` into ``x (B, H, W, C)``."""
        b, h, w, c = x.shape
        ws = min(self.window, max(h, w))
        xq, pad_hw = window_partition(self.norm_x(x), ws)
        kv, _ = window_partition(self.norm_hf(hf), ws)
        n = xq.shape[0]
        q = self.q(xq).reshape(n, ws * ws, self.num_heads, -1).transpose(1, 2)
        k, v = self.kv(kv).reshape(n, ws * ws, 2, self.num_heads, -1).unbind(2)
        out = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2))
        out = self.proj(out.transpose(1, 2).reshape(n, ws, ws, c))
        return x + torch.tanh(self.gate) * window_unpartition(out, ws, pad_hw, (h, w))


class HieraTrunk(nn.Module):
    """SAM2's Hiera with a wavelength-conditioned patch embedding and HF fusion per block.

    Args:
        cfg: Model hyper-parameters.

    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim, heads = cfg.embed_dim, cfg.num_heads
        self.patch_embed = WavelengthPatchEmbed(
            dim, cfg.patch_kernel, 4, cfg.wave_dim, cfg.wave_heads
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, dim, *cfg.pos_bkg))
        self.pos_embed_window = nn.Parameter(
            torch.zeros(1, dim, cfg.window_spec[0], cfg.window_spec[0])
        )
        depth = sum(cfg.stages)
        self.stage_ends = [sum(cfg.stages[: i + 1]) - 1 for i in range(len(cfg.stages))]
        q_pool_blocks = [e + 1 for e in self.stage_ends[:-1]]
        dpr = torch.linspace(0, cfg.drop_path, depth).tolist()
        self.blocks = nn.ModuleList()
        self.block_stage: list[int] = []
        stage = 1
        for i in range(depth):
            dim_out = dim
            window = cfg.window_spec[stage - 1]
            if i in cfg.global_att_blocks:
                window = 0
            if i - 1 in self.stage_ends:
                dim_out, heads, stage = dim * 2, heads * 2, stage + 1
            self.blocks.append(
                MultiScaleBlock(
                    dim,
                    dim_out,
                    heads,
                    cfg.mlp_ratio,
                    dpr[i],
                    (2, 2) if i in q_pool_blocks else None,
                    window,
                )
            )
            self.block_stage.append(stage - 1)
            dim = dim_out
        self.channels = [cfg.embed_dim * 2**s for s in range(len(cfg.stages))]
        # high-frequency branch: embedding at stride 4, then one strided conv per stage
        self.hf_embed = WavelengthPatchEmbed(
            cfg.embed_dim, cfg.patch_kernel, 4, cfg.wave_dim, cfg.wave_heads
        )
        self.hf_down = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(self.channels[s], self.channels[s + 1], 3, stride=2, padding=1),
                LayerNorm2d(self.channels[s + 1]),
            )
            for s in range(len(cfg.stages) - 1)
        )
        self.fusions = nn.ModuleList(
            HighFrequencyFusion(
                self.channels[s], fusion_heads(self.channels[s]), cfg.hf_window, cfg.hf_gate_init
            )
            for s in self.block_stage
        )
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.pos_embed_window, std=0.02)

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        ws = self.pos_embed_window.shape[-1]
        hp, wp = math.ceil(h / ws) * ws, math.ceil(w / ws) * ws
        pe = F.interpolate(self.pos_embed, size=(hp, wp), mode="bicubic", align_corners=False)
        pe = pe + self.pos_embed_window.tile(1, 1, hp // ws, wp // ws)
        return pe[:, :, :h, :w].permute(0, 2, 3, 1)

    def forward(
        self,
        x: torch.Tensor,
        wavelengths_um: torch.Tensor,
        polarisations: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Return the 4 stage outputs ``(B, C_s, H / 2^(s+2), W / 2^(s+2))``."""
        hf = self.hf_embed(high_frequency(x, self.cfg.hf_kernel), wavelengths_um, polarisations)
        hf_levels = [hf]
        for down in self.hf_down:
            hf = down(hf.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            hf_levels.append(hf)
        x = self.patch_embed(x, wavelengths_um, polarisations)
        x = x + self._pos_embed(*x.shape[1:3])
        outputs = []
        for i, (block, fusion) in enumerate(zip(self.blocks, self.fusions, strict=True)):
            x = block(x)
            level = hf_levels[self.block_stage[i]]
            x = fusion(x, level[:, : x.shape[1], : x.shape[2]])
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs


class ImageEncoder(nn.Module):
    """Holds the trunk as ``image_encoder.trunk`` (SAM2's naming)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.trunk = HieraTrunk(cfg)

    def forward(
        self, x: torch.Tensor, wavelengths_um: torch.Tensor, pol: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Run the trunk."""
        stages: list[torch.Tensor] = self.trunk(x, wavelengths_um, pol)
        return stages


# --- decoder ---------------------------------------------------------------------------------


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier positional encoding of normalised pixel coordinates (as SAM)."""

    gaussian: torch.Tensor  # a buffer (register_buffer): declared for the type checker

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("gaussian", torch.randn(2, dim // 2))

    def forward(self, h: int, w: int) -> torch.Tensor:
        """Return ``(h * w, dim)``."""
        dev = self.gaussian.device
        ys = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) / w
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
        proj = 2 * math.pi * (2 * grid - 1) @ self.gaussian
        return torch.cat([proj.sin(), proj.cos()], -1)


class TwoWayLayer(nn.Module):
    """Prompts attend to themselves and the image; the image attends back to the prompts."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.t2i = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.i2t = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = MLP(dim, dim * 4, dim)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(4))

    def forward(
        self, tokens: torch.Tensor, image: torch.Tensor, pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update ``tokens (B, K, D)`` and ``image (B, N, D)``; ``pe (N, D)``."""
        t = self.norms[0](tokens)
        tokens = tokens + self.self_attn(t, t, t, need_weights=False)[0]
        t = self.norms[1](tokens)
        tokens = tokens + self.t2i(t, image + pe, image, need_weights=False)[0]
        tokens = tokens + self.mlp(self.norms[2](tokens))
        t = self.norms[3](tokens)
        image = image + self.i2t(image + pe, t, t, need_weights=False)[0]
        return tokens, image


class MaskDecoder(nn.Module):
    """Prompted mask decoder: one logit map per class prompt.

    Args:
        cfg: Model hyper-parameters.
        channels: Channels of the 4 encoder stages.

    """

    def __init__(self, cfg: ModelConfig, channels: Sequence[int]) -> None:
        super().__init__()
        d = cfg.decoder_dim
        self.proj3 = nn.Conv2d(channels[2], d, 1)
        self.proj4 = nn.Conv2d(channels[3], d, 1)
        self.mix = nn.Sequential(nn.Conv2d(d, d, 3, padding=1), LayerNorm2d(d), nn.GELU())
        self.pe = PositionEmbeddingRandom(d)
        # sentence embeddings are unit vectors (elements ~ 1/sqrt(T)): normalise them first so
        # the differences between class prompts are not lost in a small-scale projection
        self.prompt_mlp = nn.Sequential(nn.LayerNorm(cfg.text_dim), MLP(cfg.text_dim, d, d))
        self.layers = nn.ModuleList(
            TwoWayLayer(d, cfg.decoder_heads) for _ in range(cfg.decoder_depth)
        )
        self.token_norm = nn.LayerNorm(d)
        self.image_norm = nn.LayerNorm(d)
        self.up1 = nn.ConvTranspose2d(d, d // 4, 2, stride=2)
        self.conv_s1 = nn.Conv2d(channels[1], d // 4, 1)
        self.norm_up1 = LayerNorm2d(d // 4)
        self.up2 = nn.ConvTranspose2d(d // 4, d // 8, 2, stride=2)
        self.conv_s0 = nn.Conv2d(channels[0], d // 8, 1)
        p = cfg.pixel_dim
        self.to_pixel = nn.Conv2d(d // 8, p, 1)
        self.pixel_proj = nn.Linear(p, p)
        self.refine = nn.Sequential(nn.Conv2d(p, p, 3, padding=1), LayerNorm2d(p), nn.GELU())
        self.hyper = MLP(d, d, p, 3)
        self.pixel_dim = p

    def stride16(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """The decoder input: ``proj(stage 3) + upsample(proj(stage 4))`` at stride 16."""
        s3, s4 = feats[2], feats[3]
        f: torch.Tensor = self.proj3(s3) + F.interpolate(
            self.proj4(s4), size=s3.shape[-2:], mode="bilinear", align_corners=False
        )
        mixed: torch.Tensor = self.mix(f)
        return f + mixed

    def forward(
        self,
        feats: Sequence[torch.Tensor],
        text: torch.Tensor,
        f16: torch.Tensor | None = None,
        pixels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return logits for text embeddings ``(B, K, T)``.

        Args:
            feats: The 4 encoder stages.
            text: Class text embeddings ``(B, K, T)``.
            f16: :meth:`stride16` of ``feats`` when already computed.
            pixels: Full-resolution pixel features ``(B, H, W, pixel_dim)``; without them the
                logits stay at stride 4.

        Returns:
            ``(B, K, H, W)`` with ``pixels``, else ``(B, K, H / 4, W / 4)``.

        """
        f = self.stride16(feats) if f16 is None else f16
        b, d, h, w = f.shape
        tokens = self.prompt_mlp(text)
        image = f.flatten(2).transpose(1, 2)
        pe = self.pe(h, w)[None]
        for layer in self.layers:
            tokens, image = layer(tokens, image, pe)
        tokens = self.token_norm(tokens)
        image = self.image_norm(image).transpose(1, 2).reshape(b, d, h, w)
        x = self.up1(image) + self.conv_s1(feats[1])
        x = F.gelu(self.norm_up1(x))
        x = self.to_pixel(F.gelu(self.up2(x) + self.conv_s0(feats[0])))
        if pixels is not None:
            x = F.interpolate(x, size=pixels.shape[1:3], mode="bilinear", align_corners=False)
            x = x + self.pixel_proj(pixels).permute(0, 3, 1, 2)
            x = x + self.refine(x)
        hyper = self.hyper(tokens)
        return torch.einsum("bkc,bchw->bkhw", hyper, x) / math.sqrt(self.pixel_dim)


class ImageTextPrior(nn.Module):
    """A CLIP-like image-text prior: image features projected into the text space.

    ``presence(k) = s * cos(P(mean_x f(x)), t_k) + b`` scores whether class ``k`` is in the
    image (trained with a multi-label loss on the classes present in the labels); the same
    projection applied per pixel gives a dense prior map ``softmax_k(s * cos(P f(x), t_k))``.

    Args:
        dim: Channels of the stride-16 decoder input ``f``.
        text_dim: Size of the text embeddings.

    """

    def __init__(self, dim: int, text_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, text_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-1.0))

    def presence(self, f16: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Image-level presence logits ``(B, K)``."""
        img = F.normalize(self.proj(f16.mean((2, 3))), dim=-1)
        sims = torch.einsum("bt,bkt->bk", img, F.normalize(text, dim=-1))
        return self.logit_scale.exp() * sims + self.logit_bias

    def dense(self, f16: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Per-pixel similarity logits ``(B, K, h, w)`` at stride 16."""
        img = F.normalize(self.proj(f16.permute(0, 2, 3, 1)), dim=-1)
        sims = torch.einsum("bhwt,bkt->bkhw", img, F.normalize(text, dim=-1))
        return self.logit_scale.exp() * sims


# --- the model -------------------------------------------------------------------------------


class LandSegmenter(nn.Module):
    """Wavelength-conditioned Hiera encoder + text-prompted mask decoder + image-text prior.

    Args:
        cfg: Model hyper-parameters (see :data:`MODEL_SIZES`).

    """

    def __init__(self, cfg: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = cfg or ModelConfig()
        self.image_encoder = ImageEncoder(self.config)
        channels = self.image_encoder.trunk.channels
        self.decoder = MaskDecoder(self.config, channels)
        self.prior = ImageTextPrior(self.config.decoder_dim, self.config.text_dim)
        self.pixel_embed = WavelengthPatchEmbed(
            self.config.pixel_dim, 3, 1, self.config.wave_dim, self.config.wave_heads
        )
        self.size_divisor = 4 * 2 ** (len(self.config.stages) - 1)
        # ViT-style init (truncated normal, std 0.02) in the trunk, as SAM2; the shallow decoder
        # and heads keep PyTorch's fan-in init, which lets them learn fast from scratch
        self.image_encoder.apply(_init_weights)
        for m in self.modules():
            if isinstance(m, WavelengthPatchEmbed):
                _init_hypernetwork(m)

    def encode(
        self,
        image: torch.Tensor,
        wavelengths_um: torch.Tensor,
        polarisations: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Encode an image (padded to a multiple of 32 px).

        Returns:
            The 4 encoder stages ``(B, C_s, H / 2^(s+2), W / 2^(s+2))`` followed by the
            full-resolution pixel features ``(B, H, W, pixel_dim)`` of a third
            wavelength-conditioned embedding (kernel 3, stride 1) that the decoder adds back
            after its upsampling, so masks keep 10 m detail.

        """
        image = image * self.config.input_gain
        h, w = image.shape[-2:]
        d = self.size_divisor
        ph, pw = (d - h % d) % d, (d - w % d) % d
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            image = F.pad(image, (0, pw, 0, ph), mode=mode)
        feats = self.image_encoder(image, wavelengths_um, polarisations)
        return [*feats, self.pixel_embed(image, wavelengths_um, polarisations)]

    def decode(
        self,
        feats: Sequence[torch.Tensor],
        text: torch.Tensor,
        out_size: tuple[int, int],
        with_prior: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Predict masks for class prompts from encoded features.

        Args:
            feats: Output of :meth:`encode`.
            text: Class text embeddings ``(K, T)`` or ``(B, K, T)``.
            out_size: Input size ``(H, W)`` before padding.
            with_prior: Also return the dense image-text prior map.

        Returns:
            ``logits (B, K, H, W)``, ``presence_logits (B, K)`` and, if asked,
            ``prior_logits (B, K, H, W)``.

        """
        b = feats[0].shape[0]
        if text.ndim == 2:
            text = text[None].expand(b, -1, -1)
        text = text.to(feats[0].device, feats[0].dtype)
        f16 = self.decoder.stride16(feats)
        logits = self.decoder(feats, text, f16, feats[4])
        padded = tuple(feats[4].shape[1:3])
        out = {
            "logits": logits[..., : out_size[0], : out_size[1]],
            "presence_logits": self.prior.presence(f16, text),
        }
        if with_prior:
            dense = F.interpolate(
                self.prior.dense(f16, text), size=padded, mode="bilinear", align_corners=False
            )
            out["prior_logits"] = dense[..., : out_size[0], : out_size[1]]
        return out

    def forward(
        self,
        image: torch.Tensor,
        wavelengths_um: torch.Tensor,
        text: torch.Tensor,
        polarisations: torch.Tensor | None = None,
        with_prior: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Segment ``image (B, C, H, W)`` into the classes whose text embeddings are given.

        Args:
            image: Normalised bands.
            wavelengths_um: ``(C,)`` (or ``(B, C)``, identical rows) band wavelengths.
            text: Class text embeddings ``(K, T)`` or ``(B, K, T)``.
            polarisations: ``(C,)`` polarisation codes (0 optical); ``None`` = all optical.
            with_prior: Also return the dense image-text prior.

        Returns:
            See :meth:`decode`.

        """
        feats = self.encode(image, wavelengths_um, polarisations)
        return self.decode(feats, text, (image.shape[-2], image.shape[-1]), with_prior)

    def num_parameters(self) -> int:
        """Trainable parameter count."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _init_hypernetwork(m: WavelengthPatchEmbed) -> None:
    # generated kernels start with unit-variance entries before the 1/sqrt(C k k) scaling
    nn.init.normal_(m.to_weight.weight, std=1.0 / math.sqrt(m.wave_dim))
    nn.init.zeros_(m.to_weight.bias)


# --- SAM2 weights ----------------------------------------------------------------------------


def load_sam2_weights(model: LandSegmenter, path: str | Path) -> dict[str, list[str]]:
    """Load the parts of a local SAM2 checkpoint that match the model, by name and shape.

    SAM2 checkpoints (``sam2.1_hiera_*.pt``) store ``{"model": state_dict}`` with the trunk under
    ``image_encoder.trunk.``, the names this model uses. Nothing is downloaded.

    Args:
        model: The model to fill.
        path: Local checkpoint file.

    Returns:
        ``loaded`` (names copied), ``shape_mismatch`` (``name: ckpt shape vs model shape``),
        ``unused`` (checkpoint tensors with no counterpart, e.g. SAM2's neck and memory
        modules, its RGB patch embedding) and ``not_in_checkpoint`` (model tensors left at
        their initialisation: the wavelength adapter, high-frequency fusion, decoder ...).

    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SAM2 checkpoint {path} not found (nothing is downloaded)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
    own = model.state_dict()
    loaded, mismatch, unused = [], [], []
    with torch.no_grad():
        for name, tensor in state.items():
            if name not in own:
                unused.append(name)
            elif tuple(own[name].shape) != tuple(tensor.shape):
                mismatch.append(f"{name}: {tuple(tensor.shape)} vs {tuple(own[name].shape)}")
            else:
                own[name].copy_(tensor.to(own[name].dtype))
                loaded.append(name)
    taken = set(loaded) | {m.split(":")[0] for m in mismatch}
    return {
        "loaded": loaded,
        "shape_mismatch": mismatch,
        "unused": unused,
        "not_in_checkpoint": [n for n in own if n not in taken],
    }
