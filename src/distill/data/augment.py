"""Input augmentation, applied once per batch on whole tensors (no per-example Python). Pure.

* :func:`jitter`: the paper's translations of up to two pixels (section 3), ``TrainConfig(jitter=2)``.
* :func:`affine`: rotation and scaling about the image centre (bilinear, zero fill).
* :class:`Augment`: the consistent-teaching pipeline (Beyer et al. 2022, "a good teacher is
  patient and consistent"), ``TrainConfig(augment=Augment(...))``: mixup, shift, crop with
  padding, horizontal flip, rotation and scaling, in that order, on the batch that both the
  student and the teacher see. Its parameters are drawn per batch from ``fit``'s seeded generator, or, with ``views=K``,
  looked up in a fixed table of K views per example (FKD-style, Shen & Xing 2022), whose teacher
  outputs can be stored once (:mod:`distill.train.augmenter`).

Every transform works on ``(B, ...)`` batches whose examples hold ``C * H * W`` values for
``image_shape = (H, W)`` (flat ``(B, H*W)``, ``(B, H, W)`` or ``(B, C, H, W)``; all channels of an
image move together) and returns x's shape, on x's device.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from distill.checks import check_number


def _as_images(x: torch.Tensor, image_shape) -> tuple[torch.Tensor, int, int, int]:
    h, w = (int(s) for s in image_shape[-2:])
    b = x.shape[0]
    per = x[0].numel() if b else h * w
    if per % (h * w):
        raise ValueError(f"examples of {per} values cannot be viewed as images of {h}x{w}")
    c = per // (h * w)
    return x.reshape(b, c, h, w), c, h, w


def translate(x: torch.Tensor, image_shape, shifts: torch.Tensor, max_shift: int | None = None) -> torch.Tensor:
    """Translate image b by ``shifts[b] = (dy, dx)``, filling with zeros: output pixel ``(i, j)``
    is input pixel ``(i - dy, j - dx)`` (0 outside). One gather for the whole batch;
    ``max_shift`` (default: the largest ``|shift|``) is the zero padding it gathers from."""
    b = x.shape[0]
    img, c, h, w = _as_images(x, image_shape)
    s = int(shifts.abs().max()) if max_shift is None and b else int(max_shift or 0)
    if s == 0:
        return x
    img = F.pad(img, (s, s, s, s))
    dev = x.device
    shifts = shifts.to(dev)
    rows = torch.arange(h, device=dev).unsqueeze(0) + s - shifts[:, :1]  # (B, H)
    cols = torch.arange(w, device=dev).unsqueeze(0) + s - shifts[:, 1:]  # (B, W)
    out = img[torch.arange(b, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
              rows[:, None, :, None], cols[:, None, None, :]]
    return out.reshape(x.shape)


def jitter(x: torch.Tensor, image_shape, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate every image of the batch by its own random (dy, dx), each uniform in
    ``[-max_shift, max_shift]``, filling with zeros (:func:`translate`). ``generator`` must live on
    x's device."""
    if max_shift <= 0:
        return x
    s = int(max_shift)
    shifts = torch.randint(-s, s + 1, (x.shape[0], 2), generator=generator, device=x.device)
    try:
        return translate(x, image_shape, shifts, s)
    except ValueError as e:
        raise ValueError(f"jitter: {e}") from None


def flip_lr(x: torch.Tensor, image_shape, flags: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images whose ``flags`` (bool, ``(B,)``) are set."""
    img, *_ = _as_images(x, image_shape)
    flags = flags.to(x.device).view(-1, 1, 1, 1)
    return torch.where(flags, img.flip(-1), img).reshape(x.shape)


def affine(x: torch.Tensor, image_shape, angles: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Rotate image b by ``angles[b]`` degrees (counter-clockwise as displayed, rows downwards) and
    scale it by ``scales[b]`` about its centre, sampling bilinearly with zeros outside: output
    pixel at centred coordinates ``u = (x, y)`` (in ``[-1, 1]``, y downwards, ``align_corners=False``)
    reads the input at ``R u / scale``, ``R = [[cos a, -sin a], [sin a, cos a]]`` (with the aspect
    ratio folded in for non-square images). ``angles = 0, scales = 1`` is the identity and a quarter
    turn of a square image is ``torch.rot90``, both to float rounding."""
    img, c, h, w = _as_images(x, image_shape)
    b = img.shape[0]
    if b == 0:
        return x
    theta_r = torch.deg2rad(angles.to(device=x.device, dtype=torch.float32))
    inv = 1.0 / scales.to(device=x.device, dtype=torch.float32)
    cos, sin = torch.cos(theta_r) * inv, torch.sin(theta_r) * inv
    # grid coordinates are (x, y) with y downwards; aspect ratio h/w keeps rotations rigid on non-square images
    a = torch.zeros(b, 2, 3, device=x.device, dtype=torch.float32)
    a[:, 0, 0], a[:, 0, 1] = cos, -sin * (h / w)
    a[:, 1, 0], a[:, 1, 1] = sin * (w / h), cos
    grid = F.affine_grid(a, [b, c, h, w], align_corners=False)
    out = F.grid_sample(img.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.to(x.dtype).reshape(x.shape)


def mix(x: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Mixup (Zhang et al. 2018): ``lam_b * x_b + (1 - lam_b) * partner_b`` per example."""
    lam = lam.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return lam * x + (1 - lam) * partner.to(x.device)


@dataclass(frozen=True)
class Augment:
    """The augmentation pipeline of consistent teaching, applied once per batch by
    :func:`distill.fit`; the *same* augmented batch goes to the student and (eval, no_grad) to
    the teacher. In order:

    1. ``mixup`` (alpha of ``Beta(alpha, alpha)``, 0 = off): ``x <- lam x + (1 - lam) x'``, with
       ``x'`` another example of the batch (a seeded permutation) and one ``lam`` per batch. With
       a teacher and ``hard_weight=0`` the student simply matches the teacher on the mixed input;
       an objective that reads labels gets the mixed-label loss
       ``lam * L(z, v, y) + (1 - lam) * L(z, v, y')`` (exact for cross-entropy, which is linear
       in the target; for DKD it mixes the two target classes' losses the same way).
    2. ``shift``: translate by ``(dy, dx)``, each uniform in ``[-shift, shift]``, zero fill (the
       paper's jitter; ``Augment(shift=s)`` alone draws exactly what ``TrainConfig(jitter=s)`` draws).
    3. ``crop_pad``: pad by ``crop_pad`` zeros on every side and crop a uniformly placed window of
       the original size: with zero padding this *is* a translation by up to ``crop_pad`` pixels,
       applied after ``shift`` (both are offered under the names people look for; together they
       compose).
    4. ``flip``: mirror left-right with probability 1/2 (not for digits or text).
    5. ``rotate`` (degrees) and ``scale`` (a relative amount): rotate each image by an angle uniform
       in ``[-rotate, rotate]`` and scale it by a factor uniform in ``[1 - scale, 1 + scale]``
       about its centre (:func:`affine`; the usual MNIST augmentation beyond shifts).

    ``views = K > 0`` fixes K views per example instead (FKD, Shen & Xing 2022): a table of
    parameters drawn once from ``view_seed`` (mixup partners are then any training example and
    ``lam`` is per example and view), from which each batch takes, per example, a view chosen by
    fit's generator. With ``Teacher(module, store=folder)`` the teacher's outputs on all ``n * K``
    views are computed once into a soft-target store (``view_dtype``, ``view_top_k``) and replayed,
    so epochs run without the teacher; without a store the teacher runs on the same views on the
    fly (same batches, same targets). Per-example ``lam`` cannot weight a batch-mean loss, so
    ``views`` with ``mixup`` needs an objective without labels (e.g. ``hard_weight=0``).
    """

    shift: int = 0
    crop_pad: int = 0
    flip: bool = False
    mixup: float = 0.0
    rotate: float = 0.0
    scale: float = 0.0
    views: int = 0
    view_seed: int = 0
    view_dtype: str = "float16"
    view_top_k: int | None = None

    def __post_init__(self):
        for name in ("shift", "crop_pad", "views", "view_seed"):
            object.__setattr__(self, name, check_number(f"augment {name}", getattr(self, name), minimum=0,
                                                        integer=True))
        object.__setattr__(self, "mixup", check_number("augment mixup", self.mixup, minimum=0, maximum=1e3))
        object.__setattr__(self, "rotate", check_number("augment rotate (degrees)", self.rotate, minimum=0,
                                                        maximum=180))
        object.__setattr__(self, "scale", check_number("augment scale", self.scale, minimum=0, maximum=0.9))
        if not isinstance(self.flip, bool):
            raise ValueError(f"augment flip must be True or False, got {self.flip!r}")
        if self.view_dtype not in ("float16", "float32"):
            raise ValueError(f"augment view_dtype must be float16 or float32, got {self.view_dtype!r}")
        if self.view_top_k is not None:
            object.__setattr__(self, "view_top_k", check_number("augment view_top_k", self.view_top_k, minimum=1,
                                                                integer=True))
        if not self.active:
            raise ValueError("Augment() with no transform (shift, crop_pad, flip, mixup, rotate, scale all off) "
                             "does nothing; leave TrainConfig(augment=None)")

    @property
    def active(self) -> bool:
        return bool(self.shift or self.crop_pad or self.flip or self.mixup or self.rotate or self.scale)

    @property
    def geometric(self) -> bool:
        """Whether any transform needs the examples viewed as images."""
        return bool(self.shift or self.crop_pad or self.flip or self.rotate or self.scale)

    def to_dict(self) -> dict:
        """Its fields; those added later (:data:`LATER_AUGMENT_FIELDS`) only when set, so that runs
        keyed before they existed keep their keys."""
        d = asdict(self)
        for k, v in LATER_AUGMENT_FIELDS.items():
            if d[k] == v:
                del d[k]
        return d

    # ------------------------------------------------------------ parameters
    def _beta(self, size, seed: int) -> torch.Tensor:
        return torch.from_numpy(np.random.default_rng(seed).beta(self.mixup, self.mixup, size=size).astype(np.float32))

    def draw(self, b: int, generator: torch.Generator | None) -> dict:
        """Fresh parameters for a batch of ``b`` examples from ``generator`` (in this order: shift,
        crop, flip, mixup permutation and ``lam``): ``shift``/``crop`` ``(b, 2)`` translations,
        ``flip`` ``(b,)`` bool, ``partner`` ``(b,)`` batch positions and ``lam`` ``(b,)``, one value."""
        p = {}
        if self.shift:
            s = self.shift
            p["shift"] = torch.randint(-s, s + 1, (b, 2), generator=generator)
        if self.crop_pad:
            c = self.crop_pad
            p["crop"] = c - torch.randint(0, 2 * c + 1, (b, 2), generator=generator)  # window offset -> shift
        if self.flip:
            p["flip"] = torch.randint(0, 2, (b,), generator=generator).bool()
        if self.mixup:
            p["partner"] = torch.randperm(b, generator=generator)
            seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator))
            p["lam"] = self._beta(1, seed).expand(b).clone()
        p.update(self._affine_draw((b,), generator))
        return p

    def _affine_draw(self, size, generator) -> dict:
        """``angle`` in ``[-rotate, rotate]`` degrees and ``scale`` in ``[1 - scale, 1 + scale]``,
        shaped ``size``, drawn after every other parameter (earlier draws are unchanged by them)."""
        p = {}
        if self.rotate or self.scale:
            u = torch.rand((2, *size), generator=generator)
            p["angle"] = (2 * u[0] - 1) * self.rotate
            p["scale"] = 1 + (2 * u[1] - 1) * self.scale
        return p

    def table(self, n: int) -> dict:
        """The fixed views (``views = K``): the parameters of :meth:`draw` for every example and
        view, shaped ``(n, K, ...)``, drawn from ``view_seed``; ``partner`` holds example indices
        ``0..n-1`` and ``lam`` one value per example and view."""
        if not self.views:
            raise ValueError("Augment.table needs views > 0")
        k = self.views
        g = torch.Generator().manual_seed(self.view_seed)
        p = {}
        if self.shift:
            s = self.shift
            p["shift"] = torch.randint(-s, s + 1, (n, k, 2), generator=g)
        if self.crop_pad:
            c = self.crop_pad
            p["crop"] = c - torch.randint(0, 2 * c + 1, (n, k, 2), generator=g)
        if self.flip:
            p["flip"] = torch.randint(0, 2, (n, k), generator=g).bool()
        if self.mixup:
            p["partner"] = torch.randint(0, n, (n, k), generator=g)
            p["lam"] = self._beta((n, k), self.view_seed)
        p.update(self._affine_draw((n, k), g))
        return p

    def apply(self, x: torch.Tensor, image_shape, params: dict, partner_x: torch.Tensor | None = None
              ) -> torch.Tensor:
        """``x`` transformed by ``params`` (from :meth:`draw` or rows of :meth:`table`), in the
        order mixup, shift, crop, flip, rotation and scaling; ``partner_x`` are the mixup partners' inputs."""
        if "lam" in params:
            if partner_x is None:
                raise ValueError("mixup needs the partners' inputs")
            x = mix(x, partner_x, params["lam"])
        if self.geometric and image_shape is None:
            raise ValueError("shift, crop, flip, rotate and scale need image data: examples of shape (H, W) or (C, H, W), or a "
                             "distill Dataset with an image_shape")
        if "shift" in params:
            x = translate(x, image_shape, params["shift"], self.shift)
        if "crop" in params:
            x = translate(x, image_shape, params["crop"], self.crop_pad)
        if "flip" in params:
            x = flip_lr(x, image_shape, params["flip"])
        if "angle" in params:
            x = affine(x, image_shape, params["angle"], params["scale"])
        return x


#: fields of :class:`Augment` added after runs were keyed, and their defaults (left out of run keys when unset)
LATER_AUGMENT_FIELDS = {"rotate": 0.0, "scale": 0.0}


def table_digest(table: dict) -> str:
    """SHA-256 (16 hex) of a view table's arrays (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name in sorted(table):
        t = table[name].contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.cpu().numpy().tobytes())
    return h.hexdigest()[:16]
