"""vitkit.data: data sets by name, verified downloads, preprocessing, batched augmentation, a device loader.

    >>> from vitkit.data import load_dataset, DeviceLoader, BatchAugment
    >>> train = load_dataset("digits", split="train")
    >>> loader = DeviceLoader(train, 64, augment=BatchAugment(crop_padding=1))
    >>> images, labels = next(iter(loader))   # float32 (64, 1, 8, 8) normalised, int64 (64,)
"""

from .augment import BatchAugment, recommended_augment
from .datasets import (FOLDERS, NAMES, TRAIN_STATS, ImageDataset, SyntheticImageDataset, channel_stats,
                       default_root, load_dataset, make_synthetic)
from .download import check_md5, download_dataset, download_url, md5sum, verify_md5sums
from .imagefolder import ImageFolderDataset, imagefolder_loaders
from .loader import DeviceLoader
from .transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, preprocess_image, train_transform

__all__ = [
    "load_dataset", "ImageDataset", "SyntheticImageDataset", "make_synthetic", "default_root", "channel_stats",
    "FOLDERS", "NAMES", "TRAIN_STATS",
    "DeviceLoader", "BatchAugment", "recommended_augment",
    "ImageFolderDataset", "imagefolder_loaders",
    "download_url", "download_dataset", "md5sum", "check_md5", "verify_md5sums",
    "preprocess_image", "IMAGENET_MEAN", "IMAGENET_STD", "train_transform", "eval_transform",
]
