"""Turning arbitrary images into model input: :func:`preprocess_image` (seed 003) and the image-folder pipelines.

Conversion rules, the same for every entry point (documented once, here):

- **greyscale** (``L``, ``1``, HW arrays, one channel): the grey value is copied to R, G and B;
- **alpha** (``RGBA``, ``LA``, palette images with transparency, 2 or 4 channels): composited over a white
  background, ``c * a + 1 * (1 - a)``, then the alpha channel is dropped;
- **16-bit** (``I;16`` PIL images, ``uint16`` arrays, and PIL's 32-bit ``I`` mode that 16-bit PNGs open as):
  divided by 65535, so full scale is 1.0 (a 32-bit value above 65535 is an error, not clipped);
- **uint8** is divided by 255; **float** arrays must already lie in [0, 1];
- other PIL modes (``CMYK``, ``YCbCr``, ``P`` without transparency, ...) go through ``Image.convert("RGB")``.
- A one-channel ``mean``/``std`` asks for one output channel: colour is reduced to luma (ITU-R 601-2,
  0.299 R + 0.587 G + 0.114 B, PIL's ``L`` weights).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..errors import ConfigError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LUMA = (0.299, 0.587, 0.114)


def open_image(path) -> Image.Image:
    """Open and fully decode the image at ``path``; a missing, unreadable or truncated file is a DataError."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so a truncated file fails here and not later
            return img.copy()
    except FileNotFoundError:
        raise DataError(f"image file {path} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"image file {path} is unreadable or truncated ({err}); expected a jpg/png/webp/bmp image") \
            from None


def _pil_to_array(img: Image.Image) -> np.ndarray:
    """A PIL image as an HW or HWC array whose dtype carries its bit depth (see the module rules)."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "1":
        img = img.convert("L")
    elif mode in ("RGBa", "La", "PA"):
        img = img.convert("RGBA")
    elif mode == "I":  # 16-bit PNGs open as 32-bit 'I'; their values must fit in 16 bits
        arr = np.asarray(img)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise DataError(f"32-bit integer image has values {arr.min()}..{arr.max()}, expected a 16-bit range 0..65535")
        return arr.astype(np.uint16)
    elif mode not in ("L", "LA", "RGB", "RGBA", "F") and not mode.startswith("I;16"):
        try:
            img = img.convert("RGB")
        except (ValueError, OSError) as err:
            raise DataError(f"image of PIL mode {mode!r} cannot be converted to RGB ({err})") from None
    arr = np.asarray(img)
    return arr.astype(np.uint16) if mode.startswith("I;16") else arr


def to_float_chw(image, channels: int = 3) -> torch.Tensor:
    """Any supported image (PIL, HWC/HW array, CHW tensor, path) as float32 (channels, H, W) in [0, 1]."""
    if isinstance(image, (str, Path)):
        image = open_image(image)
    if isinstance(image, Image.Image):
        arr = _pil_to_array(image)
    elif isinstance(image, torch.Tensor):  # (C, H, W) tensor: move channels last to share the array rules
        if image.ndim != 3:
            raise DataError(f"image tensor must be (C, H, W), got shape {tuple(image.shape)}")
        arr = image.detach().cpu().permute(1, 2, 0).numpy()
    elif isinstance(image, np.ndarray):
        arr = image
    else:
        raise DataError(f"image must be a PIL image, a NumPy array, a tensor or a path, got {type(image).__name__}")
    if arr.ndim == 2:
        arr = arr[:, :, None]  # (H, W) -> (H, W, 1)
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise DataError(f"image array must be HWC with 1-4 channels (or HW), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"image has no pixels (shape {arr.shape}); expected height and width of at least 1")
    if arr.dtype == np.uint8:
        x = arr.astype(np.float32) / 255
    elif arr.dtype == np.uint16:
        x = arr.astype(np.float32) / 65535
    elif np.issubdtype(arr.dtype, np.floating):
        x = arr.astype(np.float32)
        if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise DataError(f"float image values must lie in [0, 1], found {np.nanmin(x):.4g}..{np.nanmax(x):.4g}")
    else:
        raise DataError(f"image dtype {arr.dtype} is not supported; expected uint8, uint16 or float in [0, 1]")
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)  # (H, W, C) -> (C, H, W)
    if t.shape[0] in (2, 4):  # composite over white, drop alpha
        alpha = t[-1:]
        t = t[:-1] * alpha + (1 - alpha)
    if channels == 3 and t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    elif channels == 1 and t.shape[0] == 3:
        t = (t * torch.tensor(LUMA).view(3, 1, 1)).sum(0, keepdim=True)
    elif channels not in (1, 3):
        raise ConfigError(f"mean/std must have 1 or 3 values (output channels), got {channels}")
    return t.contiguous()


def _size_pair(image_size) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ConfigError(f"image_size must be a positive int or (height, width), got {image_size!r}")
    return size


def preprocess_image(image, image_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Resize, convert to a tensor, normalise and add the batch dimension: returns float32 (1, C, H, W).

    ``image`` is a PIL image, a NumPy array (HWC or HW; uint8, uint16 or float in [0, 1]), a (C, H, W)
    tensor, or a path. Greyscale, alpha and 16-bit inputs follow the rules in this module's docstring.
    ``image_size`` is an int (square) or (height, width); the resize is bilinear with antialiasing.
    C is ``len(mean)``. A wrong mode, shape, dtype or an unreadable file raises a DataError.
    """
    if len(mean) != len(std) or any(s <= 0 for s in std):
        raise ConfigError(f"mean and std need the same length and std must be positive, got {mean} and {std}")
    x = to_float_chw(image, channels=len(mean))  # (C, h, w)
    x = TF.resize(x, list(_size_pair(image_size)), interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
    x = TF.normalize(x.clamp(0, 1), list(mean), list(std))
    return x.unsqueeze(0)  # (C, H, W) -> (1, C, H, W)


# ---------------------------------------------------------------------------------------------------------
# Image folders: PIL -> RGB with the same rules, then torchvision.transforms.v2 pipelines in loader workers
# ---------------------------------------------------------------------------------------------------------

def to_rgb(img: Image.Image) -> Image.Image:
    """A PIL image as 8-bit RGB under the module's rules (fast PIL paths for the common modes)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("L", "1", "CMYK", "YCbCr") or (img.mode == "P" and "transparency" not in img.info):
        return img.convert("RGB")
    if img.mode in ("RGBA", "LA", "P", "RGBa", "La", "PA"):
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img.convert("RGBA")).convert("RGB")
    x = to_float_chw(img, channels=3)  # 16-bit and float modes: exact scaling, then back to 8 bits
    return Image.fromarray((x.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8), "RGB")


def train_transform(img_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, *, scale=(0.08, 1.0), hflip: bool = True,
                    randaugment: bool = True, ra_num_ops: int = 2, ra_magnitude: int = 9) -> v2.Compose:
    """Per-sample training pipeline for image folders: random-resized-crop, flip, RandAugment, normalise."""
    steps = [v2.ToImage(), v2.RandomResizedCrop(img_size, scale=scale, antialias=True)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if randaugment:
        steps.append(v2.RandAugment(num_ops=ra_num_ops, magnitude=ra_magnitude))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def eval_transform(img_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, *, crop_pct: float = 0.875) -> v2.Compose:
    """Evaluation pipeline: resize the short side to img_size / crop_pct, center-crop img_size, normalise."""
    if not 0 < crop_pct <= 1:
        raise ConfigError(f"crop_pct must lie in (0, 1], got {crop_pct}")
    return v2.Compose([v2.ToImage(), v2.Resize(int(round(img_size / crop_pct)), antialias=True),
                       v2.CenterCrop(img_size), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(list(mean), list(std))])
