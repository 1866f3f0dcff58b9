"""DeviceLoader and BatchAugment: exact normalisation, per-sample crops/flips, mixing, seeds, resume, shards."""

import pytest
import torch

from vitkit.data import BatchAugment, DeviceLoader, ImageDataset, recommended_augment
from vitkit.errors import ConfigError, DataError


def _dataset(n=50, c=3, size=8, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8)
    return ImageDataset(images, torch.arange(n) % k, [f"c{i}" for i in range(k)], name="toy")


def _epoch(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_batches_are_normalised_exactly_in_order_without_shuffle():
    ds = _dataset()
    loader = DeviceLoader(ds, 16, shuffle=False)
    batches = list(loader)
    assert len(loader) == len(batches) == 4 and [len(y) for _, y in batches] == [16, 16, 16, 2]
    x, y = batches[1]
    mean, std = torch.tensor(ds.mean).view(1, 3, 1, 1), torch.tensor(ds.std).view(1, 3, 1, 1)
    expected = (ds.images[16:32].double() / 255 - mean.double()) / std.double()
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and y.tolist() == ds.labels[16:32].tolist()
    torch.testing.assert_close(x.double(), expected, atol=1e-5, rtol=0)
    assert len(DeviceLoader(ds, 16, drop_last=True)) == 3


def test_same_seed_same_batches_other_epoch_or_seed_other_order():
    ds = _dataset()
    aug = BatchAugment(crop_padding=2, hflip=True)
    a = _epoch(DeviceLoader(ds, 16, seed=3, augment=aug), 0)
    b = _epoch(DeviceLoader(ds, 16, seed=3, augment=aug), 0)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    loader = DeviceLoader(ds, 50, seed=3)
    orders = [_epoch(loader, e)[0][1] for e in (0, 1)]
    assert sorted(orders[0].tolist()) == sorted(ds.labels.tolist())  # an epoch sees every sample once
    assert not torch.equal(loader.epoch_order(), DeviceLoader(ds, 50, seed=4).epoch_order())
    loader.set_epoch(0)
    e0 = loader.epoch_order()
    loader.set_epoch(1)
    assert not torch.equal(e0, loader.epoch_order()) and sorted(e0.tolist()) == list(range(50))


def test_skip_resumes_mid_epoch_bit_for_bit_with_augmentation_and_mixing():
    ds = _dataset()
    aug = BatchAugment(crop_padding=2, hflip=True, mixup_alpha=0.4, cutmix_alpha=1.0)
    full = _epoch(DeviceLoader(ds, 8, seed=1, augment=aug), 2)
    resumed = DeviceLoader(ds, 8, seed=1, augment=aug)
    resumed.set_epoch(2)
    resumed.skip(3)
    rest = [(x, y) for x, y in resumed]
    assert len(rest) == len(full) - 3
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(full[3:], rest))
    assert len(list(resumed)) == len(full)  # skip applies to one iteration only
    x, y = rest[0]
    assert y.shape == (8, 5) and y.dtype == torch.float32
    torch.testing.assert_close(y.sum(1), torch.ones(8))


@pytest.mark.parametrize("n,drop_last", [(50, False), (51, False), (51, True)])
def test_two_ranks_have_disjoint_shards_that_cover_the_epoch(n, drop_last):
    ds = _dataset(n)
    ds.labels = torch.arange(n)  # label = sample index, to read back which samples a rank saw
    ds.classes = [str(i) for i in range(n)]
    seen = []
    for rank in (0, 1):
        loader = DeviceLoader(ds, 8, seed=5, rank=rank, world_size=2, drop_last=drop_last)
        loader.set_epoch(7)
        seen.append(torch.cat([y for _, y in loader]).tolist())
        assert len(loader) == (3 if drop_last else 4)
    a, b = set(seen[0]), set(seen[1])
    if n % 2 == 0:
        assert not a & b and a | b == set(range(n)) and len(seen[0]) == len(seen[1]) == n // 2
    elif drop_last:  # the padding-free shards: disjoint, 24 full batches' worth
        assert not a & b and len(seen[0]) == len(seen[1]) == 24
    else:  # padded: every sample is seen, exactly one twice (the first of the epoch's order)
        assert a | b == set(range(n)) and len(seen[0]) + len(seen[1]) == n + 1 and len(a & b) <= 1


def test_spatial_augment_is_a_per_sample_crop_of_the_padded_image_or_its_mirror():
    x = torch.randint(0, 256, (32, 2, 6, 6), dtype=torch.uint8)
    p = 2
    out = BatchAugment(crop_padding=p, hflip=True).spatial(x, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    found = []
    for i in range(len(x)):  # reference: search every offset and flip (a loop is fine in a test)
        matches = [(dy, dx, f) for dy in range(2 * p + 1) for dx in range(2 * p + 1) for f in (0, 1)
                   if torch.equal(out[i], (padded[i, :, dy:dy + 6, dx:dx + 6].flip(2) if f else
                                           padded[i, :, dy:dy + 6, dx:dx + 6]))]
        assert matches, f"sample {i} is not a crop of its padded image"
        found.append(matches[0])
    assert len({m[:2] for m in found}) > 5 and {m[2] for m in found} == {0, 1}  # per-sample offsets and flips
    flip_only = BatchAugment(hflip=True).spatial(x, torch.Generator().manual_seed(1))
    assert all(torch.equal(o, s) or torch.equal(o, s.flip(2)) for o, s in zip(flip_only, x))


def test_mixup_images_and_targets_agree():
    x = torch.rand(8, 3, 4, 4)
    y = torch.arange(8) % 4
    mixed, t = BatchAugment(mixup_alpha=0.5, num_classes=4).mix(x, y, torch.Generator().manual_seed(0))
    lam = t[torch.arange(8), y]  # weight of the own class (partners i, 7-i have different labels here)
    assert torch.all(y != y.flip(0))
    torch.testing.assert_close(mixed, lam.view(8, 1, 1, 1) * x + (1 - lam.view(8, 1, 1, 1)) * x.flip(0))
    assert len(set(lam.tolist())) == 8  # a weight per sample


def test_cutmix_pastes_a_box_whose_area_sets_the_target():
    x = torch.zeros(16, 1, 8, 8)
    x[8:] = 1  # first half black, second half white: partner of i < 8 is white
    y = torch.tensor([0] * 8 + [1] * 8)
    mixed, t = BatchAugment(cutmix_alpha=1.0, num_classes=2).mix(x, y, torch.Generator().manual_seed(0))
    own = (mixed == x).float().mean(dim=(1, 2, 3))
    torch.testing.assert_close(t[torch.arange(16), y], own)
    assert ((mixed == 0) | (mixed == 1)).all() and (own < 1).any()


def test_call_on_uint8_and_recommended_recipes():
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    images, targets = BatchAugment(2, True, mixup_alpha=1.0, num_classes=3)(x, torch.tensor([0, 1, 2, 0]))
    assert images.dtype == torch.float32 and targets.shape == (4, 3)
    assert not recommended_augment("digits").hflip and recommended_augment("cifar10").crop_padding == 4


def test_errors_are_config_or_data_errors():
    with pytest.raises(ConfigError, match="crop_padding"):
        BatchAugment(crop_padding=-1)
    with pytest.raises(ConfigError, match="rank must lie"):
        DeviceLoader(_dataset(), 4, rank=2, world_size=2)
    with pytest.raises(DataError, match="uint8 images"):
        DeviceLoader(torch.utils.data.TensorDataset(torch.zeros(3)), 4)
    with pytest.raises(ConfigError, match="skip count"):
        DeviceLoader(_dataset(), 16).skip(9)
