"""MViTv2-S (Li et al., CVPR 2022, "MViTv2: Improved Multiscale Vision Transformers") in torchvision's layout.

A Kinetics-400 baseline of Ke et al. (their "MViT"). Rebuilt with torchvision's ``mvit_v2_s`` names
so ``mvit_v2_s-ae3be167.pth`` loads: ``conv_proj`` (3x7x7 patch convolution, stride 2x4x4),
``pos_encoding.class_token``, ``blocks.{0-15}`` (``norm1``, ``attn.qkv``, ``attn.project.0``,
``attn.pool_{q,k,v}.pool`` (depthwise 3x3x3 pooling convolutions) and ``.norm_act.0`` (LayerNorm),
``attn.rel_pos_{h,w,t}`` (decomposed relative positions), ``norm2``, ``mlp.0``, ``mlp.3``,
``project`` where the width changes), ``norm``, ``head.1``.

MViTv2 details kept: pooling residual (the pooled query is added to the attention output, class
token excluded), projection after attention, relative position tables sized for the published
16 x 224 x 224 clip and interpolated linearly for other token grids (so CT windows of other sizes
work with the released weights). The classifier reads the normalised class token, as published.
Input: grey CT (B, 1, T, H, W) repeated to RGB with the mean/std 0.45/0.225 of these weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genesis.models._pretrained import PretrainedBackbone
from genesis.models.base import register_model
from genesis.models.swin3d import StochasticDepth

MVIT_MEAN = (0.45, 0.45, 0.45)
MVIT_STD = (0.225, 0.225, 0.225)


@dataclass(frozen=True)
class MSBlockConfig:
    num_heads: int
    input_channels: int
    output_channels: int
    kernel_q: tuple[int, int, int]
    kernel_kv: tuple[int, int, int]
    stride_q: tuple[int, int, int]
    stride_kv: tuple[int, int, int]


def _v2_s_blocks() -> list[MSBlockConfig]:
    """The 16 blocks of MViTv2-S (torchvision's configuration)."""
    heads = [1, 2, 2, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 8, 8]
    cin = [96, 96, 192, 192] + [384] * 11 + [768]
    cout = [96, 192, 192] + [384] * 11 + [768, 768]
    q_down = {1, 3, 14}  # blocks that halve the token grid in-plane
    kv_stride = [8, 4, 4] + [2] * 11 + [1, 1]
    return [MSBlockConfig(heads[i], cin[i], cout[i], (3, 3, 3), (3, 3, 3),
                          (1, 2, 2) if i in q_down else (1, 1, 1), (1, kv_stride[i], kv_stride[i]))
            for i in range(16)]


class Pool(nn.Module):
    """Depthwise pooling convolution ``pool`` over a head's tokens, then ``norm_act`` (class token kept)."""

    def __init__(self, pool: nn.Module, norm: nn.Module | None) -> None:
        super().__init__()
        self.pool = pool
        self.norm_act = nn.Sequential(norm) if norm is not None else None

    def forward(self, x: torch.Tensor, thw: tuple[int, int, int]) -> tuple[torch.Tensor, tuple[int, int, int]]:
        # x: (B, heads, 1 + T*H*W, C)
        cls, tokens = x[:, :, :1], x[:, :, 1:]
        b, n, _, c = tokens.shape
        tokens = tokens.transpose(2, 3).reshape(b * n, c, *thw)
        tokens = self.pool(tokens)
        new_thw = tuple(tokens.shape[2:])
        tokens = tokens.reshape(b, n, c, -1).transpose(2, 3)
        x = torch.cat([cls, tokens], dim=2)
        if self.norm_act is not None:
            x = self.norm_act(x)
        return x, new_thw  # type: ignore[return-value]


def _resize_table(table: torch.Tensor, length: int) -> torch.Tensor:
    if table.shape[0] == length:
        return table
    return F.interpolate(table.t()[None], size=length, mode="linear")[0].t()


def _rel_index(q: int, k: int, device: torch.device) -> torch.Tensor:
    """Relative distance indices (q, k) into a table of 2 * max(q, k) - 1 entries (MViTv2)."""
    q_ratio, k_ratio = max(k / q, 1.0), max(q / k, 1.0)
    dist = torch.arange(q, device=device)[:, None] * q_ratio - (torch.arange(k, device=device)[None, :] + (1.0 - k)) * k_ratio
    return dist.long()


def add_rel_pos(attn: torch.Tensor, q: torch.Tensor, q_thw: Sequence[int], k_thw: Sequence[int],
                rel_t: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor) -> torch.Tensor:
    """Add the decomposed relative position term q . R(t) + q . R(h) + q . R(w) to ``attn`` (patch tokens)."""
    (qt, qh, qw), (kt, kh, kw) = q_thw, k_thw
    tables = [_resize_table(r, 2 * max(a, b) - 1) for r, a, b in ((rel_t, qt, kt), (rel_h, qh, kh), (rel_w, qw, kw))]
    rt = tables[0][_rel_index(qt, kt, q.device)]
    rh = tables[1][_rel_index(qh, kh, q.device)]
    rw = tables[2][_rel_index(qw, kw, q.device)]
    b, n, _, d = q.shape
    r_q = q[:, :, 1:].reshape(b, n, qt, qh, qw, d)
    rel_t_q = torch.einsum("bythwc,tkc->bythwk", r_q, rt)
    rel_h_q = torch.einsum("bythwc,hkc->bythwk", r_q, rh)
    rel_w_q = torch.einsum("bythwc,wkc->bythwk", r_q, rw)
    rel = (rel_t_q[..., :, None, None] + rel_h_q[..., None, :, None] + rel_w_q[..., None, None, :])
    attn = attn.clone()
    attn[:, :, 1:, 1:] += rel.reshape(b, n, qt * qh * qw, kt * kh * kw)
    return attn


class MultiscaleAttention(nn.Module):
    """Pooling attention: q, k, v pooled by strided depthwise convolutions, relative positions, pool residual."""

    def __init__(self, input_size: Sequence[int], dim: int, dim_out: int, cfg: MSBlockConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = dim_out // cfg.num_heads
        self.dim_out = dim_out
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.project = nn.Sequential(nn.Linear(dim_out, dim_out))

        def pool(kernel: Sequence[int], stride: Sequence[int]) -> Pool:
            conv = nn.Conv3d(self.head_dim, self.head_dim, tuple(kernel), stride=tuple(stride),
                             padding=tuple(k // 2 for k in kernel), groups=self.head_dim, bias=False)
            return Pool(conv, nn.LayerNorm(self.head_dim, eps=1e-6))

        self.pool_q = pool(cfg.kernel_q, cfg.stride_q)
        self.pool_k = pool(cfg.kernel_kv, cfg.stride_kv)
        self.pool_v = pool(cfg.kernel_kv, cfg.stride_kv)
        size = max(input_size[1:])
        q_size, kv_size = size // cfg.stride_q[1], size // cfg.stride_kv[1]
        spatial = 2 * max(q_size, kv_size) - 1
        self.rel_pos_h = nn.Parameter(torch.zeros(spatial, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(spatial, self.head_dim))
        self.rel_pos_t = nn.Parameter(torch.zeros(2 * input_size[0] - 1, self.head_dim))
        for p in (self.rel_pos_h, self.rel_pos_w, self.rel_pos_t):
            nn.init.trunc_normal_(p, std=0.02)

    def forward(self, x: torch.Tensor, thw: tuple[int, int, int]) -> tuple[torch.Tensor, tuple[int, int, int]]:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).transpose(1, 3).unbind(dim=2)
        k, k_thw = self.pool_k(k, thw)
        v, _ = self.pool_v(v, thw)
        q, thw = self.pool_q(q, thw)
        attn = (self.scale * q) @ k.transpose(2, 3)
        attn = add_rel_pos(attn, q, thw, k_thw, self.rel_pos_t, self.rel_pos_h, self.rel_pos_w)
        out = attn.softmax(dim=-1) @ v
        out = torch.cat([out[:, :, :1], out[:, :, 1:] + q[:, :, 1:]], dim=2)  # pooling residual, class token excluded
        out = out.transpose(1, 2).reshape(b, -1, self.dim_out)
        return self.project(out), thw


class MultiscaleBlock(nn.Module):
    """``norm1`` -> attention (+ pooled skip) -> ``norm2`` -> ``mlp`` (+ skip); ``project`` widens after attention."""

    def __init__(self, input_size: Sequence[int], cfg: MSBlockConfig, stochastic_depth_prob: float) -> None:
        super().__init__()
        self.pool_skip = None
        if math.prod(cfg.stride_q) > 1:
            kernel = [s + 1 if s > 1 else s for s in cfg.stride_q]
            self.pool_skip = Pool(nn.MaxPool3d(kernel, stride=cfg.stride_q, padding=[k // 2 for k in kernel]), None)
        dim_out = cfg.output_channels
        self.norm1 = nn.LayerNorm(cfg.input_channels, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.attn = MultiscaleAttention(input_size, cfg.input_channels, dim_out, cfg)
        self.mlp = nn.Sequential(nn.Linear(dim_out, 4 * dim_out), nn.GELU(), nn.Dropout(0.0),
                                 nn.Linear(4 * dim_out, dim_out), nn.Dropout(0.0))
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob)
        self.project = nn.Linear(cfg.input_channels, dim_out) if cfg.input_channels != dim_out else None

    def forward(self, x: torch.Tensor, thw: tuple[int, int, int]) -> tuple[torch.Tensor, tuple[int, int, int]]:
        x_norm = self.norm1(x)
        x_attn, new_thw = self.attn(x_norm, thw)
        skip = x if self.project is None else self.project(x_norm)
        if self.pool_skip is not None:
            skip = self.pool_skip(skip[:, None], thw)[0][:, 0]
        x = skip + self.stochastic_depth(x_attn)
        return x + self.stochastic_depth(self.mlp(self.norm2(x))), new_thw


class PositionalEncoding(nn.Module):
    """MViTv2 keeps only the learned ``class_token`` here (positions are relative, in attention)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.class_token = nn.Parameter(torch.zeros(dim))
        nn.init.trunc_normal_(self.class_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.class_token.expand(x.shape[0], 1, -1), x], dim=1)


class MViT(PretrainedBackbone):
    """MViTv2 with torchvision's parameter names.

    Args:
        spatial_size, temporal_size: the clip the relative-position tables are sized for (the
            published 224 x 224 x 16; other inputs interpolate the tables).
        num_classes: logits (400 = the Kinetics-400 checkpoint's head).
        dropout: before the head (0.5 as torchvision).
        stochastic_depth_prob: 0.2 as torchvision.
        in_channels: 1 (grey CT, repeated to RGB) or 3.
        normalize: apply the mean/std 0.45/0.225 of the released weights to inputs in [0, 1].
    """

    spatial_dims = 3
    head_path = "head.1"
    encoder_state_prefixes = ("conv_proj", "pos_encoding", "blocks", "norm")

    def __init__(self, spatial_size: Sequence[int] = (224, 224), temporal_size: int = 16, num_classes: int = 400,
                 dropout: float = 0.5, stochastic_depth_prob: float = 0.2, in_channels: int = 1,
                 normalize: bool = True) -> None:
        super().__init__()
        self._init_input(in_channels, normalize, MVIT_MEAN, MVIT_STD)
        self.num_classes = num_classes
        blocks = _v2_s_blocks()
        self.conv_proj = nn.Conv3d(3, blocks[0].input_channels, (3, 7, 7), stride=(2, 4, 4), padding=(1, 3, 3))
        size = [temporal_size // 2, spatial_size[0] // 4, spatial_size[1] // 4]
        self.pos_encoding = PositionalEncoding(blocks[0].input_channels)
        self.blocks = nn.ModuleList()
        for i, cfg in enumerate(blocks):
            self.blocks.append(MultiscaleBlock(size, cfg, stochastic_depth_prob * i / (len(blocks) - 1.0)))
            size = [s // st for s, st in zip(size, cfg.stride_q)]
        self.feature_dim = blocks[-1].output_channels
        self.norm = nn.LayerNorm(self.feature_dim, eps=1e-6)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.feature_dim, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Normalised tokens (B, 1 + T'H'W', 768) (class token first) and the final grid (T', H', W')."""
        x = self.conv_proj(self._prepare(x))
        thw: tuple[int, int, int] = tuple(x.shape[2:])  # type: ignore[assignment]
        x = self.pos_encoding(x.flatten(2).transpose(1, 2))
        for block in self.blocks:
            x, thw = block(x, thw)
        return self.norm(x), thw

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens as a map (B, 768, T/2, H/32, W/32); the class token is read by :meth:`pool`.

        The class token is carried as the map's mean offset: the map returned is the patch tokens
        plus (class token - their mean), so its global average is exactly the class token the
        published head classifies, and the map keeps the patch grid for inspection.
        """
        tokens, thw = self.tokens(x)
        cls, patches = tokens[:, :1], tokens[:, 1:]
        patches = patches + (cls - patches.mean(1, keepdim=True))
        return patches.transpose(1, 2).reshape(x.shape[0], -1, *thw)


@register_model("mvit_v2_s")
def mvit_v2_s(**kwargs: object) -> MViT:
    """MViTv2-S (torchvision Kinetics-400 ``mvit_v2_s-ae3be167.pth`` loads); arguments of :class:`MViT`."""
    return MViT(**kwargs)  # type: ignore[arg-type]
