"""Batched training augmentation on the data's device: random crop with padding, horizontal flip, mixup, cutmix.

Every sample of a batch gets its own crop offset, flip, mixing partner weight and cutmix box, drawn in one
vectorised step (no Python loop over samples). The random numbers come from a CPU ``torch.Generator`` the
caller seeds (the :class:`~vitkit.data.DeviceLoader` seeds it from (seed, epoch, rank, batch index)), so a
batch is reproducible bit for bit on any device; only the few per-sample parameters travel to the device.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError


class BatchAugment:
    """Augment a batch (B, C, H, W) on its own device.

    - ``crop_padding``: pad each side by this many zero (black) pixels, then crop back to (H, W) at a random
      offset per sample (the CIFAR recipe: 4). 0 disables.
    - ``hflip``: flip each sample left-right with probability 1/2 (leave off for digits and MNIST).
    - ``mixup_alpha`` / ``cutmix_alpha``: Beta(alpha, alpha) mixing weights; each sample is mixed with the
      sample at the mirrored batch position (i with B-1-i). With both on, each sample picks one of the two
      with probability 1/2. Targets then become soft (B, num_classes) float rows (label smoothing is the
      loss's: ``optim.label_smoothing``).
    """

    def __init__(self, crop_padding: int = 0, hflip: bool = False, mixup_alpha: float = 0.0,
                 cutmix_alpha: float = 0.0, num_classes: int | None = None):
        if not isinstance(crop_padding, int) or crop_padding < 0:
            raise ConfigError(f"crop_padding must be a non-negative integer, got {crop_padding!r}")
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ConfigError(f"mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha} and {cutmix_alpha}")
        if num_classes is not None and num_classes < 2:
            raise ConfigError(f"num_classes must be at least 2, got {num_classes}")
        self.crop_padding, self.hflip = crop_padding, bool(hflip)
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.num_classes = num_classes

    @property
    def mixing(self) -> bool:
        """Whether targets become soft (mixup or cutmix is on)."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def __repr__(self) -> str:
        return (f"BatchAugment(crop_padding={self.crop_padding}, hflip={self.hflip}, mixup_alpha={self.mixup_alpha}, "
                f"cutmix_alpha={self.cutmix_alpha}, num_classes={self.num_classes})")

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None):
        """Crop/flip, then (if on) mix: returns (images, int64 labels or soft (B, K) targets).

        Mixing needs floats: uint8 input is scaled to [0, 1] first. The loader normalises between the two
        steps instead (mixing commutes with a per-channel affine normalisation).
        """
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        images = self.spatial(images, generator)
        if self.mixing:
            if not images.is_floating_point():
                images = images.float() / 255
            return self.mix(images, labels, generator)
        return images, labels

    def spatial(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random crop with padding and random flip of (B, C, H, W) images of any dtype, as one gather."""
        p = self.crop_padding
        if p == 0 and not self.hflip:
            return images
        b, c, h, w = images.shape
        offset_y = torch.randint(0, 2 * p + 1, (b,), generator=generator)
        offset_x = torch.randint(0, 2 * p + 1, (b,), generator=generator)
        flip = torch.rand(b, generator=generator) < 0.5 if self.hflip else torch.zeros(b, dtype=torch.bool)
        dev = images.device
        ar_h, ar_w = torch.arange(h), torch.arange(w)
        rows = offset_y[:, None] + ar_h  # (B, H): padded-image row of each output row
        cols = offset_x[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # (B, W), reversed if flipped
        hp, wp = h + 2 * p, w + 2 * p
        index = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w).to(dev)  # (B, 1, H*W)
        padded = F.pad(images, (p, p, p, p)) if p else images  # (B, C, Hp, Wp), zeros outside
        out = padded.reshape(b, c, hp * wp).gather(2, index.expand(b, c, h * w))  # (B, C, H*W)
        return out.view(b, c, h, w)

    def mix(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
            num_classes: int | None = None):
        """Per-sample mixup / cutmix of float images (B, C, H, W) with their mirrored partners.

        Returns (images, soft targets (B, K)) where each target row is ``lam * t_i + (1 - lam) * t_partner``
        and, for cutmix, ``lam`` is the exact fraction of the sample's own pixels left after the box is pasted.
        """
        k = num_classes or self.num_classes
        if k is None:
            raise ConfigError("BatchAugment needs num_classes for mixup/cutmix (or a loader that knows it)")
        b, _, h, w = images.shape
        dev = images.device
        use_cut = torch.rand(b, generator=generator) < 0.5 if self.mixup_alpha > 0 and self.cutmix_alpha > 0 \
            else torch.full((b,), self.cutmix_alpha > 0)
        rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
        lam_mix = torch.from_numpy(rng.beta(self.mixup_alpha, self.mixup_alpha, b) if self.mixup_alpha > 0
                                   else np.ones(b)).float()
        lam_cut = torch.from_numpy(rng.beta(self.cutmix_alpha, self.cutmix_alpha, b) if self.cutmix_alpha > 0
                                   else np.ones(b)).float()
        # Cutmix boxes: side ratio sqrt(1 - lam), centre uniform, clipped to the image (as in the paper).
        ratio = (1 - lam_cut).sqrt()
        cut_h, cut_w = (ratio * h).long(), (ratio * w).long()
        cy, cx = torch.randint(0, h, (b,), generator=generator), torch.randint(0, w, (b,), generator=generator)
        y0, y1 = (cy - cut_h // 2).clamp(0, h), (cy + cut_h // 2).clamp(0, h)
        x0, x1 = (cx - cut_w // 2).clamp(0, w), (cx + cut_w // 2).clamp(0, w)
        y1, x1 = torch.where(use_cut, y1, y0), torch.where(use_cut, x1, x0)  # empty box where cutmix is not used
        lam_box = 1 - ((y1 - y0) * (x1 - x0)).float() / (h * w)
        lam = torch.where(use_cut, lam_box, lam_mix)  # (B,)

        ar_h, ar_w = torch.arange(h), torch.arange(w)
        in_rows = (ar_h >= y0[:, None]) & (ar_h < y1[:, None])  # (B, H)
        in_cols = (ar_w >= x0[:, None]) & (ar_w < x1[:, None])  # (B, W)
        mask = (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1).to(dev)  # (B, 1, H, W)
        blend = torch.where(use_cut, torch.ones(b), lam).to(dev).view(b, 1, 1, 1)  # mixup weight, 1 for cutmix
        partner = images.flip(0)  # sample i pairs with sample B-1-i
        mixed = torch.where(mask, partner, images * blend + partner * (1 - blend))
        targets = F.one_hot(labels, k).float()  # (B, K)
        lam_d = lam.to(dev)[:, None]
        return mixed, lam_d * targets + (1 - lam_d) * targets.flip(0)


def recommended_augment(name: str, num_classes: int | None = None, mixup_alpha: float = 0.0,
                        cutmix_alpha: float = 0.0) -> BatchAugment:
    """The usual small-image recipe per data set: CIFAR pad 4 + flip; Fashion-MNIST pad 2 + flip; MNIST pad 2;
    digits pad 1 (no flip for digits: a mirrored 2 is not a 2)."""
    padding, flip = {"cifar10": (4, True), "cifar100": (4, True), "fashion-mnist": (2, True), "mnist": (2, False),
                     "digits": (1, False), "synthetic": (2, False)}.get(name, (0, False))
    return BatchAugment(padding, flip, mixup_alpha, cutmix_alpha, num_classes)


def train_transform(img_size, *, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation: str = "bilinear",
                    hflip: bool = True, randaugment: bool = True, ra_num_ops: int = 2, ra_magnitude: int = 9):
    """Per-sample training augmentation of a streamed image folder, on uint8 (C, H, W) tensors:
    random-resized-crop (``scale``, ``ratio``), flip, RandAugment; the result is uint8 at ``img_size``
    (normalised afterwards by the same :class:`~vitkit.data.preprocess.Normalize` as evaluation)."""
    from torchvision.transforms import v2

    from .preprocess import INTERPOLATIONS, pair

    steps = [v2.RandomResizedCrop(pair(img_size), scale=tuple(scale), ratio=tuple(ratio),
                                  interpolation=INTERPOLATIONS[interpolation], antialias=True)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if randaugment:
        steps.append(v2.RandAugment(num_ops=ra_num_ops, magnitude=ra_magnitude))
    return v2.Compose(steps)
