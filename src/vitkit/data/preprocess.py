"""The one evaluation-time preprocessing path, stored with every checkpoint.

Validation during training, ``vitkit eval``, ``vitkit predict``, the report and the service all turn an image
into model input with :class:`Preprocess`, so the same file gives the same input, bit for bit, everywhere:

1. decode to 8 bits, ``channels`` deep (:func:`vitkit.data.images.to_uint8_chw`);
2. resize and centre-crop in 8 bits with torchvision's kernels, by timm's ``crop_pct`` convention: the
   short side goes to ``floor(size / crop_pct)``, then the centre ``size`` is cut out (``crop_pct=1``:
   resize to the size, crop nothing off the short side);
3. normalise in float32 as ``x * (1 / (255 std)) - mean / std`` (:class:`Normalize`), the very formula the
   device loader applies to in-memory data sets.

8 bits before the geometry (not after) is what makes a decoded-once cache of a folder give the same numbers
as streaming it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ..geometry import pair
from ..errors import ConfigError
from .images import to_uint8_chw

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# One grey channel of ImageNet's statistics (timm's convention for grey models: the mean of the three).
IMAGENET_GREY_MEAN, IMAGENET_GREY_STD = (0.449,), (0.226,)
INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
                  "nearest": InterpolationMode.NEAREST}


def default_stats(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet's mean and std for 3 channels, their grey version for 1."""
    return (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else (IMAGENET_GREY_MEAN, IMAGENET_GREY_STD)


class Normalize:
    """uint8 images (..., C, H, W) -> float32 ``(x / 255 - mean) / std``, computed as ``x * scale + shift``."""

    def __init__(self, mean, std):
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(mean) != len(std) or len(mean) not in (1, 3) or any(s <= 0 for s in std):
            raise ConfigError(f"mean and std need 1 or 3 values each, std positive; got {mean} and {std}")
        std_t = torch.tensor(std, dtype=torch.float32)
        self.mean, self.std = mean, std
        self.scale = (1 / (255 * std_t)).view(-1, 1, 1)  # (C, 1, 1)
        self.shift = (-torch.tensor(mean, dtype=torch.float32) / std_t).view(-1, 1, 1)
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.device not in self._on:
            self._on[x.device] = (self.scale.to(x.device), self.shift.to(x.device))
        scale, shift = self._on[x.device]
        return x.to(torch.float32, copy=True).mul_(scale).add_(shift)


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes model input at evaluation time (see the module docstring).

    ``crop_mode="center"`` resizes the short side (an image keeps its aspect ratio, the centre is kept);
    ``"squash"`` resizes both sides to ``img_size / crop_pct`` (aspect ratio lost, nothing cut when
    ``crop_pct=1``). A non-square ``img_size`` always squashes, as in timm.
    """

    img_size: tuple[int, int]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    crop_mode: str = "center"

    def __post_init__(self):
        object.__setattr__(self, "img_size", pair(self.img_size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "normalize", Normalize(self.mean, self.std))  # validates mean and std
        if not (isinstance(self.crop_pct, (int, float)) and 0 < self.crop_pct <= 1):
            raise ConfigError(f"crop_pct must lie in (0, 1], got {self.crop_pct!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.crop_mode not in ("center", "squash"):
            raise ConfigError(f"crop_mode must be 'center' or 'squash', got {self.crop_mode!r}")

    @property
    def channels(self) -> int:
        return len(self.mean)

    @property
    def resize_size(self) -> int | tuple[int, int]:
        """What the image is resized to before the crop: a short side (int) or an exact (h, w)."""
        h, w = (math.floor(s / self.crop_pct + 1e-9) for s in self.img_size)
        return h if self.crop_mode == "center" and h == w else (h, w)

    def geometry(self, x: torch.Tensor) -> torch.Tensor:
        """Resize and centre-crop uint8 images (..., C, h, w) -> (..., C, H, W), uint8."""
        size = self.resize_size
        size = [size] if isinstance(size, int) else list(size)
        x = TF.resize(x, size, interpolation=INTERPOLATIONS[self.interpolation], antialias=True)
        return TF.center_crop(x, list(self.img_size))

    def load(self, image) -> torch.Tensor:
        """A path, PIL image, array or tensor -> uint8 (C, H, W) at the model's size, not yet normalised."""
        return self.geometry(to_uint8_chw(image, self.channels))

    def __call__(self, image) -> torch.Tensor:
        """Any image -> the model's float32 input (C, H, W)."""
        return self.normalize(self.load(image))

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown preprocessing keys {sorted(unknown)}; expected {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @classmethod
    def from_metadata(cls, meta: dict, img_size, channels: int) -> "Preprocess":
        """What a checkpoint's metadata records. Files without a ``preprocess`` entry (older vitkit files,
        converted weights) get the model's size, plain resizing and their ``mean``/``std`` (else ImageNet's)."""
        if meta.get("preprocess"):
            return cls.from_dict(meta["preprocess"])
        mean, std = meta.get("mean"), meta.get("std")
        if not mean or not std or len(mean) != channels:
            mean, std = default_stats(channels)
        return cls(pair(img_size), tuple(mean), tuple(std))

    def describe(self) -> str:
        h, w = self.img_size
        size = self.resize_size
        resize = f"short side {size}" if isinstance(size, int) else f"{size[0]}x{size[1]}"
        stats = ", ".join(f"{m:.3g}/{s:.3g}" for m, s in zip(self.mean, self.std))
        return (f"resize {resize} ({self.interpolation}), centre {h}x{w}, {self.channels}-channel, "
                f"mean/std {stats}")


def preprocess_image(image, image_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Resize, convert to a tensor, normalise and add the batch dimension: returns float32 (1, C, H, W).

    ``image`` is a PIL image, a NumPy array (HWC or HW; uint8, uint16 or float in [0, 1]), a (C, H, W)
    tensor, or a path; greyscale, alpha and 16-bit inputs follow :mod:`vitkit.data.images`. The image is
    resized to ``image_size`` (an int for a square, or (height, width)), bilinear with antialiasing; C is
    ``len(mean)``. A wrong mode, shape, dtype or an unreadable file raises a DataError.
    """
    size = pair(image_size, "image_size")
    if len(mean) != len(std) or any(s <= 0 for s in std):
        raise ConfigError(f"mean and std need the same length and std must be positive, got {mean} and {std}")
    return Preprocess(size, tuple(mean), tuple(std), crop_mode="squash")(image).unsqueeze(0)  # (1, C, H, W)
