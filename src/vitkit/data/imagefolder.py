"""Image folders (one sub-folder per class), streamed from disk through DataLoader worker processes.

Unreadable images never turn into silent wrong labels: the scan opens every file's header and runs PIL's
``verify()``. With ``strict=True`` the first bad file raises a DataError naming it; otherwise bad files are
left out with one warning that counts them (``dataset.skipped`` lists them). A file that passes the scan but
fails to decode later (a truncated JPEG, say) raises in strict mode, or is replaced by the next readable
sample *with that sample's own label* and a warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.transforms import v2

from ..errors import ConfigError, DataError
from .transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, open_image, to_rgb, train_transform

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def _verifies(path: Path) -> bool:
    """Whether PIL can identify the file and its structure verifies (cheap: no full decode for JPEG)."""
    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except Exception:  # PIL raises many types for a bad file; any of them means "unreadable"
        return False


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>`` files as ``(transform(RGB PIL image), label)``; classes sorted by folder name.

    Without a transform a sample is a float (3, H, W) tensor in [0, 1]. Images are converted to RGB by the
    rules of :mod:`vitkit.data.transforms` (grey copied, alpha over white, 16-bit scaled).
    """

    def __init__(self, root, transform=None, *, strict: bool = False, verify: bool = True):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist; expected one sub-folder of images per class")
        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            raise DataError(f"image folder {root} has no class sub-folders; expected root/<class>/<image>.jpg")
        self.root, self.strict = root, strict
        self.samples: list[tuple[Path, int]] = []
        self.skipped: list[Path] = []
        for label, name in enumerate(self.classes):
            for path in sorted((root / name).rglob("*")):
                if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
                    continue
                if verify and not _verifies(path):
                    if strict:
                        raise DataError(f"image file {path} is unreadable; fix or remove it, or load with "
                                        "strict=False to skip unreadable files")
                    self.skipped.append(path)
                    continue
                self.samples.append((path, label))
        if self.skipped:
            warnings.warn(f"skipped {len(self.skipped)} unreadable image file(s) in {root}, "
                          f"e.g. {self.skipped[0]}", stacklevel=2)
        if not self.samples:
            raise DataError(f"image folder {root} holds no readable {'/'.join(IMAGE_EXTENSIONS)} images")
        self.targets = [label for _, label in self.samples]
        self.transform = transform if transform is not None else \
            v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        for offset in range(len(self.samples)):
            path, label = self.samples[(i + offset) % len(self.samples)]
            try:
                image = to_rgb(open_image(path))
            except DataError:
                if self.strict:
                    raise
                warnings.warn(f"image file {path} failed to decode; using the next readable sample instead")
                continue
            return self.transform(image), label
        raise DataError(f"no image in {self.root} could be decoded")

    def view(self, indices=None, transform=None) -> "ImageFolderDataset":
        """A copy restricted to ``indices`` (all by default) with another transform; the scan is not redone."""
        new = object.__new__(ImageFolderDataset)
        new.__dict__.update(self.__dict__)
        if indices is not None:
            new.samples = [self.samples[i] for i in indices]
            new.targets = [label for _, label in new.samples]
        if transform is not None:
            new.transform = transform
        return new


def stratified_split(targets: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val): ``round(fraction * n_k)`` (at least 1 when n_k > 1) random samples of each class."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(targets)
    train, val = [], []
    for k in labels.unique().tolist():
        idx = (labels == k).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)].tolist()
        n_val = min(len(idx) - 1, max(1, round(fraction * len(idx)))) if len(idx) > 1 else 0
        val += idx[:n_val]
        train += idx[n_val:]
    return sorted(train), sorted(val)


def imagefolder_loaders(root, img_size: int, batch_size: int, workers: int = 4, *, val_fraction: float = 0.1,
                        seed: int = 0, mean=IMAGENET_MEAN, std=IMAGENET_STD, randaugment: bool = True,
                        hflip: bool = True, scale=(0.08, 1.0), crop_pct: float = 0.875, strict: bool = False,
                        rank: int = 0, world_size: int = 1, pin_memory: bool | None = None):
    """Train and eval ``DataLoader``s over an image folder; returns ``(train_loader, eval_loader)``.

    Layout: ``root/train/<class>/`` with ``root/val/<class>/`` (or ``root/test/``); or a single
    ``root/<class>/`` split per class into train and eval with ``val_fraction`` and ``seed``. Training uses
    random-resized-crop, flip and RandAugment (:func:`train_transform`), evaluation resize + center-crop
    (:func:`eval_transform`), both in ``workers`` worker processes. With ``world_size > 1`` both loaders use a
    ``DistributedSampler`` (call ``train_loader.sampler.set_epoch(e)`` each epoch); with one process the
    training order comes from a generator seeded with ``seed``. Batches: (float (B, 3, S, S), int64 (B,)).
    """
    if not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"workers must be a non-negative integer, got {workers!r}")
    root = Path(root).expanduser()
    train_tf = train_transform(img_size, mean, std, scale=scale, hflip=hflip, randaugment=randaugment)
    eval_tf = eval_transform(img_size, mean, std, crop_pct=crop_pct)
    val_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if (root / "train").is_dir() and val_dir is not None:
        train_set = ImageFolderDataset(root / "train", train_tf, strict=strict)
        eval_set = ImageFolderDataset(val_dir, eval_tf, strict=strict)
        if eval_set.classes != train_set.classes:
            raise DataError(f"class folders of {val_dir} differ from those of {root / 'train'}")
    else:
        if not 0 < val_fraction < 1:
            raise ConfigError(f"val_fraction must lie in (0, 1), got {val_fraction}")
        full = ImageFolderDataset(root, strict=strict)
        train_idx, val_idx = stratified_split(full.targets, val_fraction, seed)
        train_set, eval_set = full.view(train_idx, train_tf), full.view(val_idx, eval_tf)
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    common = dict(batch_size=batch_size, num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)
    if world_size > 1:
        train_sampler = DistributedSampler(train_set, world_size, rank, shuffle=True, seed=seed, drop_last=True)
        eval_sampler = DistributedSampler(eval_set, world_size, rank, shuffle=False)
        train = DataLoader(train_set, sampler=train_sampler, drop_last=True, **common)
        evaluation = DataLoader(eval_set, sampler=eval_sampler, **common)
    else:
        g = torch.Generator().manual_seed(seed)
        train = DataLoader(train_set, shuffle=True, generator=g, drop_last=len(train_set) >= batch_size, **common)
        evaluation = DataLoader(eval_set, shuffle=False, **common)
    return train, evaluation
