"""Image folders (one sub-folder per class): scanning, a dataset, resumable streaming loaders, decoding once.

Unreadable images never turn into silent wrong labels: the scan opens every file's header and runs PIL's
``verify()``. With ``strict=True`` the first bad file raises a DataError naming it; otherwise bad files are
left out with one warning that counts them. A file that passes the scan but fails to decode later (a
truncated JPEG, say) raises in strict mode, or is replaced by the next readable sample *with that sample's
own label* and a warning.

Streaming is exactly resumable: the sampler yields ``(epoch, index)`` keys in the order
:func:`~vitkit.data.device_loader.epoch_indices` gives (the in-memory loader's order), and each sample's random
augmentation is drawn from a generator seeded by (seed, epoch, index), so what a worker produces does not
depend on which worker it is, on worker restarts, or on where a resumed run starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import DataError
from .images import IMAGE_EXTENSIONS, list_images, open_image, probe_image, to_uint8_chw
from .device_loader import derive_seed, epoch_indices, samples_per_rank, seeded
from .in_memory import ImageDataset
from .preprocess import Preprocess


@dataclass
class FolderSamples:
    """The files of one split: ``samples`` is a list of (path, label)."""

    samples: list[tuple[Path, int]]

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]


def scan_class_folders(root, *, strict: bool = False, verify: bool = True):
    """``root/<class>/**/<image>`` -> (classes sorted by folder name, [(path, label)], skipped paths, the set
    of PIL modes seen). See the module docstring for unreadable files."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; expected one sub-folder of images per class")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"image folder {root} has no class sub-folders; expected {root}/<class>/<image>.jpg")
    samples, skipped, modes = [], [], set()
    for label, name in enumerate(classes):
        before = len(samples)
        for path in list_images(root / name):  # the files predict would find in the folder: one rule
            mode = probe_image(path) if verify else "RGB"
            if mode is None:
                if strict:
                    raise DataError(f"image file {path} is unreadable; fix or remove it, or load with "
                                    "strict=False to skip unreadable files")
                skipped.append(path)
                continue
            modes.add(mode)
            samples.append((path, label))
        if len(samples) == before:
            raise DataError(f"class folder {root / name} holds no readable {'/'.join(IMAGE_EXTENSIONS)} image; "
                            "add images or remove the folder (a class without images cannot be learned)")
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable image file(s) in {root}, e.g. {skipped[0]}", stacklevel=2)
    if not samples:
        raise DataError(f"image folder {root} holds no readable {'/'.join(IMAGE_EXTENSIONS)} images")
    return classes, samples, skipped, modes


def image_modes(paths) -> set[str]:
    """The PIL modes of image files, from their headers only."""
    modes = set()
    for path in paths:
        try:
            with Image.open(path) as img:
                modes.add(img.mode)
        except Exception:  # an unreadable file is reported where it is decoded
            continue
    return modes


class ImageFolderDataset(Dataset):
    """Image files as ``(transform(uint8 (C, H, W)), label)``; without a transform a float (C, H, W) in [0, 1].

    Build it from a folder (``root/<class>/<image>``, classes sorted by folder name) or from ``samples``
    (``[(path, label)]``) and ``classes``. Images are decoded to ``channels`` by the rules of
    :mod:`vitkit.data.images`. A key may be an index or an ``(epoch, index)`` pair (from :class:`EpochSampler`);
    with a pair and a ``seed``, the transform's random draws come from a generator seeded by
    (seed, epoch, index).
    """

    def __init__(self, root=None, transform=None, *, samples=None, classes=None, channels: int = 3,
                 strict: bool = False, verify: bool = True, seed: int | None = None):
        if samples is None:
            classes, samples, skipped, _ = scan_class_folders(root, strict=strict, verify=verify)
        else:
            skipped = []
            if not samples:
                raise DataError("an image folder split with no images cannot be loaded")
        self.root = Path(root) if root is not None else None
        self.classes, self.samples, self.skipped = list(classes), list(samples), skipped
        self.targets = [label for _, label in self.samples]
        self.transform, self.channels, self.strict, self.seed = transform, channels, strict, seed

    def __len__(self) -> int:
        return len(self.samples)

    def decode(self, i: int) -> tuple[torch.Tensor, int]:
        """Sample ``i`` as (uint8 (C, H, W), label), or the next readable one (see the module docstring)."""
        for offset in range(len(self.samples)):
            path, label = self.samples[(i + offset) % len(self.samples)]
            try:
                return to_uint8_chw(open_image(path), self.channels), label
            except DataError:
                if self.strict:
                    raise
                warnings.warn(f"image file {path} failed to decode; using the next readable sample instead")
        raise DataError(f"no image of this split could be decoded (the first is {self.samples[0][0]})")

    def __getitem__(self, key):
        epoch, i = key if isinstance(key, tuple) else (None, key)
        x, label = self.decode(i)
        if self.transform is None:
            return x.float() / 255, label
        if epoch is None or self.seed is None:
            return self.transform(x), label
        return seeded(self.transform, x, self.seed, epoch, 3, i), label


class EpochSampler(Sampler):
    """``(epoch, index)`` keys of this rank's share of an epoch, in :func:`epoch_indices` order, optionally
    starting part-way (a resumed epoch skips the batches it already trained on, without decoding them)."""

    def __init__(self, n: int, seed: int = 0, *, shuffle: bool, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False):
        self.n, self.seed, self.shuffle, self.drop_last = n, seed, shuffle, drop_last
        self.rank, self.world_size, self.epoch, self.start = rank, world_size, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return samples_per_rank(self.n, self.world_size, self.drop_last)

    def __iter__(self):
        start, self.start = self.start, 0
        order = epoch_indices(self.n, self.seed, self.epoch, shuffle=self.shuffle, rank=self.rank,
                              world_size=self.world_size, drop_last=self.drop_last)
        return iter([(self.epoch, i) for i in order[start:].tolist()])


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _quiet_worker(_: int) -> None:
    """Loader workers leave Ctrl-C and SIGTERM to the main process, which stops the run once and cleanly.
    They are born with both held back (:func:`_stop_signals_held`); ignored now, a held one is dropped."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def _stop_signals_held():
    """Hold Ctrl-C and SIGTERM back while loader workers start. A terminal or a job scheduler signals the whole
    process group: a worker hit before :func:`_quiet_worker` runs would die of it and fail the loader. Held,
    the signal reaches the main process as soon as the workers are up; the workers inherit the held mask."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class FolderLoader:
    """Batches ``(float images (B, C, H, W), int64 labels (B,))`` streamed from a :class:`ImageFolderDataset`
    through ``workers`` processes, with the in-memory loader's interface: ``set_epoch(e)``, ``skip(k)`` (start
    the next pass at batch k) and ``len()``. With ``mix`` (a mixing BatchAugment) batches are mixed on
    ``device`` with a generator seeded by (seed, epoch, rank, batch), like the in-memory loader's."""

    def __init__(self, dataset: ImageFolderDataset, batch_size: int, *, shuffle: bool, drop_last: bool = False,
                 seed: int = 0, workers: int = 0, rank: int = 0, world_size: int = 1, mix=None, device="cpu",
                 pin_memory: bool | None = None):
        drop_last = drop_last and samples_per_rank(len(dataset), world_size, True) >= batch_size
        self.sampler = EpochSampler(len(dataset), seed, shuffle=shuffle, rank=rank, world_size=world_size,
                                    drop_last=drop_last)
        self.dataset, self.batch_size, self.seed, self.rank = dataset, batch_size, seed, rank
        self.mix, self.device, self.num_classes = mix, torch.device(device), len(dataset.classes)
        pin = torch.cuda.is_available() if pin_memory is None else pin_memory
        # Its own generator: otherwise each new pass draws its workers' base seed from the global RNG, and a
        # resumed run (which starts passes at other moments) would see other dropout masks afterwards. Workers
        # live for one pass: they ignore SIGTERM (the main process stops the run), so they must be shut down
        # by the pass that started them, not left for the interpreter's exit to terminate.
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler, drop_last=drop_last,
                                 num_workers=workers, pin_memory=pin, persistent_workers=False,
                                 worker_init_fn=_quiet_worker if workers > 0 else None,
                                 generator=torch.Generator().manual_seed(derive_seed(seed, 4, rank)))

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def skip(self, k: int) -> None:
        self.sampler.start = k * self.batch_size
        self._first = k

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        first, self._first = getattr(self, "_first", 0), 0
        with _stop_signals_held() if self.loader.num_workers else contextlib.nullcontext():
            batches = iter(self.loader)  # starts the workers
        for b, (images, labels) in enumerate(batches, start=first):
            if self.mix is not None:
                g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 2, self.rank, b))
                images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
                images, labels = self.mix.mix(images, labels, g, self.num_classes)
            yield images, labels


class Chain:
    """Callables applied in turn; picklable (unlike a lambda), so it can travel to loader worker processes
    started by spawn (macOS, Windows)."""

    def __init__(self, *steps):
        self.steps = steps

    def __call__(self, x):
        for step in self.steps:
            x = step(x)
        return x


def eval_transform(preprocess: Preprocess) -> Chain:
    """The per-sample form of :class:`Preprocess` for a decoded uint8 image (geometry, then normalisation)."""
    return Chain(preprocess.geometry, preprocess.normalize)


# ---------------------------------------------------------------------------------------------------------
# Decoding a folder once into memory (and optionally a cache file)


def decode_folder(samples: FolderSamples, classes, preprocess: Preprocess, *, cache_dir=None, workers: int = 0,
                  name: str = "folder"):
    """Every image of ``samples`` decoded once through ``preprocess``'s geometry into an in-memory
    :class:`~vitkit.data.ImageDataset` (uint8 (N, C, H, W) at the model's size, normalised later with
    ``preprocess``'s statistics; ``sources`` holds each image's file), for the device loader. Files that fail
    to decode are left out with one warning. With ``cache_dir`` the result is stored there as safetensors,
    keyed by the files (path, size, modification time) and the geometry, and read back on the next run."""
    cached = None
    if cache_dir is not None:
        cached = Path(cache_dir).expanduser() / f"{_cache_key(samples, preprocess)}.safetensors"
    tensors = _read_cache(cached) if cached is not None and cached.is_file() else None
    if tensors is None:
        tensors = _decode_all(samples, preprocess, workers)
        if cached is not None:
            from safetensors.torch import save_file

            from ..fileio import atomic_path
            with atomic_path(cached) as tmp:
                save_file(tensors, str(tmp))
    kept = tensors["kept"].tolist()
    ds = ImageDataset(tensors["images"], tensors["labels"], classes, preprocess.mean, preprocess.std, name=name,
                      sources=[str(samples.samples[i][0]) for i in kept])
    ds.preprocessed_by = preprocess  # its geometry is applied already
    return ds


def _decode_all(samples: FolderSamples, preprocess: Preprocess, workers: int) -> dict[str, torch.Tensor]:
    def one(path):
        try:
            return preprocess.load(path)  # (C, H, W) uint8
        except DataError:
            return None

    with ThreadPoolExecutor(max_workers=max(1, workers or os.cpu_count() or 1)) as pool:
        decoded = list(pool.map(one, [p for p, _ in samples.samples]))
    kept = [i for i, x in enumerate(decoded) if x is not None]
    if len(kept) < len(decoded):
        bad = next(samples.samples[i][0] for i, x in enumerate(decoded) if x is None)
        warnings.warn(f"left out {len(decoded) - len(kept)} image(s) that failed to decode, e.g. {bad}", stacklevel=3)
    if not kept:
        raise DataError(f"none of the {len(decoded)} images of this split could be decoded")
    return {"images": torch.stack([decoded[i] for i in kept]),  # (N, C, H, W) uint8
            "labels": torch.tensor([samples.samples[i][1] for i in kept], dtype=torch.int64),
            "kept": torch.tensor(kept, dtype=torch.int64)}


def _read_cache(path: Path) -> dict[str, torch.Tensor] | None:
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except Exception:  # a damaged cache file is rebuilt, never trusted
        warnings.warn(f"decoded-image cache {path} is unreadable; decoding the folder again", stacklevel=3)
        return None


def _cache_key(samples: FolderSamples, preprocess: Preprocess) -> str:
    h = hashlib.sha1(repr(sorted(preprocess.to_dict().items())).encode())
    for path, label in samples.samples:
        st = path.stat()
        h.update(f"{path.resolve()}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]
