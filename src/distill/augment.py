"""Input jitter (paper section 3: translations of up to two pixels in any direction). Pure."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def jitter(x: torch.Tensor, image_shape, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate every image of the batch by its own random (dy, dx), each uniform in
    ``[-max_shift, max_shift]``, filling with zeros. ``x`` is ``(B, ...)`` whose examples hold
    ``C * H * W`` values for ``image_shape = (H, W)`` (flat ``(B, H*W)``, ``(B, H, W)`` or
    ``(B, C, H, W)``; all channels of an image move together); the output has x's shape. One gather
    for the whole batch, no per-example Python; it runs on x's device (``generator`` must live there
    too).

    Output pixel ``(i, j)`` of image b is input pixel ``(i - dy_b, j - dx_b)`` (0 outside).
    """
    if max_shift <= 0:
        return x
    h, w = (int(s) for s in image_shape)
    b = x.shape[0]
    per = x[0].numel() if b else h * w
    if per % (h * w):
        raise ValueError(f"jitter: examples of {per} values cannot be viewed as images of {h}x{w}")
    c = per // (h * w)
    s = int(max_shift)
    img = F.pad(x.reshape(b, c, h, w), (s, s, s, s))
    dev = x.device
    shifts = torch.randint(-s, s + 1, (b, 2), generator=generator, device=dev)
    rows = torch.arange(h, device=dev).unsqueeze(0) + s - shifts[:, :1]  # (B, H)
    cols = torch.arange(w, device=dev).unsqueeze(0) + s - shifts[:, 1:]  # (B, W)
    out = img[torch.arange(b, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
              rows[:, None, :, None], cols[:, None, None, :]]
    return out.reshape(x.shape)
