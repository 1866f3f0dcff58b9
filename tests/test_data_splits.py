"""Which images land in train / val / test for every layout (vitkit.data.splits), the split file a run writes,
how many channels a folder gets, the built-in digits split, the one evaluation preprocessing path
(vitkit.data.preprocess) and the refusal of decompression bombs. Folders are built on the fly with PIL."""

import re
import shutil
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.cli import main
from vitkit.data import DeviceLoader, ImageFolderDataset, Preprocess, decode_folder, open_image
from vitkit.data.imagefolder import eval_transform, scan_class_folders
from vitkit.data.splits import in_memory, open_splits, stratified_split
from vitkit.errors import DataError

SIZES = [(13, 17), (20, 24), (24, 20), (17, 13), (16, 16)]  # (height, width): odd and mixed within a folder


def save(path: Path, mode: str, size, level: int, rng) -> Path:
    """One image of PIL ``mode`` ("L", "RGB", "I;16", "RGBA"), ``size`` (h, w), mean brightness ``level``."""
    h, w = size
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = rng.integers(-25, 26, (h, w, 3))
    rgb = np.clip(level + noise, 0, 255).astype(np.uint8)  # (h, w, 3)
    if mode == "L":
        img = Image.fromarray(rgb[..., 0], "L")
    elif mode == "RGB":
        img = Image.fromarray(rgb, "RGB")
    elif mode == "RGBA":
        alpha = rng.integers(0, 256, (h, w, 1)).astype(np.uint8)
        img = Image.fromarray(np.concatenate([rgb, alpha], axis=2), "RGBA")
    elif mode == "I;16":
        img = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)  # 16-bit grey
    else:
        raise ValueError(mode)
    img.save(path)
    return path


def make_classes(root: Path, counts: dict, mode="L", seed=0, modes=None) -> list[Path]:
    """``root/<class>/<i>.png`` with counts[class] images each (class k is brighter than class k-1); returns
    every file, sorted. ``modes`` (a list) cycles image modes within each class."""
    rng = np.random.default_rng(seed)
    files = []
    for k, (name, n) in enumerate(sorted(counts.items())):
        for i in range(n):
            m = modes[i % len(modes)] if modes else mode
            files.append(save(root / name / f"{i:02d}.png", m, SIZES[i % len(SIZES)], 40 + 60 * k, rng))
    return sorted(files)


def rel(samples, root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p, _ in samples]


def files_of(splits, split: str) -> list[str]:
    return rel(splits.parts[split].samples, splits.root)


def per_class(splits, split: str) -> dict[str, int]:
    return dict(sorted(Counter(splits.classes[label] for _, label in splits.parts[split].samples).items()))


def one_sentence(text: str) -> bool:
    """A single line holding one sentence (a period followed by a new capitalised sentence means two)."""
    text = text.strip()
    return bool(text) and "\n" not in text and not re.search(r"\.\s+[A-Z]", text) and "Traceback" not in text


def check_labels(splits) -> None:
    """Every sample's label names the class folder it sits in."""
    for part in splits.parts.values():
        for path, label in part.samples:
            assert splits.classes[label] == path.parent.name, path


# ---------------------------------------------------------------------------------------------------------
# The split rule, layout by layout


FLAT_COUNTS = {"a": 10, "b": 8, "c": 7, "d": 2, "e": 1}
# round(0.2 * n): a 2.0 -> 2, b 1.6 -> 2 (rounded up), c 1.4 -> 1 (down), d 0.4 -> 1 (at least one of >= 2),
# e: a single image stays in train.
FLAT_VAL = {"a": 2, "b": 2, "c": 1, "d": 1}


def test_flat_folder_holds_out_a_stratified_reproducible_val_split_and_has_no_test(tmp_path):
    root = tmp_path / "flat"
    files = make_classes(root, FLAT_COUNTS)
    splits = open_splits(f"imagefolder:{root}", val_fraction=0.2, split_seed=0)
    assert splits.classes == ["a", "b", "c", "d", "e"] and splits.is_folder and splits.root == root
    assert list(splits.parts) == ["train", "val"]
    assert per_class(splits, "val") == FLAT_VAL
    assert per_class(splits, "train") == {"a": 8, "b": 6, "c": 6, "d": 1, "e": 1}
    check_labels(splits)
    train, val = files_of(splits, "train"), files_of(splits, "val")
    assert set(train).isdisjoint(val)
    assert sorted(train + val) == rel([(f, 0) for f in files], root)  # every file, once
    assert train == sorted(train) and val == sorted(val)
    # The held-out files for split_seed 0 (pinned: a release that reshuffles them changes every user's split).
    assert val == ["a/01.png", "a/04.png", "b/00.png", "b/03.png", "c/04.png", "d/01.png"]

    again = open_splits(f"imagefolder:{root}", val_fraction=0.2, split_seed=0)
    assert files_of(again, "val") == val and files_of(again, "train") == train
    other = open_splits(f"imagefolder:{root}", val_fraction=0.2, split_seed=1)
    assert files_of(other, "val") != val
    assert per_class(other, "val") == FLAT_VAL  # same counts, other files
    assert splits.digest() != other.digest() and splits.digest() == again.digest()

    # The same rule, as a function of the labels alone.
    labels = [label for _, label in sorted(splits.parts["train"].samples + splits.parts["val"].samples)]
    rest, held = stratified_split(labels, 0.2, 0)
    assert sorted(rest + held) == list(range(len(labels))) and len(held) == 6

    assert "test" not in splits.parts and splits.size("test") == 0
    with pytest.raises(DataError) as err:
        splits.get("test")
    message = str(err.value)
    assert one_sentence(message)
    assert "no test split" in message and "--split train or val" in message


def test_flat_folder_with_val_fraction_zero_has_only_train(tmp_path):
    root = tmp_path / "flat"
    make_classes(root, {"a": 3, "b": 3})
    splits = open_splits(f"imagefolder:{root}", val_fraction=0.0)
    assert list(splits.parts) == ["train"] and splits.size("train") == 6
    with pytest.raises(DataError, match=r"there is no val split.*use --split train$"):
        splits.get("val")


@pytest.mark.parametrize("layout", ["flat", "split"])
def test_training_and_predict_see_the_same_files_of_a_folder(tmp_path, layout):
    """One rule for which files a folder holds: a hidden file (``.hidden.png``, macOS's ``._00.png``) or one
    in a hidden folder is neither trained on nor predicted, whatever the layout."""
    from vitkit.commands.predict import collect_images

    root = tmp_path / "images"
    base = root / "train" if layout == "split" else root
    make_classes(base, {"a": 3, "b": 3})
    rng = np.random.default_rng(1)
    for hidden in ("a/.hidden.png", "a/._00.png", "b/.thumbs/01.png"):
        save(base / hidden, "L", (16, 16), 100, rng)
    splits = open_splits(f"imagefolder:{root}", val_fraction=0.0)
    trained_on = sorted(p for part in splits.parts.values() for p, _ in part.samples)
    predicted, problems = collect_images([str(root)])
    assert not problems and sorted(predicted) == trained_on
    assert len(trained_on) == 6 and not any(part.startswith(".") for p in trained_on for part in p.parts[-2:])


def test_train_val_test_folders_are_used_as_they_are(tmp_path):
    root = tmp_path / "layout"
    train = make_classes(root / "train", {"cat": 5, "dog": 4, "owl": 3}, mode="RGB")
    val = make_classes(root / "val", {"cat": 2, "dog": 1, "owl": 1}, mode="RGB", seed=1)
    test = make_classes(root / "test", {"cat": 1, "dog": 2}, mode="RGB", seed=2)  # a class may be absent
    for fraction in (0.1, 0.5):  # val/ exists: val_fraction plays no part
        splits = open_splits(f"imagefolder:{root}", val_fraction=fraction, split_seed=7)
        assert splits.classes == ["cat", "dog", "owl"] and list(splits.parts) == ["train", "val", "test"]
        for name, listed in (("train", train), ("val", val), ("test", test)):
            assert files_of(splits, name) == rel([(f, 0) for f in listed], root)
        check_labels(splits)
        assert per_class(splits, "test") == {"cat": 1, "dog": 2}
        assert splits.rule == f"{root}/train, {root}/val, {root}/test"


def test_train_alone_or_with_test_holds_val_out_of_train(tmp_path):
    counts = {"a": 10, "b": 8, "c": 7, "d": 2, "e": 1}
    flat, alone, with_test = tmp_path / "flat", tmp_path / "alone", tmp_path / "with_test"
    make_classes(flat, counts)
    make_classes(alone / "train", counts)
    make_classes(with_test / "train", counts)
    test = make_classes(with_test / "test", {"a": 2, "c": 3}, seed=5)
    reference = open_splits(f"imagefolder:{flat}", val_fraction=0.2, split_seed=3)
    for root in (alone, with_test):
        splits = open_splits(f"imagefolder:{root}", val_fraction=0.2, split_seed=3)
        assert per_class(splits, "val") == FLAT_VAL
        check_labels(splits)
        # The same files as the flat folder would hold out, under train/.
        assert files_of(splits, "val") == ["train/" + f for f in files_of(reference, "val")]
        assert files_of(splits, "train") == ["train/" + f for f in files_of(reference, "train")]
        assert all(f.startswith("train/") for f in files_of(splits, "val"))
    assert "test" not in open_splits(f"imagefolder:{alone}", val_fraction=0.2).parts
    splits = open_splits(f"imagefolder:{with_test}", val_fraction=0.2, split_seed=3)
    assert list(splits.parts) == ["train", "val", "test"]
    assert files_of(splits, "test") == rel([(f, 0) for f in test], with_test)
    assert per_class(splits, "test") == {"a": 2, "c": 3}
    assert "validation: 20% of each class of train/ (split_seed 3)" in splits.rule and "/test" in splits.rule


def test_a_folder_mixing_split_folders_and_class_folders_is_a_data_error(tmp_path):
    root = tmp_path / "mixed"
    make_classes(root / "train", {"a": 2, "b": 2})
    make_classes(root, {"cat": 2})  # ROOT/cat/ beside ROOT/train/
    with pytest.raises(DataError) as err:
        open_splits(f"imagefolder:{root}")
    assert "mixes split folders (train) with class folders (cat)" in str(err.value) and one_sentence(str(err.value))

    root = tmp_path / "val_only"
    make_classes(root / "val", {"a": 2, "b": 2})
    with pytest.raises(DataError, match=r"mixes split folders \(val\) with no train/ folder"):
        open_splits(f"imagefolder:{root}")

    root = tmp_path / "extra_class"
    make_classes(root / "train", {"a": 2, "b": 2})
    make_classes(root / "val", {"a": 1, "zebra": 1})
    with pytest.raises(DataError, match="has classes that .*train lacks: zebra"):
        open_splits(f"imagefolder:{root}")

    with pytest.raises(DataError, match="does not exist"):
        open_splits(f"imagefolder:{tmp_path / 'nowhere'}")


# ---------------------------------------------------------------------------------------------------------
# The split file


@pytest.mark.parametrize("layout", ["flat", "train+val+test"])
def test_split_file_round_trip_gives_the_same_files_and_classes(tmp_path, layout):
    root = tmp_path / "images"
    if layout == "flat":
        make_classes(root, {"a": 6, "b": 5, "c": 4}, modes=["L", "RGB"])
    else:
        make_classes(root / "train", {"a": 4, "b": 3, "c": 3}, modes=["L", "RGB"])
        make_classes(root / "val", {"a": 1, "b": 2, "c": 1}, seed=1)
        make_classes(root / "test", {"a": 2, "c": 1}, seed=2)
    splits = open_splits(f"imagefolder:{root}", val_fraction=0.25, split_seed=4)
    text = splits.split_file_text()
    lines = text.splitlines()
    assert lines[0] == "split,class,path"
    assert len(lines) - 1 == sum(splits.size(s) for s in ("train", "val", "test"))
    first = splits.parts["train"].samples[0][0]
    assert lines[1] == f"train,{first.parent.name},{first.relative_to(root).as_posix()}"
    split_file = tmp_path / "split.csv"
    split_file.write_text(text)

    # A file added to the folder later is not in the run's split; another split_seed does not matter either.
    save(root / ("a" if layout == "flat" else "train/a") / "new.png", "L", (9, 9), 30, np.random.default_rng(9))
    again = open_splits(f"imagefolder:{root}", val_fraction=0.5, split_seed=99, split_file=split_file)
    assert again.classes == splits.classes and again.channels == splits.channels == 3
    assert list(again.parts) == list(splits.parts)
    for name in splits.parts:
        assert again.parts[name].samples == splits.parts[name].samples
    assert again.split_file_text() == text and again.digest() == splits.digest()

    # Files of the split that were deleted: one DataError that counts them.
    victims = [splits.parts["val"].samples[0][0], splits.parts["train"].samples[-1][0]]
    for victim in victims:
        victim.unlink()
    with pytest.raises(DataError) as err:
        open_splits(f"imagefolder:{root}", split_file=split_file)
    message = str(err.value)
    assert message.startswith(f"2 image(s) of the run's split {split_file} are gone from {root}")
    assert one_sentence(message)


def test_split_file_round_trip_keeps_a_class_that_has_no_images(tmp_path):
    """A class folder whose images are all unreadable (or that is empty) is a class of the scan, so the run's
    model gets an output for it; reading the run's split.csv back must give the same classes (else eval on the
    run's splits and a resume see other classes than the model), unless the scan refuses such a folder."""
    root = tmp_path / "images"
    make_classes(root, {"a": 4, "b": 4})
    (root / "c").mkdir()
    (root / "c" / "broken.png").write_bytes(b"not an image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            splits = open_splits(f"imagefolder:{root}", val_fraction=0.25)
        except DataError as err:  # refusing such a folder up front is the other consistent answer
            assert "c" in str(err) and one_sentence(str(err))
            return
    assert splits.classes == ["a", "b", "c"]
    split_file = tmp_path / "split.csv"
    split_file.write_text(splits.split_file_text())
    again = open_splits(f"imagefolder:{root}", split_file=split_file)
    assert again.classes == splits.classes


# ---------------------------------------------------------------------------------------------------------
# Channels


def test_channels_follow_the_images_unless_data_channels_says_otherwise(tmp_path):
    grey, mixed = tmp_path / "grey", tmp_path / "mixed"
    make_classes(grey, {"a": 3, "b": 3}, modes=["L", "I;16"])  # 8- and 16-bit grey
    make_classes(mixed, {"a": 3, "b": 3}, modes=["L", "L", "RGB"])  # one colour image per class
    assert open_splits(f"imagefolder:{grey}").channels == 1
    assert open_splits(f"imagefolder:{mixed}").channels == 3
    assert open_splits(f"imagefolder:{grey}", channels=3).channels == 3
    assert open_splits(f"imagefolder:{mixed}", channels=1).channels == 1
    # The split file decides the same way from the files it lists.
    for folder, expected in ((grey, 1), (mixed, 3)):
        splits = open_splits(f"imagefolder:{folder}")
        (tmp_path / "split.csv").write_text(splits.split_file_text())
        assert open_splits(f"imagefolder:{folder}", split_file=tmp_path / "split.csv").channels == expected
    # Decoding a grey file to 3 channels copies the grey value; a colour file to 1 channel takes its luma.
    first_grey = sorted((grey / "a").glob("*.png"))[0]
    ds = ImageFolderDataset(samples=[(first_grey, 0)], classes=["a"], channels=3)
    x, _ = ds.decode(0)
    assert x.dtype == torch.uint8 and x.shape == (3, 13, 17)
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    assert torch.equal(x[0], torch.from_numpy(np.array(Image.open(first_grey))))


# ---------------------------------------------------------------------------------------------------------
# Built-in data sets


DIGITS_TRAIN = [142, 146, 142, 146, 145, 145, 145, 143, 139, 144]  # per class, 1437 in all
DIGITS_TEST = [36, 36, 35, 37, 36, 37, 36, 36, 35, 36]


def test_digits_keeps_its_test_split_and_holds_out_a_tenth_of_each_training_class():
    splits = open_splits("digits", val_fraction=0.1, split_seed=0)
    assert not splits.is_folder and splits.classes == [str(k) for k in range(10)] and splits.channels == 1
    assert list(splits.parts) == ["train", "val", "test"]
    assert (splits.size("train"), splits.size("val"), splits.size("test")) == (1295, 142, 360)
    counts = {s: torch.bincount(splits.parts[s].labels, minlength=10).tolist() for s in splits.parts}
    assert counts["val"] == [round(0.1 * n) for n in DIGITS_TRAIN] == [14, 15, 14, 15, 14, 14, 14, 14, 14, 14]
    assert [t + v for t, v in zip(counts["train"], counts["val"])] == DIGITS_TRAIN
    assert counts["test"] == DIGITS_TEST
    assert splits.image_size == (8, 8)

    # train and val partition the official training split, whatever the split_seed.
    whole = open_splits("digits", val_fraction=0.0)
    assert list(whole.parts) == ["train", "test"] and whole.size("train") == 1437
    rows = lambda t: {tuple(r) for r in t.images.flatten(1).tolist()}  # noqa: E731
    assert rows(splits.parts["train"]) | rows(splits.parts["val"]) == rows(whole.parts["train"])
    other = open_splits("digits", val_fraction=0.1, split_seed=1)
    assert torch.bincount(other.parts["val"].labels, minlength=10).tolist() == counts["val"]
    assert not torch.equal(other.parts["val"].images, splits.parts["val"].images)
    assert torch.equal(open_splits("digits", val_fraction=0.1, split_seed=0).parts["val"].images,
                       splits.parts["val"].images)

    assert "no validation split" in whole.rule
    with pytest.raises(DataError) as err:
        whole.get("val")
    assert one_sentence(str(err.value)) and "data.val_fraction is 0" in str(err.value)


# ---------------------------------------------------------------------------------------------------------
# The evaluation preprocessing


@pytest.mark.parametrize("channels, crop_pct", [(1, 1.0), (3, 1.0), (1, 0.875), (3, 0.875)])
def test_preprocess_load_equals_the_decoded_once_image_and_the_streamed_input(tmp_path, channels, crop_pct):
    root = tmp_path / "images"
    make_classes(root, {"a": 4, "b": 4}, modes=["L", "RGB", "I;16", "RGBA"])
    splits = open_splits(f"imagefolder:{root}", val_fraction=0.0, channels=channels)
    samples = splits.parts["train"]
    mean, std = ((0.3,), (0.2,)) if channels == 1 else ((0.4, 0.5, 0.6), (0.25, 0.2, 0.3))
    pre = Preprocess((16, 16), mean, std, crop_pct=crop_pct)
    decoded = decode_folder(samples, splits.classes, pre)
    assert decoded.images.dtype == torch.uint8 and decoded.images.shape == (8, channels, 16, 16)
    assert decoded.labels.tolist() == samples.targets
    assert decoded.sources == [str(p) for p, _ in samples.samples]
    for i, (path, _) in enumerate(samples.samples):
        assert torch.equal(pre.load(path), decoded.images[i]), path

    # A disk cache gives back the same bytes (and is read, not rebuilt, the second time).
    cache = tmp_path / "cache"
    first = decode_folder(samples, splits.classes, pre, cache_dir=cache)
    assert len(list(cache.glob("*.safetensors"))) == 1
    second = decode_folder(samples, splits.classes, pre, cache_dir=cache)
    assert torch.equal(first.images, decoded.images) and torch.equal(second.images, decoded.images)

    # Normalised: (x / 255 - mean) / std, streamed per file and from Preprocess(), the same bits.
    x = decoded.images.double()
    expected = (x / 255 - torch.tensor(mean, dtype=torch.float64).view(-1, 1, 1)) / \
        torch.tensor(std, dtype=torch.float64).view(-1, 1, 1)
    streamed = ImageFolderDataset(samples=samples.samples, classes=splits.classes, channels=channels,
                                  transform=eval_transform(pre))
    for i, (path, label) in enumerate(samples.samples):
        image, y = streamed[i]
        assert y == label and image.dtype == torch.float32
        torch.testing.assert_close(image.double(), expected[i], rtol=0, atol=1e-6)
        assert torch.equal(pre(path), image), path

    # The decoded-once images are already the model's input, before normalising: bringing them to the
    # preprocessing (what training and validation do with data.cache=memory|disk) must leave them as they are,
    # so the device loader feeds the model the same bits as streaming the files.
    again = in_memory(decoded, pre).images
    changed = int((again != decoded.images).sum())
    assert changed == 0, f"in_memory changed {changed} of {again.numel()} decoded-once pixels (the geometry " \
                         f"was applied a second time, crop_pct {crop_pct})"
    loader = DeviceLoader(in_memory(decoded, pre), 3, shuffle=False)
    from_memory = torch.cat([images for images, _ in loader])
    for i, (path, _) in enumerate(samples.samples):
        assert torch.equal(from_memory[i], streamed[i][0]), path


# ---------------------------------------------------------------------------------------------------------
# Decompression bombs


def bomb(path: Path, size=(20000, 10000)) -> Path:
    """A real PNG of width x height pixels that compresses to a few kB (1-bit, all black)."""
    Image.new("1", size).save(path)
    return path


def test_a_decompression_bomb_is_one_data_error(tmp_path, capsys):
    big = bomb(tmp_path / "bomb.png")  # 200M pixels: past twice PIL's limit
    assert big.stat().st_size < 100_000
    warned = bomb(tmp_path / "warned.png", (10000, 10000))  # 100M pixels: past the limit, under twice it
    for path in (big, warned):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no DecompressionBombWarning leaks out either
            with pytest.raises(DataError) as err:
                open_image(path)
        message = str(err.value)
        assert one_sentence(message), message
        assert str(path) in message and "decompression bomb" in message and "89,478,485" in message

    # A scan leaves it out (it is unreadable for vitkit) ...
    root = tmp_path / "images"
    make_classes(root, {"a": 2, "b": 2})
    shutil.copy(big, root / "a" / "huge.png")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        classes, samples, skipped, _ = scan_class_folders(root)
    assert skipped == [root / "a" / "huge.png"] and len(samples) == 4

    # ... and predict reports it on stderr, predicts the rest and exits 2 (a bad input, as everywhere).
    from vitkit.checkpoint import save_weights
    from vitkit.config import ViTConfig
    from vitkit.model import VisionTransformer
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(img_size=16, patch_size=8, in_channels=1, num_classes=2, embed_dim=16,
                                        depth=1, num_heads=2))
    pre = Preprocess((16, 16), (0.5,), (0.25,), crop_pct=0.875)
    save_weights(model, tmp_path / "model", {"classes": ["a", "b"], "preprocess": pre.to_dict()})
    capsys.readouterr()
    code = main(["predict", str(root / "a"), "--checkpoint", str(tmp_path / "model"), "--device", "cpu",
                 "--top-k", "1", "--csv"])
    out, err = capsys.readouterr()
    assert code == 2
    rows = out.strip().splitlines()
    assert rows[0] == "image,class1,p1" and [r.split(",")[0] for r in rows[1:]] == \
        [str(root / "a" / "00.png"), str(root / "a" / "01.png")]
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith(f"vitkit predict: skipped {root / 'a' / 'huge.png'}: image file ")
    assert "decompression bomb" in lines[0] and one_sentence(lines[0].split(": ", 2)[2])
    assert lines[1] == "vitkit predict: 1 of 3 inputs could not be predicted"


def test_a_stop_signal_reaching_a_worker_before_it_is_set_up_does_not_kill_it(tmp_path, monkeypatch):
    """A signal to the process group can hit a loader worker between its fork and its init function. The
    loader starts its workers with SIGINT/SIGTERM held back, so such a worker lives (its init function then
    ignores the held signal) and the pass completes; the main process's own mask is restored."""
    import os
    import signal

    from vitkit.data import imagefolder
    from vitkit.data.imagefolder import FolderLoader

    rng = np.random.default_rng(0)
    for k, name in enumerate(["a", "b"]):
        for i in range(4):
            save(tmp_path / name / f"{i}.png", "RGB", (16, 16), 40 + 150 * k, rng)
    quiet = imagefolder._quiet_worker

    def hit_first(worker_id):  # the worst moment: the signal arrives before the worker can ignore it
        os.kill(os.getpid(), signal.SIGTERM)
        quiet(worker_id)

    monkeypatch.setattr(imagefolder, "_quiet_worker", hit_first)
    dataset = ImageFolderDataset(tmp_path, eval_transform(Preprocess(16)))
    loader = FolderLoader(dataset, 4, shuffle=False, workers=2)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    labels = torch.cat([y for _, y in loader])
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask
