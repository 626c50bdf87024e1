"""Input jitter (paper section 3: translations of up to two pixels in any direction). Pure."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def jitter(x: torch.Tensor, image_shape, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate every image of the batch by its own random (dy, dx), each uniform in
    ``[-max_shift, max_shift]``, filling with zeros. ``x`` is ``(B, H*W)`` or ``(B, H, W)``;
    the output has x's shape. One gather for the whole batch, no per-example Python; it runs on
    x's device (``generator`` must live there too).

    Output pixel ``(i, j)`` of image b is input pixel ``(i - dy_b, j - dx_b)`` (0 outside).
    """
    if max_shift <= 0:
        return x
    h, w = image_shape
    b = x.shape[0]
    s = int(max_shift)
    img = F.pad(x.reshape(b, h, w), (s, s, s, s))
    dev = x.device
    shifts = torch.randint(-s, s + 1, (b, 2), generator=generator, device=dev)
    rows = torch.arange(h, device=dev).unsqueeze(0) + s - shifts[:, :1]  # (B, H)
    cols = torch.arange(w, device=dev).unsqueeze(0) + s - shifts[:, 1:]  # (B, W)
    out = img[torch.arange(b, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out.reshape(x.shape)
