"""Decoding images: any file, PIL image, array or tensor becomes an 8-bit (C, H, W) tensor by one set of rules.

Every image vitkit reads goes through :func:`to_uint8_chw` (training from folders, evaluation, ``predict``,
the report, the service), so the same file always gives the same pixels. The rules, documented once, here:

- **greyscale** (``L``, ``1``, HW arrays, one channel): the grey value is copied to R, G and B;
- **alpha** (``RGBA``, ``LA``, palette images with transparency, 2 or 4 channels): composited over a white
  background, ``c * a + 1 * (1 - a)``, then the alpha channel is dropped;
- **16-bit** (``I;16`` PIL images, ``uint16`` arrays, and PIL's 32-bit ``I`` mode that 16-bit PNGs open as):
  divided by 65535, so full scale is 1.0 (a 32-bit value above 65535 is an error, not clipped);
- **uint8** is divided by 255; **float** arrays must already lie in [0, 1];
- other PIL modes (``CMYK``, ``YCbCr``, ``P`` without transparency, ...) go through ``Image.convert("RGB")``.
- one output channel from colour: luma (ITU-R 601-2, 0.299 R + 0.587 G + 0.114 B, PIL's ``L`` weights).
- 8 bits in the end: values in [0, 1] become ``round(255 x)``, as in every PIL-based pipeline.

A file larger than ``MAX_IMAGE_PIXELS`` (a decompression bomb, or a scan far beyond any model's input) is
refused before it is decoded.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

LUMA = (0.299, 0.587, 0.114)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
MAX_IMAGE_PIXELS = 89_478_485  # PIL's own limit (about 9,500 x 9,500): larger files are refused, not decoded


def is_grey_mode(mode: str) -> bool:
    """A PIL mode of one channel (with or without alpha): such images become 1-channel input."""
    return mode in ("1", "L", "LA", "La", "I", "F") or mode.startswith("I;16")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def list_images(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (recursively; hidden files and folders, such as ``.DS_Store`` or
    macOS's ``._photo.jpg``, skipped), sorted by path. This is the one rule for which files a folder holds:
    training, ``predict`` and the split file all see these."""
    return sorted(p for p in Path(folder).rglob("*")
                  if is_image_file(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts))


# The raster formats vitkit reads. PIL's others (EPS runs Ghostscript; rarer decoders see less fuzzing) are
# refused, whether the bytes come from a folder or from the network.
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")


def open_image(source, name: str | None = None) -> Image.Image:
    """Open and fully decode an image file (a path) or its bytes. A missing, empty, unreadable or truncated
    image, another format than :data:`FORMATS`, or one over ``MAX_IMAGE_PIXELS`` (a decompression bomb,
    refused by its header before any pixel is decoded) is a DataError naming it (``name``, else the path).
    The same bytes on disk or in memory give the same image; any other object with ``read_bytes()`` (a
    dataset row, :class:`~vitkit.data.hf.Row`) is read like a file."""
    if not isinstance(source, (str, Path, bytes, bytearray, memoryview)) and hasattr(source, "read_bytes"):
        source, name = source.read_bytes(), name or str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        what = name or "the image"
        if not source:
            raise DataError(f"{what} is empty; expected a {'/'.join(f.lower() for f in FORMATS)} image")
        stream = io.BytesIO(source)
    else:
        what = name or f"image file {source}"
        stream = Path(source)
        if stream.is_dir():
            raise DataError(f"{what} is a folder; expected a {'/'.join(f.lower() for f in FORMATS)} image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream, formats=FORMATS) as img:
                w, h = img.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise DataError(f"{what} is {w}x{h} pixels ({w * h:,}), more than the {MAX_IMAGE_PIXELS:,} "
                                    "vitkit decodes (a decompression bomb or a huge scan); shrink it first")
                img.load()  # decode now, so a truncated file fails here and not later
                return img.copy()
    except FileNotFoundError:
        raise DataError(f"{what} does not exist") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{what} is larger than {MAX_IMAGE_PIXELS:,} pixels (a decompression bomb or a huge "
                        "scan); shrink it first") from None
    except UnidentifiedImageError:
        raise DataError(f"{what} is unreadable: not an image, or not a {'/'.join(f.lower() for f in FORMATS)} "
                        "file") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise DataError(f"{what} is unreadable or truncated ({err}); expected a jpg/png/webp/bmp image") from None


def probe_image(path) -> str | None:
    """The PIL mode of a readable image file (its header and structure checked, no full decode for JPEG), or
    None when the file is unreadable or over-large."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=FORMATS) as img:
                mode, size = img.mode, img.size
                img.verify()
        return mode if size[0] * size[1] <= MAX_IMAGE_PIXELS else None
    except Exception:  # PIL raises many types for a bad file; any of them means "unreadable"
        return None


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
        raise DataError(f"images can be made 1- or 3-channel, not {channels}-channel")
    return t.contiguous()




def to_uint8_chw(image, channels: int = 3) -> torch.Tensor:
    """Any supported image as uint8 (channels, H, W) by the module's rules: the one decoding path.

    8-bit RGB and grey inputs take a direct path; everything else (alpha, 16-bit, float, palette, colour to
    grey) goes through :func:`to_float_chw` and is rounded to 8 bits. Both give the same pixels for 8-bit
    input (``round(255 * (x / 255)) == x`` in float32).
    """
    if isinstance(image, (str, Path)) or hasattr(image, "read_bytes"):  # a file, or a dataset row
        image = open_image(image)
    direct = None
    if getattr(image, "size", 1) == 0 or 0 in getattr(image, "shape", (1,)):
        pass  # an empty image: the general path names the problem
    elif isinstance(image, Image.Image) and image.mode in ("RGB", "L"):
        arr = np.asarray(image)
        direct = torch.from_numpy(arr.reshape(*arr.shape[:2], -1).copy()).permute(2, 0, 1)  # (H, W, C) -> (C, H, W)
    elif isinstance(image, np.ndarray) and image.dtype == np.uint8 and (
            image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3))):
        direct = torch.from_numpy(np.ascontiguousarray(image).reshape(*image.shape[:2], -1)).permute(2, 0, 1)
    elif isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] in (1, 3):
        direct = image.detach().cpu()
    if direct is not None:
        if direct.shape[0] == channels:
            return direct.contiguous()
        if direct.shape[0] == 1 and channels == 3:
            return direct.expand(3, -1, -1).contiguous()
    x = to_float_chw(image, channels)  # (C, H, W) in [0, 1]
    return (x * 255).round_().to(torch.uint8)
