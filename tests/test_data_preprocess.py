"""preprocess_image (seed 003) conversion rules, and image folders: labels, strict/skip, loaders."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.data import (IMAGENET_MEAN, IMAGENET_STD, ImageFolderDataset, Preprocess, load_dataset, open_splits,
                         preprocess_image)
from vitkit.data.splits import eval_set
from vitkit.errors import ConfigError, DataError

MEAN, STD = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _norm(rgb01):
    """Reference: a (3,) colour in [0, 1] normalised with the ImageNet statistics, as (1, 3, 1, 1)."""
    return (torch.tensor(rgb01, dtype=torch.float32).view(1, 3, 1, 1) - MEAN) / STD


def test_rgb_inputs_pil_array_path_agree_and_match_the_formula(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "x.png")
    out = preprocess_image(arr)
    assert out.shape == (1, 3, 224, 224) and out.dtype == torch.float32
    expected = (torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255 - MEAN) / STD  # same size: no resampling
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(preprocess_image(Image.fromarray(arr)), out)
    torch.testing.assert_close(preprocess_image(tmp_path / "x.png"), out)
    torch.testing.assert_close(preprocess_image(str(tmp_path / "x.png")), out)
    assert preprocess_image(arr[:50, :70], image_size=(32, 48)).shape == (1, 3, 32, 48)


def test_greyscale_rgba_and_16_bit_rules(tmp_path):
    grey = np.full((10, 12), 51, np.uint8)
    torch.testing.assert_close(preprocess_image(grey, 4), _norm([0.2] * 3).expand(1, 3, 4, 4))
    torch.testing.assert_close(preprocess_image(Image.fromarray(grey), 4), _norm([0.2] * 3).expand(1, 3, 4, 4))
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 0  # fully transparent red -> white
    torch.testing.assert_close(preprocess_image(Image.fromarray(rgba, "RGBA"), 8), _norm([1, 1, 1]).expand(1, 3, 8, 8))
    rgba[..., 3] = 51  # 20% opaque red over white: (1, 0.8, 0.8)
    torch.testing.assert_close(preprocess_image(rgba, 8), _norm([1, 0.8, 0.8]).expand(1, 3, 8, 8))
    deep = np.full((6, 6), 13107, np.uint16)  # 13107 / 65535 = 0.2
    torch.testing.assert_close(preprocess_image(deep, 6), _norm([0.2] * 3).expand(1, 3, 6, 6))
    Image.fromarray(deep).save(tmp_path / "deep.png")  # a real 16-bit PNG (PIL opens it as I;16 or I)
    torch.testing.assert_close(preprocess_image(tmp_path / "deep.png", 6), _norm([0.2] * 3).expand(1, 3, 6, 6))
    rgb = np.zeros((4, 4, 3), np.float32)
    rgb[..., 1] = 1.0  # green, one-channel statistics -> luma 0.587, in 8 bits round(0.587 * 255) = 150
    out = preprocess_image(rgb, 4, mean=(0.5,), std=(0.25,))
    torch.testing.assert_close(out, torch.full((1, 1, 4, 4), (150 / 255 - 0.5) / 0.25))


def test_bad_inputs_raise_data_errors(tmp_path):
    with pytest.raises(DataError, match="float image values must lie in"):
        preprocess_image(np.full((4, 4, 3), 2.0))
    with pytest.raises(DataError, match="HWC with 1-4 channels"):
        preprocess_image(np.zeros((3, 4, 4, 5), np.uint8))
    with pytest.raises(DataError, match="no pixels"):
        preprocess_image(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(DataError, match="dtype int64 is not supported"):
        preprocess_image(np.zeros((4, 4), np.int64))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(DataError, match="broken.jpg is unreadable"):
        preprocess_image(tmp_path / "broken.jpg")
    with pytest.raises(DataError, match="missing.png does not exist"):
        preprocess_image(tmp_path / "missing.png")
    with pytest.raises(ConfigError, match="image_size"):
        preprocess_image(np.zeros((4, 4), np.uint8), image_size=0)


def _folder(root, n=5, size=(20, 24)):
    """Classes a, b, c; every image of class k is the flat colour 40 * (k + 1), saved in mixed formats."""
    for k, name in enumerate("abc"):
        (root / name).mkdir(parents=True)
        for i in range(n):
            img = Image.fromarray(np.full((*size, 3), 40 * (k + 1), np.uint8))
            img.save(root / name / f"{i}.{['png', 'bmp', 'webp', 'png', 'png'][i % 5]}", lossless=True)
    return root


def test_image_folder_labels_follow_folders_and_bad_files_are_skipped_or_fatal(tmp_path):
    root = _folder(tmp_path / "imgs")
    (root / "b" / "junk.jpg").write_bytes(b"definitely not a jpeg")
    (root / "b" / "notes.txt").write_text("ignored: not an image extension")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(f"imagefolder:{root}")
    assert any("skipped 1 unreadable image file(s)" in str(w.message) for w in caught)
    assert ds.classes == ["a", "b", "c"] and len(ds) == 15 and [p.name for p in ds.skipped] == ["junk.jpg"]
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.shape == (3, 20, 24) and round(float(image[0, 0, 0]) * 255) == 40 * (label + 1)
    with pytest.raises(DataError, match="junk.jpg is unreadable"):
        ImageFolderDataset(root, strict=True)


def test_truncated_image_raises_when_strict_and_never_gives_a_wrong_label(tmp_path):
    root = _folder(tmp_path / "imgs", n=2)
    good = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    good.save(root / "c" / "z.jpg", quality=95)
    data = (root / "c" / "z.jpg").read_bytes()
    (root / "c" / "z.jpg").write_bytes(data[: len(data) // 2])  # header intact, scan passes, decoding fails
    strict = ImageFolderDataset(root, strict=True)
    idx = [p.name for p, _ in strict.samples].index("z.jpg")
    with pytest.raises(DataError, match="z.jpg is unreadable or truncated"):
        strict[idx]
    lenient = ImageFolderDataset(root)
    with pytest.warns(UserWarning, match="z.jpg failed to decode"):
        image, label = lenient[idx]
    assert round(float(image[0, 0, 0]) * 255) == 40 * (label + 1)  # the substitute carries its own label


def test_folder_splits_and_the_evaluation_pipeline(tmp_path):
    root = _folder(tmp_path / "one", n=10)
    splits = open_splits(f"imagefolder:{root}", val_fraction=0.2, split_seed=0)
    train, val = splits.parts["train"], splits.parts["val"]
    assert len(train) == 24 and len(val) == 6 and "test" not in splits.parts
    assert sorted(val.targets) == [0, 0, 1, 1, 2, 2]  # stratified
    assert not {p for p, _ in train.samples} & {p for p, _ in val.samples}
    preprocess = Preprocess(16, IMAGENET_MEAN, IMAGENET_STD, crop_pct=0.875)
    ev = eval_set(splits, "val", preprocess, 4)
    x, y = next(iter(ev.loader))  # flat colours: resize + center-crop + normalise is exact
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    colour = torch.tensor([40.0 * (k + 1) for k in y.tolist()]).view(-1, 1, 1, 1) / 255
    torch.testing.assert_close(x, ((colour - MEAN) / STD).expand(len(y), 3, 16, 16), atol=1e-5, rtol=0)
    split = tmp_path / "split"
    _folder(split / "train", n=3)
    _folder(split / "val", n=2)
    splits = open_splits(f"imagefolder:{split}")
    assert (len(splits.parts["train"]), len(splits.parts["val"])) == (9, 6)
    assert len(load_dataset(f"imagefolder:{split}", split="train")) == 9
