"""Tar shards: `vitkit shard` of digits and of a folder (index counts = source, pixel-equal read-back), the
rank x worker deal covering each sample once, the seeded shuffle buffer, `vitkit train` on shards:DIR then
`eval` and `predict`, exact resume by batch position (in the loader and through SIGTERM + --resume), and one
sentence for each bad input."""
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import same_last_weights, sigterm_early
from vitkit.cli import main
from vitkit.data import open_splits
from vitkit.data.images import open_image, to_uint8_chw
from vitkit.data.shard_loader import ShardLoader, ShardStream, shuffled
from vitkit.data.shards import iter_samples, open_shards
from vitkit.errors import DataError

CLASSES = ["dark", "mid", "light"]
TINY = ["data.img_size=16", "data.batch_size=4", "data.eval_batch_size=8", "data.randaugment=false",
        "model.patch_size=8", "model.embed_dim=16", "model.depth=1", "model.num_heads=2", "model.mlp_ratio=2.0",
        "optim.lr=1e-2", "optim.warmup_epochs=0.5", "report=false", "device=cpu", "train.threads=1"]


def sets_args(sets):
    return [a for s in sets for a in ("--set", s)]


def make_folder(root: Path, per_class: int = 12) -> Path:
    """root/<class>/<i>.png (grey and colour, mixed sizes) and a few .jpg files, class k of brightness 30 + 95 k."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = (12 + i % 5, 16 - i % 3)
            pixels = np.clip(30 + 95 * k + rng.integers(-25, 26, (h, w, 3)), 0, 255).astype(np.uint8)
            img = Image.fromarray(pixels[..., 0], "L") if i % 2 else Image.fromarray(pixels, "RGB")
            img.save(root / name / (f"{i:02d}.jpg" if i % 4 == 3 else f"{i:02d}.png"))
    return root


def read_back(part, channels):
    return [(to_uint8_chw(open_image(data), channels), label)
            for shard in part.shards for _, data, _, label in iter_samples(shard.path, part.num_classes)]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shards")
    folder = make_folder(tmp / "images")
    assert main(["shard", str(folder), "--out", str(tmp / "fs"), "--shard-size", "4", "--val-fraction", "0.25"]) == 0
    assert main(["shard", "digits", "--out", str(tmp / "ds"), "--shard-size", "400"]) == 0
    return tmp, folder


def test_digits_index_and_pixels_equal_the_source(made):
    tmp, _ = made
    source = open_splits("digits")
    index = json.loads((tmp / "ds" / "index.json").read_text())
    assert index["rule"] == source.rule and index["classes"] == source.classes
    classes, _, parts, _, _ = open_shards(str(tmp / "ds"))
    for split, part in source.parts.items():
        info = index["splits"][split]
        assert info["samples"] == len(part) == sum(s["samples"] for s in info["shards"])
        assert list(info["counts"].values()) == torch.bincount(part.labels, minlength=10).tolist()
        back = read_back(parts[split], 1)
        assert torch.equal(torch.stack([x for x, _ in back]), part.images)  # (N, 1, 8, 8) uint8, pixel-equal
        assert [y for _, y in back] == part.labels.tolist()


def test_folder_files_are_copied_byte_for_byte(made):
    tmp, folder = made
    source = open_splits(f"imagefolder:{folder}", val_fraction=0.25)
    index = json.loads((tmp / "fs" / "index.json").read_text())
    _, _, parts, _, _ = open_shards(str(tmp / "fs"))
    for split, part in source.parts.items():
        assert index["splits"][split]["samples"] == len(part)
        got = [(data, suffix, label) for s in parts[split].shards for _, data, suffix, label in iter_samples(s.path, 3)]
        assert [(p.read_bytes(), p.suffix, y) for p, y in part.samples] == got


def test_refuses_a_non_empty_out_without_overwrite(made, capsys):
    tmp, folder = made
    assert main(["shard", str(folder), "--out", str(tmp / "fs"), "--shard-size", "4"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def all_keys(part, world):
    """Every (rank, slot)'s sample keys of epoch 0, read through the loader's own streams."""
    seen = []
    for rank in range(world):
        stream = ShardStream(part, 1, lambda x: x, 3, seed=0, rank=rank, world_size=world, shuffle_buffer=1)
        stream.quota = 10 ** 9  # read every sample (the quota trims to equal lengths)
        for slot in range(stream.readers):
            shards = stream.dealt[rank * stream.readers + slot]
            seen += [k for s in shards for k, *_ in iter_samples(s.path, 3)]
    return seen


def test_ranks_and_workers_cover_every_sample_once(made):
    tmp, _ = made
    _, _, parts, _, _ = open_shards(str(tmp / "fs"))
    expected = sorted(k for s in parts["train"].shards for k, *_ in iter_samples(s.path, 3))
    for world in (1, 2, 3):
        assert sorted(all_keys(parts["train"], world)) == expected


def test_shuffle_buffer_is_deterministic_per_seed_and_epoch():
    import random
    one = list(shuffled(range(100), 10, random.Random(1)))
    assert one == list(shuffled(range(100), 10, random.Random(1))) and sorted(one) == list(range(100))
    assert one != list(shuffled(range(100), 10, random.Random(2))) and one != list(range(100))


def loader(part, workers, seed=3):
    from vitkit.data.augment import train_transform
    from vitkit.data.imagefolder import Chain
    from vitkit.data.preprocess import Normalize
    return ShardLoader(part, 2, Chain(train_transform((16, 16), randaugment=False), Normalize((0.5,) * 3, (0.5,) * 3)),
                       3, seed=seed, workers=workers, shuffle_buffer=8)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_resumes_at_a_batch_with_the_same_remaining_batches(made, workers):
    tmp, _ = made
    _, _, parts, _, _ = open_shards(str(tmp / "fs"))
    first = loader(parts["train"], workers)
    first.set_epoch(1)
    whole = list(first)
    assert len(whole) == len(first) > 3
    again = loader(parts["train"], workers)
    again.set_epoch(1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(whole, again))  # deterministic per (seed, epoch)
    other = loader(parts["train"], workers)
    other.set_epoch(2)
    assert not torch.equal(torch.cat([x for x, _ in other]), torch.cat([x for x, _ in whole]))
    for k in (1, 3):
        resumed = loader(parts["train"], 2 - workers)  # a resume may change data.workers: the same batches
        resumed.set_epoch(1)
        resumed.skip(k)
        rest = list(resumed)
        assert len(rest) == len(whole) - k
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(whole[k:], rest))


def test_train_then_eval_and_predict(made, capsys):
    tmp, folder = made
    sets = TINY + [f"data.dataset=shards:{tmp / 'fs'}", "data.workers=2", "train.epochs=2",
                   f"out_dir={tmp / 'runs'}", "name=run"]
    assert main(["train", *sets_args(sets)]) == 0
    out = capsys.readouterr().out
    assert "shards:" in out and "the shards' own splits" in out
    best = tmp / "runs" / "run" / "checkpoints" / "best"
    assert main(["eval", "--checkpoint", str(best)]) == 0
    assert "val split: 9 images" in capsys.readouterr().out  # its own held-out split: 25% of 3 x 12
    image = next((folder / "light").glob("*.png"))
    shard = tmp / "fs" / "val-000000.tar"
    assert main(["predict", "--checkpoint", str(best), str(image), str(shard), "--json"]) == 0
    names = [r["image"] for r in json.loads(capsys.readouterr().out)]
    assert names[0] == str(image) and names[1:] == [f"{shard}/val-{i:08d}" for i in range(4)]


def test_sigterm_then_resume_ends_bit_identical(made, tmp_path):
    tmp, _ = made
    sets = TINY + [f"data.dataset=shards:{tmp / 'fs'}", "data.workers=2", "train.epochs=2", "seed=4",
                   "model.drop_rate=0.1", "train.checkpoint_every_steps=1", "train.deterministic=true",
                   f"out_dir={tmp_path / 'runs'}", "name=r"]
    assert main(["train", *sets_args(sets), "--set", f"out_dir={tmp_path / 'ref'}"]) == 0
    run_dir = tmp_path / "runs" / "r"
    stopped, err = sigterm_early(sets_args(sets), run_dir)
    assert 0 < stopped < 10, (stopped, err[-3000:])
    assert main(["train", *sets_args(sets), "--resume", "auto"]) == 0
    assert same_last_weights(run_dir, tmp_path / "ref" / "r"), f"differs after a resume at step {stopped}"


def write_tar(path: Path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def png():
    out = io.BytesIO()
    Image.new("L", (4, 4)).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("case, words", [
    ("label-only", "a label and no image"), ("image-only", "an image and no label"),
    ("truncated", "corrupt or truncated"), ("no-match", "matches no file"), ("bad-label", "outside the 2 classes"),
    ("no-classes", "name no classes"), ("few-shards", "cannot be split over 2 processes")])
def test_bad_input_is_one_sentence(tmp_path, capsys, case, words):
    d = tmp_path / "s"
    d.mkdir()
    (d / "classes.txt").write_text("a\nb\n")
    good = [("k0.png", png()), ("k0.cls", b"1"), ("k1.png", png()), ("k1.cls", b"0")]
    members = {"label-only": [("k0.cls", b"1")], "image-only": [("k0.png", png())],
               "bad-label": good[:2] + [("k1.png", png()), ("k1.cls", b"7")]}.get(case, good)
    write_tar(d / "train-000000.tar", members)
    if case == "truncated":
        data = (d / "train-000000.tar").read_bytes()
        (d / "train-000000.tar").write_bytes(data[:700])
    if case == "no-classes":
        (d / "classes.txt").unlink()
    pattern = str(d / ("nothing-*.tar" if case == "no-match" else "train-*.tar"))
    sets = TINY + [f"data.dataset=shards:{pattern}", "data.workers=0", "data.batch_size=2", "train.epochs=1",
                   f"out_dir={tmp_path / 'runs'}"]
    if case == "few-shards":
        from vitkit.data.shards import ShardSamples, Shard
        with pytest.raises(DataError, match=words):
            ShardStream(ShardSamples([Shard(d / "train-000000.tar", 2)], 2), 1, None, 1, seed=0, rank=0,
                        world_size=2, shuffle_buffer=1)
        return
    capsys.readouterr()
    assert main(["train", *sets_args(sets)]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err and "Traceback" not in err, err


@pytest.mark.parametrize("cut, words", [("mid-sample", "is corrupt or truncated"), ("boundary", "its index says 4")])
def test_a_truncated_shard_read_by_a_loader_worker_is_one_sentence(made, tmp_path, capsys, cut, words):
    import shutil
    tmp, _ = made
    copy = tmp_path / "fs"
    shutil.copytree(tmp / "fs", copy)
    for shard in copy.glob("train-*.tar"):
        with tarfile.open(shard) as tar:
            second = tar.getmembers()[2].offset  # the header of the second sample's image
        shard.write_bytes(shard.read_bytes()[:second + (0 if cut == "boundary" else -100)])
    sets = TINY + [f"data.dataset=shards:{copy}", "data.workers=2", "train.epochs=1", f"out_dir={tmp_path / 'runs'}"]
    capsys.readouterr()
    assert main(["train", *sets_args(sets)]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err and "Traceback" not in err, err


def test_every_rank_trains_the_same_number_of_steps_on_its_own_shards(made):
    tmp, _ = made
    _, _, parts, _, _ = open_shards(str(tmp / "ds"))  # 4 training shards of digits
    streams = [ShardStream(parts["train"], 8, lambda x: x, 1, seed=0, rank=r, world_size=2, shuffle_buffer=4)
               for r in range(2)]
    assert len(streams[0]) == len(streams[1]) > 0
    mine = [{s.path for slot in st.dealt[r * st.readers:(r + 1) * st.readers] for s in slot} for r, st in enumerate(streams)]
    assert not mine[0] & mine[1] and len(mine[0] | mine[1]) == 4


def test_a_pattern_reads_splits_by_file_name_and_classes_from_the_index_or_classes_txt(made, tmp_path):
    import shutil
    tmp, _ = made
    by_dir = open_splits(f"shards:{tmp / 'fs'}")
    by_pattern = open_splits(f"shards:{tmp / 'fs'}/{{train,val}}-*.tar")
    assert by_pattern.classes == by_dir.classes == sorted(CLASSES)
    assert {s: len(p) for s, p in by_pattern.parts.items()} == {s: len(p) for s, p in by_dir.parts.items()}
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in (tmp / "fs").glob("train-00000[01].tar"):
        shutil.copy(f, bare / f.name)
    (bare / "classes.txt").write_text("\n".join(sorted(CLASSES)) + "\n")
    splits = open_splits(f"shards:{bare}/train-{{000000..000001}}.tar")
    assert list(splits.parts) == ["train"] and len(splits.parts["train"]) == 8
