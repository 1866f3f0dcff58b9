"""vitkit.data: data sets by name, their train/val/test splits, one preprocessing path, batched augmentation,
a device-resident loader, streamed image folders and tar shards.

    >>> from vitkit.data import load_dataset, DeviceLoader, BatchAugment
    >>> train = load_dataset("digits", split="train")
    >>> loader = DeviceLoader(train, 64, augment=BatchAugment(crop_padding=1))
    >>> images, labels = next(iter(loader))   # float32 (64, 1, 8, 8) normalised, int64 (64,)
"""

from .augment import BatchAugment, recommended_augment, train_transform
from .datasets import (FOLDERS, NAMES, TRAIN_STATS, ImageDataset, SyntheticImageDataset, channel_stats,
                       default_root, load_dataset, make_synthetic)
from .download import check_md5, download_dataset, download_url, md5sum, verify_md5sums
from .imagefolder import FolderLoader, FolderSamples, ImageFolderDataset, decode_folder
from .images import IMAGE_EXTENSIONS, list_images, open_image, to_uint8_chw
from .device_loader import DeviceLoader
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, Normalize, Preprocess, preprocess_image
from .splits import Splits, open_splits, stratified_split
from .shards import ShardSamples, open_shards
from .shard_loader import ShardLoader

__all__ = [
    "load_dataset", "ImageDataset", "SyntheticImageDataset", "make_synthetic", "default_root", "channel_stats",
    "FOLDERS", "NAMES", "TRAIN_STATS",
    "DeviceLoader", "BatchAugment", "recommended_augment", "train_transform",
    "ImageFolderDataset", "FolderSamples", "FolderLoader", "decode_folder",
    "Splits", "open_splits", "stratified_split", "ShardSamples", "ShardLoader", "open_shards",
    "IMAGE_EXTENSIONS", "list_images", "open_image", "to_uint8_chw",
    "Preprocess", "Normalize", "preprocess_image", "IMAGENET_MEAN", "IMAGENET_STD",
    "download_url", "download_dataset", "md5sum", "check_md5", "verify_md5sums",
]
