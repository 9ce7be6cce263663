"""Video Swin Transformer (Liu et al., CVPR 2022) in torchvision's ``swin3d_t`` layout.

Ke et al.'s best model was a Kinetics-400 video Swin-T. The network is rebuilt with torchvision's
names so ``swin3d_t-7615ae03.pth`` loads: ``patch_embed.proj`` (2x4x4 patch convolution) and
``patch_embed.norm``; ``features.{0,2,4,6}.{i}`` (Swin blocks: ``norm1``, ``attn.qkv``,
``attn.proj``, ``attn.relative_position_bias_table``, the persistent ``attn.relative_position_index``
buffer, ``norm2``, ``mlp.0``, ``mlp.3``); ``features.{1,3,5}`` (patch merging: ``norm``,
``reduction``, merging only in-plane); ``norm``; ``head``.

Windows of 8x7x7 tokens, shifted by half a window in every other block; a window larger than the
token grid shrinks to it (no shift), so small CT windows work. Input: grey CT (B, 1, T, H, W)
repeated to RGB with the ImageNet mean/std (torchvision's transform for these weights).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from genesis.models._pretrained import IMAGENET_MEAN, IMAGENET_STD, PretrainedBackbone
from genesis.models.base import register_model


class StochasticDepth(nn.Module):
    """Drop a residual branch per sample with probability ``p`` in training (torchvision's "row" mode)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class ShiftedWindowAttention3d(nn.Module):
    """Window multi-head self-attention with a learned relative position bias (W-MSA / SW-MSA)."""

    def __init__(self, dim: int, window: Sequence[int], shift: Sequence[int], num_heads: int) -> None:
        super().__init__()
        self.window, self.shift, self.num_heads = list(window), list(shift), num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        wd, wh, ww = self.window
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * wd - 1) * (2 * wh - 1) * (2 * ww - 1), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(*(torch.arange(w) for w in self.window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (N, N, 3)
        rel = rel + torch.tensor([wd - 1, wh - 1, ww - 1])
        index = rel[..., 0] * (2 * wh - 1) * (2 * ww - 1) + rel[..., 1] * (2 * ww - 1) + rel[..., 2]
        # persistent, as torchvision (it is part of the released state dict)
        self.register_buffer("relative_position_index", index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h, w, c = x.shape
        window, shift = list(self.window), list(self.shift)
        for i, size in enumerate((t, h, w)):
            if size <= window[i]:  # the window covers the whole axis: no shift needed
                window[i], shift[i] = size, 0
        vol = window[0] * window[1] * window[2]
        bias = self.relative_position_bias_table[self.relative_position_index[:vol, :vol].reshape(-1)]
        bias = bias.view(vol, vol, -1).permute(2, 0, 1).unsqueeze(0)

        pads = [(window[i] - s % window[i]) % window[i] for i, s in enumerate((t, h, w))]
        x = F.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        tp, hp, wp = x.shape[1:4]
        if any(shift):
            x = torch.roll(x, shifts=(-shift[0], -shift[1], -shift[2]), dims=(1, 2, 3))
        nt, nh, nw = tp // window[0], hp // window[1], wp // window[2]
        n_windows = nt * nh * nw
        x = x.view(b, nt, window[0], nh, window[1], nw, window[2], c).permute(0, 1, 3, 5, 2, 4, 6, 7)
        x = x.reshape(b * n_windows, vol, c)

        head_dim = c // self.num_heads
        qkv = self.qkv(x).reshape(x.shape[0], vol, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * head_dim ** -0.5, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1) + bias
        if any(shift):
            mask = self._shift_mask((tp, hp, wp), window, shift, x)
            attn = attn.view(b, n_windows, self.num_heads, vol, vol) + mask[None, :, None]
            attn = attn.view(-1, self.num_heads, vol, vol)
        x = (attn.softmax(-1) @ v).transpose(1, 2).reshape(x.shape[0], vol, c)
        x = self.proj(x)

        x = x.view(b, nt, nh, nw, window[0], window[1], window[2], c).permute(0, 1, 4, 2, 5, 3, 6, 7)
        x = x.reshape(b, tp, hp, wp, c)
        if any(shift):
            x = torch.roll(x, shifts=tuple(shift), dims=(1, 2, 3))
        return x[:, :t, :h, :w].contiguous()

    @staticmethod
    def _shift_mask(size: tuple[int, int, int], window: list[int], shift: list[int], like: torch.Tensor) -> torch.Tensor:
        """-100 between tokens that the cyclic shift brought together from different regions."""
        region = like.new_zeros(size)
        count = 0
        bounds = [((0, -window[i]), (-window[i], -shift[i]), (-shift[i], None)) for i in range(3)]
        for d in bounds[0]:
            for hh in bounds[1]:
                for ww in bounds[2]:
                    region[d[0]:d[1], hh[0]:hh[1], ww[0]:ww[1]] = count
                    count += 1
        region = region.view(size[0] // window[0], window[0], size[1] // window[1], window[1],
                             size[2] // window[2], window[2]).permute(0, 2, 4, 1, 3, 5)
        region = region.reshape(-1, window[0] * window[1] * window[2])
        diff = region[:, None, :] - region[:, :, None]
        return torch.where(diff != 0, torch.full_like(diff, -100.0), torch.zeros_like(diff))


class SwinTransformerBlock(nn.Module):
    """``norm1`` -> ``attn`` (+ residual) -> ``norm2`` -> ``mlp`` (+ residual), with stochastic depth."""

    def __init__(self, dim: int, num_heads: int, window: Sequence[int], shift: Sequence[int],
                 stochastic_depth_prob: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ShiftedWindowAttention3d(dim, window, shift, num_heads)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob)
        self.norm2 = nn.LayerNorm(dim)
        # torchvision MLP: Linear, GELU, Dropout, Linear, Dropout -> parameters at mlp.0 and mlp.3
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(4 * dim, dim),
                                 nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.stochastic_depth(self.attn(self.norm1(x)))
        return x + self.stochastic_depth(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 in-plane neighbours concatenated (``norm`` on 4C) and reduced to 2C (``reduction``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-3:-1]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :], x[..., 1::2, 1::2, :]], -1)
        return self.reduction(self.norm(x))


class PatchEmbed3d(nn.Module):
    """Non-overlapping patch convolution ``proj`` then ``norm`` (input padded to whole patches)."""

    def __init__(self, patch: Sequence[int], embed_dim: int) -> None:
        super().__init__()
        self.patch = tuple(patch)
        self.proj = nn.Conv3d(3, embed_dim, kernel_size=self.patch, stride=self.patch)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = [(p - s % p) % p for p, s in zip(self.patch, x.shape[2:])]
        x = F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]))
        return self.norm(self.proj(x).permute(0, 2, 3, 4, 1))


class SwinTransformer3d(PretrainedBackbone):
    """3D Swin Transformer with torchvision's parameter names.

    Args:
        patch_size, embed_dim, depths, num_heads, window_size, stochastic_depth_prob: the
            architecture (``swin3d_t``: [2, 4, 4], 96, [2, 2, 6, 2], [3, 6, 12, 24], [8, 7, 7], 0.1).
        num_classes: logits (400 = the Kinetics-400 checkpoint's head).
        in_channels: 1 (grey CT, repeated to RGB) or 3.
        normalize: apply the ImageNet mean/std to inputs in [0, 1] (torchvision's preset for swin3d).
    """

    spatial_dims = 3
    head_path = "head"
    encoder_state_prefixes = ("patch_embed", "features", "norm")

    def __init__(self, patch_size: Sequence[int] = (2, 4, 4), embed_dim: int = 96,
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: Sequence[int] = (8, 7, 7), stochastic_depth_prob: float = 0.1, num_classes: int = 400,
                 in_channels: int = 1, normalize: bool = True) -> None:
        super().__init__()
        self._init_input(in_channels, normalize, IMAGENET_MEAN, IMAGENET_STD)
        self.num_classes = num_classes
        self.patch_embed = PatchEmbed3d(patch_size, embed_dim)
        layers: list[nn.Module] = []
        total, block_id = sum(depths), 0
        for stage, depth in enumerate(depths):
            dim = embed_dim * 2 ** stage
            blocks = []
            for i in range(depth):
                shift = [0 if i % 2 == 0 else w // 2 for w in window_size]
                blocks.append(SwinTransformerBlock(dim, num_heads[stage], window_size, shift,
                                                   stochastic_depth_prob * block_id / max(1, total - 1)))
                block_id += 1
            layers.append(nn.Sequential(*blocks))
            if stage < len(depths) - 1:
                layers.append(PatchMerging(dim))
        self.features = nn.Sequential(*layers)
        self.feature_dim = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.feature_dim)
        self.head = nn.Linear(self.feature_dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised last-stage tokens as a map (B, 768, T/2, H/32, W/32) (sides rounded up)."""
        x = self.norm(self.features(self.patch_embed(self._prepare(x))))
        return x.permute(0, 4, 1, 2, 3)


@register_model("swin3d_t")
def swin3d_t(**kwargs: object) -> SwinTransformer3d:
    """Swin3D-T (torchvision Kinetics-400 ``swin3d_t-7615ae03.pth`` loads); arguments of :class:`SwinTransformer3d`."""
    return SwinTransformer3d(**kwargs)  # type: ignore[arg-type]
