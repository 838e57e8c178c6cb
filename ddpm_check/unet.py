"""SimpleUnet, the noise predictor eps_theta(x_t, t) of the source, with configurable widths.

The source (following "Diffusion models from scratch in PyTorch") builds:

    t  -> sinusoidal embedding (dim 32, sines then cosines) -> Linear(32, 32) -> ReLU   = t_emb
    x  -> conv0 3x3 (image channels -> down[0])
       -> down Blocks  down[i] -> down[i+1]   (each halves H, W; outputs kept as skips)
       -> up Blocks    up[i] -> up[i+1]       (input = cat(x, skip), 2 up[i] channels; doubles H, W)
       -> 1x1 conv (up[-1] -> image channels)                                          = eps_pred

with down = (64, 128, 256, 512, 1024) and up = reversed(down): 62,438,883 parameters for
3-channel images.  Depth = len(down) - 1, so H and W must be divisible by 2**depth.

The model takes ``t`` as 0-based step indices (long, [N]) as everywhere in ddpm_check and feeds
them to the embedding as floats, as the source does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ddpm_check.errors import DDPMCheckError

__all__ = ["UNetConfig", "SimpleUnet", "Block", "SinusoidalPositionEmbeddings", "count_parameters"]


@dataclass(frozen=True)
class UNetConfig:
    """Widths of a SimpleUnet.  Default: the source's full model (62,438,883 params, 3 channels).

    down_channels: channels after conv0 and after each down Block; up channels are the reverse.
    time_emb_dim: size of the sinusoidal embedding and of the time MLP (even, >= 4).
    """

    image_channels: int = 3
    down_channels: tuple[int, ...] = (64, 128, 256, 512, 1024)
    time_emb_dim: int = 32

    def __post_init__(self) -> None:
        def _pos_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= 1

        if not _pos_int(self.image_channels):
            raise DDPMCheckError(f"image_channels must be an integer >= 1, got {self.image_channels!r}")
        try:
            dc = tuple(self.down_channels)
        except TypeError:
            raise DDPMCheckError(f"down_channels must be a sequence of integers, got {self.down_channels!r}") from None
        if len(dc) < 2 or not all(_pos_int(c) for c in dc):
            raise DDPMCheckError(
                f"down_channels must be at least 2 integers >= 1 (depth = len - 1 >= 1), got {self.down_channels!r}"
            )
        object.__setattr__(self, "down_channels", dc)
        if not _pos_int(self.time_emb_dim) or self.time_emb_dim < 4 or self.time_emb_dim % 2:
            raise DDPMCheckError(f"time_emb_dim must be an even integer >= 4, got {self.time_emb_dim!r}")

    @property
    def up_channels(self) -> tuple[int, ...]:
        return tuple(reversed(self.down_channels))

    @property
    def depth(self) -> int:
        """Number of down (and up) Blocks; H and W must be divisible by 2**depth."""
        return len(self.down_channels) - 1

    @classmethod
    def small(cls, image_channels: int = 1) -> "UNetConfig":
        """A CPU-sized SimpleUnet: down (32, 64, 128), time_emb_dim 32, depth 2 (8x8 or 16x16 images)."""
        return cls(image_channels=image_channels, down_channels=(32, 64, 128), time_emb_dim=32)

    @classmethod
    def source(cls) -> "UNetConfig":
        """The source's full model (same as the defaults)."""
        return cls()

    @staticmethod
    def parse_channels(text: str) -> tuple[int, ...]:
        """``"64,128,256"`` -> (64, 128, 256): down channels typed as a comma-separated list
        (``train --channels-list``); DDPMCheckError for an empty entry, a non-integer or fewer than 2."""
        try:
            vals = tuple(int(v) for v in text.replace(" ", "").split(","))  # an empty entry is refused
        except ValueError:
            raise DDPMCheckError(f"--channels-list {text!r} is not a comma-separated list of integers, "
                                 f"e.g. 64,128,256") from None
        if len(vals) < 2 or any(v < 1 for v in vals):
            raise DDPMCheckError(f"--channels-list {text!r} needs at least 2 positive integers, e.g. 32,64,128")
        return vals

    def check_image_size(self, size: int) -> int:
        """Raise DDPMCheckError unless ``size`` is a positive multiple of 2**depth; return it."""
        m = 2 ** self.depth
        if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % m:
            raise DDPMCheckError(
                f"image size {size!r} is not a positive multiple of 2**depth = {m} "
                f"(depth {self.depth} from down_channels {self.down_channels})"
            )
        return size

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_channels": self.image_channels,
            "down_channels": list(self.down_channels),
            "time_emb_dim": self.time_emb_dim,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UNetConfig":
        if not isinstance(d, dict):
            raise DDPMCheckError(f"UNet config must be a JSON object, got {type(d).__name__}")
        unknown = set(d) - {"image_channels", "down_channels", "time_emb_dim"}
        if unknown:
            raise DDPMCheckError(
                f"unknown UNet config keys {sorted(unknown)}; allowed: image_channels, down_channels, time_emb_dim"
            )
        kw = dict(d)
        if "down_channels" in kw and isinstance(kw["down_channels"], list):
            kw["down_channels"] = tuple(kw["down_channels"])
        return cls(**kw)


class SinusoidalPositionEmbeddings(nn.Module):
    """t [N] -> [N, dim]: (sin(t w_0..w_{h-1}), cos(t w_0..w_{h-1})), w_i = 10000^(-i/(h-1)), h = dim/2.

    The source's layout: all sines, then all cosines (not interleaved as in the Transformer).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise DDPMCheckError(f"time embedding dim must be an even integer >= 4, got {dim!r}")
        self.dim = dim
        half = dim // 2
        freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
        # Not a parameter and not saved: it is a function of dim only.
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, times: torch.Tensor) -> torch.Tensor:
        args = times.to(self.freqs.dtype)[:, None] * self.freqs[None, :]  # [N, half]
        return torch.cat((args.sin(), args.cos()), dim=-1)  # [N, dim]


class Block(nn.Module):
    """One SimpleUnet stage: conv3x3 -> ReLU -> BN; + ReLU(Linear(t_emb)); conv3x3 -> ReLU -> BN;
    then a 4x4 stride-2 conv (down, halves H, W) or transposed conv (up, doubles H, W).

    Down: [N, in, H, W] -> [N, out, H/2, W/2].  Up: [N, 2 in, H, W] -> [N, out, 2H, 2W]
    (the up Block's input is the concatenation of x and the skip).
    """

    def __init__(self, in_ch: int, out_ch: int, time_emb_dim: int, up: bool = False) -> None:
        super().__init__()
        self.up = up
        self.time_mlp = nn.Linear(time_emb_dim, out_ch)
        if up:
            self.conv1 = nn.Conv2d(2 * in_ch, out_ch, 3, padding=1)
            self.transform = nn.ConvTranspose2d(out_ch, out_ch, 4, 2, 1)
        else:
            self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
            self.transform = nn.Conv2d(out_ch, out_ch, 4, 2, 1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.bnorm1 = nn.BatchNorm2d(out_ch)
        self.bnorm2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        h = self.bnorm1(self.relu(self.conv1(x)))  # [N, out, H, W]
        h = h + self.relu(self.time_mlp(t_emb))[:, :, None, None]  # time broadcast over H, W
        h = self.bnorm2(self.relu(self.conv2(h)))
        return self.transform(h)


class SimpleUnet(nn.Module):
    """eps_theta(x_t, t): [N, C, H, W], t [N] (0-based long indices) -> [N, C, H, W].

    H and W must be divisible by 2**config.depth.
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        if config is None:
            config = UNetConfig()
        if not isinstance(config, UNetConfig):
            raise DDPMCheckError(f"expected a UNetConfig, got {type(config).__name__}")
        self.config = config
        down, up, d = config.down_channels, config.up_channels, config.time_emb_dim
        self.time_mlp = nn.Sequential(SinusoidalPositionEmbeddings(d), nn.Linear(d, d), nn.ReLU())
        self.conv0 = nn.Conv2d(config.image_channels, down[0], 3, padding=1)
        self.downs = nn.ModuleList([Block(down[i], down[i + 1], d) for i in range(len(down) - 1)])
        self.ups = nn.ModuleList([Block(up[i], up[i + 1], d, up=True) for i in range(len(up) - 1)])
        self.output = nn.Conv2d(up[-1], config.image_channels, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # Metadata checks only (no .item(), no device sync; fine under torch.compile).
        if not isinstance(x, torch.Tensor):
            raise DDPMCheckError(f"x must be a torch.Tensor of shape [N, C, H, W], got {type(x).__name__}")
        if not isinstance(t, torch.Tensor):
            raise DDPMCheckError(f"t must be a tensor of shape [N] = [{x.shape[0] if x.ndim else '?'}], "
                                 f"got {type(t).__name__}")
        if t.dtype == torch.bool or t.dtype.is_complex:
            raise DDPMCheckError(f"t must be an integer or float tensor of steps, got dtype {t.dtype}")
        if x.ndim != 4 or x.shape[1] != self.config.image_channels:
            raise DDPMCheckError(
                f"SimpleUnet expects x of shape [N, {self.config.image_channels}, H, W], got {tuple(x.shape)}"
            )
        m = 2 ** self.config.depth
        if x.shape[2] % m or x.shape[3] % m:
            raise DDPMCheckError(
                f"image size {x.shape[2]}x{x.shape[3]} is not divisible by 2**depth = {m}"
            )
        if t.shape != (x.shape[0],):
            raise DDPMCheckError(f"t must have shape [N] = [{x.shape[0]}] to match x, got {list(t.shape)}")
        t_emb = self.time_mlp(t)  # [N, time_emb_dim]; t is cast to float inside the embedding
        x = self.conv0(x)
        skips = []
        for down in self.downs:
            x = down(x, t_emb)
            skips.append(x)
        for up in self.ups:
            x = torch.cat((x, skips.pop()), dim=1)  # [N, 2 in, H, W]
            x = up(x, t_emb)
        return self.output(x)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
