"""Pooling a CNN feature map into one vector: GeM, GeM+, Regional-GeM and Scale-GeM (SuperGlobal).

Every module takes a (B, C, H, W) feature map (Scale-GeM: a list of per-scale (B, C) vectors) and
works on any backbone. Values are clamped to ``eps`` before powers, as feature maps after a ReLU
are non-negative anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

GEM_PLUS_P = 4.6
SCALES = (2 ** -0.5, 1.0, 2 ** 0.5)


class GeM(nn.Module):
    """Generalised mean over spatial positions: ``(mean_u max(x_u, eps)^p)^(1/p)`` per channel.

    ``p`` is learned when ``learn_p`` is true (an ``nn.Parameter``), fixed otherwise.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learn_p: bool = False) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM needs p > 0, got {p}.")
        self.eps = eps
        self.p = nn.Parameter(torch.tensor(float(p))) if learn_p else float(p)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        powered = features.clamp(min=self.eps).pow(self.p)
        return powered.mean(dim=(-2, -1)).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        p = float(self.p.detach()) if isinstance(self.p, nn.Parameter) else self.p
        return f"p={p:.3g}, eps={self.eps}"


class GeMPlus(GeM):
    """GeM with SuperGlobal's fixed, larger p = 4.6."""

    def __init__(self, p: float = GEM_PLUS_P, eps: float = 1e-8) -> None:
        super().__init__(p=p, eps=eps)


class RegionalGeM(nn.Module):
    """Enriches every position with its neighbourhood before pooling:
    ``x' = 0.5 * PowerMean_{size x size}(x; p_r) + 0.5 * x`` (stride 1, reflection padding), then
    ``pool(x')`` (GeM+ by default)."""

    def __init__(self, p_r: float = 2.5, size: int = 5, pool: nn.Module | None = None,
                 eps: float = 1e-8) -> None:
        super().__init__()
        if size < 1 or size % 2 == 0:
            raise ValueError(f"The regional window must be an odd size, got {size}.")
        self.p_r, self.size, self.eps = p_r, size, eps
        self.pool = pool if pool is not None else GeMPlus()

    def regional(self, features: torch.Tensor) -> torch.Tensor:
        """The blended feature map x' (same shape as the input). Maps too small to reflect (a
        side of ``size // 2`` positions or fewer) are padded by replication instead."""
        pad = self.size // 2
        mode = "reflect" if min(features.shape[-2:]) > pad else "replicate"
        padded = F.pad(features.clamp(min=self.eps), [pad] * 4, mode=mode)
        local = F.avg_pool2d(padded.pow(self.p_r), self.size, stride=1).pow(1.0 / self.p_r)
        return 0.5 * local + 0.5 * features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.pool(self.regional(features))


class ScaleGeM(nn.Module):
    """Combines one image's vectors from several scales (a list of (B, D) tensors).

    ``p_s=inf`` (the default): L2-normalise each scale's vector, then take the element-wise max.
    A finite ``p_s``: shift by the global minimum gamma, power mean over scales, shift back.
    The result is not normalised here; encoders normalise their outputs.
    """

    def __init__(self, p_s: float = float("inf")) -> None:
        super().__init__()
        if p_s <= 0:
            raise ValueError(f"Scale-GeM needs p_s > 0, got {p_s}.")
        self.p_s = p_s

    def forward(self, per_scale: Sequence[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(list(per_scale), dim=0)
        if self.p_s == float("inf"):
            return F.normalize(stacked, dim=-1).amax(dim=0)
        gamma = stacked.min()
        return (stacked - gamma).pow(self.p_s).mean(dim=0).pow(1.0 / self.p_s) + gamma
