"""Hugging Face datasets (`data.dataset: hf:...`), from a Parquet folder of several train files with validation
and test files, a save_to_disk DatasetDict of train + test, and string labels under other column names.

Map-style: every row's pixels equal PIL's decoding of its bytes and the same file read from an image folder; the
split rule (own splits, a stratified hold-out by split_seed, an unlabelled split left out, string labels as
sorted class names, columns by type before name, or given). Streamed: the per-rank loader (equal lengths for 1,
2 and 3 processes, each example once an epoch, a shorter rank starting its part again, the same batches per
(seed, epoch) with 0 or 2 workers) and its exact resume from stream_state(), shown to read from the saved
position. The CLI: train map-style and streamed, eval on the run's own split, predict, SIGTERM + --resume auto
of a streamed run ending bit-identical, the split file catching a changed dataset, and one sentence for each
bad input."""
import io
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import same_last_weights, sigterm_early
from test_data_shards import CLASSES, TINY, sets_args
from vitkit.cli import main
from vitkit.data import open_splits
from vitkit.data.hf_stream import HFStreamLoader, RankStream
from vitkit.data.images import open_image, to_uint8_chw
from vitkit.data.splits import stratified_split
from vitkit.errors import DataError

SPLIT_OF = {**{i: "train" for i in range(12)}, 12: "val", 13: "val", 14: "val", 15: "val", 16: "test", 17: "test"}
KINDS = ["zebra", "apple", "mango"]  # string labels, of CLASSES' brightness order: sorted, apple mango zebra


@pytest.fixture(scope="module", autouse=True)
def quiet_datasets(tmp_path_factory):
    """datasets' cache in a temporary folder (subprocesses too), and no progress bars on stderr."""
    cache = tmp_path_factory.mktemp("hf-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
        mp.setenv("HF_DATASETS_CACHE", str(cache))
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        shown = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            yield
        finally:
            if shown:
                datasets.enable_progress_bars()


def make_images(per_class: int = 18):
    """make_folder's images as file bytes: [(class index, i, bytes, suffix)], rows interleaved by class;
    class k of brightness 30 + 95 k, grey and colour, mixed sizes, every fourth a JPEG."""
    rng = np.random.default_rng(0)
    made = {}
    for k in range(len(CLASSES)):
        for i in range(per_class):
            h, w = (12 + i % 5, 16 - i % 3)
            pixels = np.clip(30 + 95 * k + rng.integers(-25, 26, (h, w, 3)), 0, 255).astype(np.uint8)
            img = Image.fromarray(pixels[..., 0], "L") if i % 2 else Image.fromarray(pixels, "RGB")
            out = io.BytesIO()
            img.save(out, format="JPEG" if i % 4 == 3 else "PNG")
            made[k, i] = (k, i, out.getvalue(), ".jpg" if i % 4 == 3 else ".png")
    return [made[k, i] for i in range(per_class) for k in range(len(CLASSES))]


def features(label=None, image="image", label_name="label"):
    return datasets.Features({image: datasets.Image(),
                              label_name: label or datasets.ClassLabel(names=CLASSES)})


def table(rows, label=None, image="image", label_name="label", labels=None):
    """A Dataset of (class, i, bytes, suffix) rows; ``labels`` replaces the class indices."""
    return datasets.Dataset.from_dict(
        {image: [{"bytes": data, "path": None} for _, _, data, _ in rows],
         label_name: labels if labels is not None else [k for k, *_ in rows]},
        features=features(label, image, label_name))


def write_parquet(root: Path, split: str, ds, files: int = 1) -> None:
    (root / "data").mkdir(parents=True, exist_ok=True)
    for i in range(files):
        ds.shard(files, i, contiguous=True).to_parquet(str(root / "data" / f"{split}-{i:05d}-of-{files:05d}.parquet"))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hf")
    rows = {s: [r for r in make_images() if SPLIT_OF[r[1]] == s] for s in ("train", "val", "test")}  # 36, 12, 6
    pq = tmp / "pq"  # train in 4 files, validation, test; a ClassLabel
    write_parquet(pq, "train", table(rows["train"]), files=4)
    write_parquet(pq, "validation", table(rows["val"]))
    write_parquet(pq, "test", table(rows["test"]))
    disk = tmp / "disk"  # a DatasetDict of train and test
    datasets.DatasetDict({"train": table(rows["train"]), "test": table(rows["test"])}).save_to_disk(str(disk))
    named = tmp / "named"  # string labels in "kind", images in "picture"
    write_parquet(named, "train", table(rows["train"], datasets.Value("string"), "picture", "kind",
                                        [KINDS[k] for k, *_ in rows["train"]]), files=2)
    ids = tmp / "ids"  # 48 4x4 grey images whose pixels are 5 x their row, in 4 files of 12
    ids_rows = []
    for r in range(48):
        out = io.BytesIO()
        Image.new("L", (4, 4), 5 * r).save(out, format="PNG")
        ids_rows.append((r % 3, r, out.getvalue(), ".png"))
    write_parquet(ids, "train", table(ids_rows), files=4)
    folder = tmp / "folder"  # the same bytes as an image folder: SPLIT/<class>/<row>.<suffix>
    for split, part in rows.items():
        for row, (k, _, data, suffix) in enumerate(part):
            (folder / split / CLASSES[k]).mkdir(parents=True, exist_ok=True)
            (folder / split / CLASSES[k] / f"{row:03d}{suffix}").write_bytes(data)
    return SimpleNamespace(tmp=tmp, rows=rows, pq=pq, disk=disk, named=named, ids=ids, folder=folder)


def pil_chw(data: bytes) -> torch.Tensor:
    """The bytes decoded by PIL alone, by vitkit's rule for 3 channels (grey copied to R, G and B)."""
    arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)  # (3, H, W) uint8


# ---------------------------------------------------------------------------------------------------------
# Map-style: pixels and the split rule


def test_map_style_pixels_equal_pil_and_the_image_folder(made):
    splits = open_splits(f"hf:{made.pq}")
    folder = open_splits(f"imagefolder:{made.folder}")
    assert splits.classes == CLASSES and splits.channels == 3  # the ClassLabel's names, in its order
    assert {s: len(p) for s, p in splits.parts.items()} == {"train": 36, "val": 12, "test": 6}
    sub = {"train": "train", "val": "validation", "test": "test"}
    for split, part in splits.parts.items():
        from_folder = {int(path.stem): (path, label) for path, label in folder.parts[split].samples}
        assert len(from_folder) == len(part) == len(made.rows[split])
        for row, (sample, label) in enumerate(part.samples):
            k, _, data, _ = made.rows[split][row]
            assert str(sample) == f"hf:{made.pq}/{sub[split]}[{row}]"
            assert sample.read_bytes() == data and label == k  # the stored bytes, the ClassLabel's index
            x = to_uint8_chw(sample, 3)  # (3, H, W) uint8
            assert torch.equal(x, pil_chw(data))
            assert torch.equal(to_uint8_chw(open_image(sample), 3), x)
            path, folder_label = from_folder[row]
            assert torch.equal(to_uint8_chw(path, 3), x) and folder.classes[folder_label] == CLASSES[k]


def test_own_splits_are_used(made):
    splits = open_splits(f"hf:{made.pq}", val_fraction=0.3, split_seed=5)  # no hold-out: it has a validation split
    assert splits.rule == f"hf:{made.pq} splits train as train, validation as val, test as test"
    for split in ("train", "val", "test"):
        assert splits.parts[split].targets == [k for k, *_ in made.rows[split]]
        assert [s.row for s, _ in splits.parts[split].samples] == list(range(len(made.rows[split])))


@pytest.mark.parametrize("seed", [0, 3])
def test_train_and_test_only_holds_out_a_stratified_val(made, seed):
    splits = open_splits(f"hf:{made.disk}", val_fraction=0.25, split_seed=seed)
    labels = [k for k, *_ in made.rows["train"]]
    rest, held = stratified_split(labels, 0.25, seed)
    assert [s.row for s, _ in splits.parts["train"].samples] == rest
    assert [s.row for s, _ in splits.parts["val"].samples] == held and len(held) == 9  # 3 of each class of 12
    assert splits.parts["val"].targets == [labels[i] for i in held]
    assert [s.row for s, _ in splits.parts["test"].samples] == list(range(6))
    assert splits.rule == (f"hf:{made.disk} splits train as train, test as test; validation: 25% of each class "
                           f"of train (split_seed {seed})")
    other = open_splits(f"hf:{made.disk}", val_fraction=0.25, split_seed=seed + 1)
    assert [s.row for s, _ in other.parts["val"].samples] != held
    none = open_splits(f"hf:{made.disk}", val_fraction=0)
    assert "val" not in none.parts and len(none.parts["train"]) == 36 and "no validation split" in none.rule


def test_string_labels_are_sorted_class_names_and_columns_found_or_given(made):
    for given in ({"label_column": "kind"}, {"label_column": "kind", "image_column": "picture"}):
        splits = open_splits(f"hf:{made.named}", val_fraction=0.25, **given)  # "picture": the Image feature
        assert splits.classes == sorted(KINDS)
        for part in splits.parts.values():
            for sample, label in part.samples:
                k, _, data, _ = made.rows["train"][sample.row]
                assert splits.classes[label] == KINDS[k] and sample.read_bytes() == data
    with pytest.raises(DataError, match="has no label column that vitkit recognises .*columns: picture, kind"):
        open_splits(f"hf:{made.named}")
    streamed = open_splits(f"hf:{made.named}", val_fraction=0, label_column="kind", streaming=True)
    assert streamed.classes == sorted(KINDS) and streamed.parts["train"].index == {"apple": 0, "mango": 1, "zebra": 2}


@pytest.mark.parametrize("image, label", [("img", "target"), ("jpg", "cls")])
@pytest.mark.parametrize("streaming", [False, True])
def test_columns_found_by_name(made, tmp_path, image, label, streaming):
    """No Image or ClassLabel feature: a struct ("img": bytes and path) or binary ("jpg") column and an
    integer one ("target", "cls") found by their names, beside another integer column."""
    rows = made.rows["val"]
    stored = [{"bytes": d, "path": None} for _, _, d, _ in rows] if image == "img" else [d for _, _, d, _ in rows]
    kind = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")} if image == "img" else \
        datasets.Value("binary")
    ds = datasets.Dataset.from_dict({"id": list(range(len(rows))), label: [k for k, *_ in rows], image: stored},
                                    features=datasets.Features({"id": datasets.Value("int64"),
                                                                label: datasets.Value("int64"), image: kind}))
    write_parquet(tmp_path / "plain", "train", ds)
    splits = open_splits(f"hf:{tmp_path / 'plain'}", val_fraction=0, streaming=streaming)
    assert splits.classes == ["0", "1", "2"] and len(splits.parts["train"]) == len(rows)
    if streaming:
        part = splits.parts["train"]
        got = [part.sample(ex, "x") for ex in part.dataset]
        assert [(d, k) for d, k in got] == [(d, k) for k, _, d, _ in rows]
        return
    assert splits.parts["train"].targets == [k for k, *_ in rows]
    assert all(torch.equal(to_uint8_chw(s, 3), pil_chw(d))
               for (s, _), (_, _, d, _) in zip(splits.parts["train"].samples, rows))


def test_a_column_of_the_type_comes_before_one_of_the_name(made, tmp_path):
    rows = made.rows["val"]
    ds = datasets.Dataset.from_dict(
        {"image": [b"not this one"] * len(rows), "label": [0] * len(rows),
         "photo": [{"bytes": d, "path": None} for _, _, d, _ in rows], "category": [k for k, *_ in rows]},
        features=datasets.Features({"image": datasets.Value("binary"), "label": datasets.Value("int64"),
                                    "photo": datasets.Image(), "category": datasets.ClassLabel(names=CLASSES)}))
    write_parquet(tmp_path / "both", "train", ds)
    splits = open_splits(f"hf:{tmp_path / 'both'}", val_fraction=0)
    assert splits.classes == CLASSES and splits.parts["train"].targets == [k for k, *_ in rows]
    assert [s.read_bytes() for s, _ in splits.parts["train"].samples] == [d for _, _, d, _ in rows]


@pytest.mark.parametrize("streaming", [False, True])
def test_an_unlabelled_test_split_is_left_out(made, tmp_path, streaming):
    rows = made.rows
    unlabelled = table(rows["test"], labels=[-1] * len(rows["test"]))
    datasets.DatasetDict({"train": table(rows["train"]), "validation": table(rows["val"]),
                          "test": unlabelled}).save_to_disk(str(tmp_path / "d"))
    splits = open_splits(f"hf:{tmp_path / 'd'}", streaming=streaming)
    assert set(splits.parts) == {"train", "val"}
    assert splits.rule.endswith("splits train as train, validation as val; test left out (unlabelled); no test split")


# ---------------------------------------------------------------------------------------------------------
# The streamed loader


def stream_part(path, **kw):
    return open_splits(f"hf:{path}", val_fraction=0, streaming=True, **kw).parts["train"]


def ids_loader(part, *, rank=0, world=1, seed=3, workers=0, buffer=8):
    """Identity transform: batches of the 4x4 grey images, uint8 (B, 1, 4, 4)."""
    return HFStreamLoader(part, 4, lambda x: x, 1, seed=seed, workers=workers, rank=rank, world_size=world,
                          shuffle_buffer=buffer)


def ids_of(batches) -> list[int]:
    return [int(v) // 5 for x, _ in batches for v in x[:, 0, 0, 0]]


def test_every_rank_has_the_same_length_and_an_epoch_covers_every_example_once(made):
    part = stream_part(made.ids)
    assert len(part) == 48
    for world in (1, 2, 3):  # 2: whole files per rank; 3: every third example
        loaders = [ids_loader(part, rank=r, world=world) for r in range(world)]
        assert {len(lo) for lo in loaders} == {48 // world // 4}
        seen = []
        for lo in loaders:
            lo.set_epoch(1)
            batches = list(lo)
            assert len(batches) == len(lo)
            assert all(torch.equal(y, torch.tensor(ids_of([(x, y)])) % 3) for x, y in batches)  # each its label
            seen.append(ids_of(batches))
        assert sorted(i for s in seen for i in s) == list(range(48)), world  # rows divide by batch: each once
        if world > 1:
            assert not set(seen[0]) & set(seen[1])


def test_a_shorter_rank_starts_its_part_again_and_trains_as_many_batches(made, tmp_path):
    """Files of 14, 10, 12 and 12 rows over 2 processes (whole files each): 26 and 22 rows, 6 batches of 4 each."""
    by_row = datasets.load_dataset(str(made.ids), split="train")  # the 48 rows, in order
    data = tmp_path / "uneven" / "data"
    data.mkdir(parents=True)
    for i, (a, b) in enumerate(((0, 14), (14, 24), (24, 36), (36, 48))):
        by_row.select(range(a, b)).to_parquet(str(data / f"train-{i:05d}-of-00004.parquet"))
    part = stream_part(tmp_path / "uneven")
    seen = []
    for rank in range(2):
        lo = ids_loader(part, rank=rank, world=2)
        lo.set_epoch(1)
        seen.append(ids_of(lo))
    assert [len(s) for s in seen] == [24, 24]
    assert sorted(len(set(s)) for s in seen) == [22, 24] and not set(seen[0]) & set(seen[1])


def test_batches_depend_on_seed_and_epoch_only_not_on_workers(made):
    part = stream_part(made.ids)

    def epoch(epoch, seed=3, workers=0):
        lo = ids_loader(part, seed=seed, workers=workers)
        lo.set_epoch(epoch)
        return list(lo)

    one = epoch(1)
    for again in (epoch(1), epoch(1, workers=2)):
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(one, again))
    order = ids_of(one)
    assert order != list(range(48))
    for other in (epoch(2), epoch(1, seed=4)):
        assert ids_of(other) != order and sorted(ids_of(other)) == list(range(48))


def train_loader(part, workers, seed=3, rank=0, world=1):
    from vitkit.data.augment import train_transform
    from vitkit.data.imagefolder import Chain
    from vitkit.data.preprocess import Normalize
    transform = Chain(train_transform((16, 16), randaugment=False), Normalize((0.5,) * 3, (0.5,) * 3))
    return HFStreamLoader(part, 4, transform, 3, seed=seed, workers=workers, rank=rank, world_size=world,
                          shuffle_buffer=8)  # windows of 2 batches


def states_and_batches(loader, epoch):
    """The epoch's batches, and stream_state() after each: states[k] is where batch k starts."""
    loader.set_epoch(epoch)
    batches, states = [], [None]
    for images, labels in loader:
        batches.append((images, labels))
        states.append(loader.stream_state())
    return batches, states


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_resumes_from_its_stream_state_with_the_same_remaining_batches(made, workers):
    part = stream_part(made.pq)
    whole, states = states_and_batches(train_loader(part, workers), 1)
    assert len(whole) == 9 and json.loads(json.dumps(states[5])) == states[5]  # plain values
    for k in (1, 2, 3, 6, 8):  # inside a window and at its end
        resumed = train_loader(part, 2 - workers)  # a resume may change data.workers: the same batches
        resumed.load_stream_state(states[k])
        resumed.set_epoch(1)
        resumed.skip(k)
        rest = list(resumed)
        assert len(rest) == len(whole) - k
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(whole[k:], rest)), k


@pytest.mark.parametrize("world", [2, 3])  # whole files per process; every third example
def test_a_rank_of_several_resumes_exactly(made, world):
    part = stream_part(made.ids)
    whole, states = states_and_batches(ids_loader(part, rank=1, world=world), 1)
    for k in range(1, len(whole)):
        resumed = ids_loader(part, rank=1, world=world)
        resumed.load_stream_state(states[k])
        resumed.set_epoch(1)
        resumed.skip(k)
        assert ids_of(resumed) == ids_of(whole[k:]), k


def test_a_resume_reads_from_the_saved_state_not_from_the_start(made, monkeypatch):
    part = stream_part(made.ids)
    whole, states = states_and_batches(ids_loader(part), 1)  # 12 batches in 6 windows of 2
    read = []
    examples = RankStream.examples

    def counted(self, at):
        for example in examples(self, at):
            read.append(1)
            yield example

    monkeypatch.setattr(RankStream, "examples", counted)
    for k, window_start in ((9, 8), (10, 10)):
        read.clear()
        resumed = ids_loader(part)
        resumed.load_stream_state(states[k])
        resumed.set_epoch(1)
        resumed.skip(k)
        assert ids_of(resumed) == ids_of(whole[k:])
        assert len(read) == (12 - window_start) * 4, k  # its window read again, the windows before it not at all
        replay = ids_loader(part)  # no state: the epoch is read from its start
        replay.set_epoch(1)
        replay.skip(k)
        read.clear()
        assert ids_of(replay) == ids_of(whole[k:]) and len(read) == 48
    # the saved position is what it reads from: another window's position gives other examples
    moved = ids_loader(part)
    moved.load_stream_state({**states[4], "at": states[8]["at"]})
    moved.set_epoch(1)
    moved.skip(4)
    got = ids_of(moved)
    assert got[:8] != ids_of(whole[4:6]) and sorted(got[:8]) == sorted(ids_of(whole[8:10]))
    stale = ids_loader(part)  # a state of another epoch is not used
    stale.load_stream_state({**states[4], "epoch": 0, "at": states[8]["at"]})
    stale.set_epoch(1)
    stale.skip(4)
    assert ids_of(stale) == ids_of(whole[4:])


def test_a_rank_without_data_is_one_sentence(made, tmp_path):
    with pytest.raises(DataError, match="has 48 rows, less than one batch of 4 for each of the 13 process"):
        ids_loader(stream_part(made.ids), rank=12, world=13)
    rows, data = made.rows["train"], tmp_path / "empty" / "data"  # two files for two processes, one empty
    data.mkdir(parents=True)
    table(rows[:16]).to_parquet(str(data / "train-00000-of-00002.parquet"))
    table(rows[:0]).to_parquet(str(data / "train-00001-of-00002.parquet"))
    part = stream_part(tmp_path / "empty")
    for workers in (0, 2):
        lo = train_loader(part, workers, rank=1, world=2)  # 16 // 2 // 4 = 2 batches, of no example
        assert len(lo) == 2
        with pytest.raises(DataError, match="process 1 has no example of .* to train on; write the dataset as more"):
            list(lo)


# ---------------------------------------------------------------------------------------------------------
# The command line


@pytest.mark.parametrize("streaming", [False, True])
def test_train_then_eval_and_predict(made, capsys, streaming):
    sets = TINY + [f"data.dataset=hf:{made.pq}", "data.workers=2", "data.shuffle_buffer=8", "train.epochs=2",
                   f"data.streaming={str(streaming).lower()}", f"out_dir={made.tmp / 'runs'}",
                   f"name=s{int(streaming)}"]
    assert main(["train", *sets_args(sets)]) == 0
    out = capsys.readouterr().out
    assert f"hf:{made.pq}: 36 train / 12 val / 6 test images, 3 classes" in out
    assert f"hf:{made.pq}{' streamed,' if streaming else ''} splits train as train, validation as val" in out
    run = made.tmp / "runs" / f"s{int(streaming)}"
    split_file = (run / "split.csv").read_text().splitlines()
    assert split_file[1] == (f"train,*,hf:{made.pq}/train (36 rows)" if streaming else
                             f"train,dark,hf:{made.pq}/train[0]")  # the class and row of each image
    assert main(["eval", "--checkpoint", str(run / "checkpoints" / "best")]) == 0
    assert "val split: 12 images" in capsys.readouterr().out
    image = made.tmp / "light.png"
    image.write_bytes(made.rows["test"][2][2])
    assert main(["predict", "--checkpoint", str(run / "checkpoints" / "best"), str(image), "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["image"] == str(image)
    parquet = made.pq / "data" / "test-00000-of-00001.parquet"  # each row's image, named FILE[ROW]
    assert main(["predict", "--checkpoint", str(run / "checkpoints" / "best"), str(image), str(parquet), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in rows] == [str(image)] + [f"{parquet}[{i}]" for i in range(6)]
    assert rows[3]["top_k"] == rows[0]["top_k"]  # row 2 holds the bytes of the image file


@pytest.mark.parametrize("streaming", [False, True])
def test_knn_on_the_run_s_own_dataset_and_the_features_cache(made, tmp_path, capsys, monkeypatch, streaming):
    """`vitkit knn` reads a run's hf: data as the run read it; a map-style split's features are cached by the
    dataset's fingerprint and rows, a streamed split's are not (it has no fingerprint short of reading it)."""
    sets = TINY + [f"data.dataset=hf:{made.pq}", "data.workers=0", "train.epochs=1",
                   f"data.streaming={str(streaming).lower()}", f"out_dir={tmp_path / 'runs'}", "name=r"]
    assert main(["train", *sets_args(sets)]) == 0
    monkeypatch.setenv("VITKIT_CACHE", str(tmp_path / "cache"))
    best = str(tmp_path / "runs" / "r" / "checkpoints" / "best")
    capsys.readouterr()
    assert main(["knn", "--checkpoint", best, "--k", "1", "3"]) == 0
    assert "test at the k chosen on val" in capsys.readouterr().out
    cached = list((tmp_path / "cache" / "features").glob("*.safetensors")) if (tmp_path / "cache").exists() else []
    assert len(cached) == (0 if streaming else 3)  # train, val, test
    assert main(["knn", "--checkpoint", best, "--k", "1", "--data", f"hf:{made.disk}"]) == 0  # another dataset
    assert "test at the k chosen on val" in capsys.readouterr().out


@pytest.mark.parametrize("streaming", [False, True])
def test_cache_memory_decodes_the_splits_once_and_trains(made, tmp_path, capsys, streaming):
    sets = TINY + [f"data.dataset=hf:{made.pq}", "data.cache=memory", "data.workers=0", "train.epochs=1",
                   f"data.streaming={str(streaming).lower()}", f"out_dir={tmp_path / 'runs'}", "name=r"]
    assert main(["train", *sets_args(sets)]) == 0
    assert "36 train / 12 val / 6 test images" in capsys.readouterr().out
    from vitkit.train.checkpoint import load_training_state
    assert "streams" not in load_training_state(tmp_path / "runs" / "r" / "checkpoints" / "last.state.pt")


def saved_state(run_dir: Path) -> dict:
    """The training state a resume would load (as saved_step: last, else previous)."""
    from vitkit.errors import CheckpointError
    from vitkit.train.checkpoint import load_training_state
    try:
        return load_training_state(run_dir / "checkpoints" / "last.state.pt")
    except CheckpointError:
        return load_training_state(run_dir / "checkpoints" / "previous.state.pt")


def test_sigterm_then_resume_of_a_streamed_run_ends_bit_identical(made, tmp_path):
    sets = TINY + [f"data.dataset=hf:{made.pq}", "data.streaming=true", "data.workers=2", "data.shuffle_buffer=8",
                   "train.epochs=2", "seed=4", "model.drop_rate=0.1", "train.checkpoint_every_steps=1",
                   "train.deterministic=true", f"out_dir={tmp_path / 'runs'}", "name=r"]
    assert main(["train", *sets_args(sets), "--set", f"out_dir={tmp_path / 'ref'}"]) == 0
    run_dir = tmp_path / "runs" / "r"
    stopped, err = sigterm_early(sets_args(sets), run_dir)
    assert 0 < stopped < 18, (stopped, err[-3000:])
    (stream,) = saved_state(run_dir)["streams"]  # after the last batch trained: epoch e, batch 1..9
    assert (stream["epoch"], stream["batch"]) == ((stopped - 1) // 9, (stopped - 1) % 9 + 1), (stopped, stream)
    assert main(["train", *sets_args(sets), "--resume", "auto"]) == 0, (stopped, err[-3000:])
    assert same_last_weights(run_dir, tmp_path / "ref" / "r"), f"differs after a resume at step {stopped}"


def test_a_changed_dataset_fails_the_split_file_check(made, tmp_path, capsys):
    copy = tmp_path / "pq"
    shutil.copytree(made.pq, copy)
    sets = TINY + [f"data.dataset=hf:{copy}", "data.workers=0", "train.epochs=1", f"out_dir={tmp_path / 'runs'}",
                   "name=r"]
    assert main(["train", *sets_args(sets)]) == 0
    best = tmp_path / "runs" / "r" / "checkpoints" / "best"
    assert main(["eval", "--checkpoint", str(best)]) == 0
    table(made.rows["val"][:6]).to_parquet(str(copy / "data" / "train-00003-of-00004.parquet"))  # 6 other rows
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(best)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no longer holds the rows the run's" in err and "\n" not in err and "Traceback" not in err, err


def write_case(case: str, made, d: Path) -> list[str]:
    """The dataset of one bad-input case, and the settings that read it."""
    if case in ("missing-column", "disk-cache"):
        return [f"data.dataset=hf:{made.pq}",
                "data.label_column=species" if case == "missing-column" else "data.cache=disk"]
    if case == "no-image":
        ds = datasets.Dataset.from_dict({"pixels": [[1, 2], [3, 4]], "label": [0, 1]})
        write_parquet(d, "train", ds)
    elif case == "no-train":
        write_parquet(d, "validation", table(made.rows["val"]))
        write_parquet(d, "test", table(made.rows["test"]))
    elif case.startswith("corrupt-one"):  # one file of four
        shutil.copytree(made.pq, d)
        (d / "data" / "train-00002-of-00004.parquet").write_bytes(b"PAR1 this is not a parquet file" * 20)
        return [f"data.dataset=hf:{d}", f"data.streaming={str(case.endswith('streamed')).lower()}", "data.workers=2"]
    elif case.startswith("corrupt"):
        (d / "data").mkdir(parents=True)
        (d / "data" / "train-00000-of-00001.parquet").write_bytes(b"PAR1 this is not a parquet file" * 20)
        return [f"data.dataset=hf:{d}", f"data.streaming={str(case == 'corrupt-streamed').lower()}",
                "data.val_fraction=0"]
    elif case.startswith("unknown-label"):  # a validation label that train lacks
        kinds = datasets.Value("string")
        write_parquet(d, "train", table(made.rows["train"], kinds, labels=[KINDS[k] for k, *_ in made.rows["train"]]))
        write_parquet(d, "validation", table(made.rows["val"][:2], kinds, labels=["apple", "pear"]))
        return [f"data.dataset=hf:{d}", f"data.streaming={str(case.endswith('streamed')).lower()}"]
    elif case.startswith("null-label"):  # an integer label column with a null in train (map) or validation
        ints = datasets.Value("int64")
        write_parquet(d, "train", table(made.rows["train"], ints,
                                        labels=[None if i == 4 and case == "null-label" else k
                                                for i, (k, *_) in enumerate(made.rows["train"])]))
        write_parquet(d, "validation", table(made.rows["val"], ints,
                                             labels=[None] + [k for k, *_ in made.rows["val"]][1:]))
        return [f"data.dataset=hf:{d}", f"data.streaming={str(case.endswith('streamed')).lower()}"]
    elif case == "no-val-streamed":
        return [f"data.dataset=hf:{made.disk}", "data.streaming=true"]
    elif case == "missing-path":
        return [f"data.dataset=hf:{d / 'nothing'}"]
    elif case == "streamed-digits":
        return ["data.dataset=digits", "data.streaming=true"]
    return [f"data.dataset=hf:{d}"]


@pytest.mark.parametrize("case, words", [
    ("missing-column", "has no column 'species' (data.label_column); its columns: image, label"),
    ("no-image", "has no image column that vitkit recognises (its columns: pixels, label); name it with "
                 "data.image_column"),
    ("no-train", "has no train split (its splits: validation, test); vitkit trains on the split named train"),
    ("corrupt", "could not be read by datasets (ArrowInvalid: Parquet magic bytes not found in footer"),
    ("corrupt-streamed", "could not be read by datasets (ArrowInvalid: Parquet magic bytes not found in footer"),
    ("corrupt-one", "could not be read by datasets (ArrowInvalid: Could not open Parquet input source"),
    ("corrupt-one-streamed", "could not be read while streaming (ArrowInvalid: Could not open Parquet input source"),
    ("unknown-label", "the validation split has the label 'pear', outside the 3 classes of train (apple, mango, "
                      "zebra)"),
    ("unknown-label-streamed", "/validation[1] has the label 'pear', outside the 3 classes of the training split"),
    ("null-label", "row 4 of the training split has no label ('label' is null)"),
    ("null-label-streamed", "row 0 of the validation split has no label ('label' is null)"),
    ("no-val-streamed", "has no validation split, and a streamed dataset is not held out from"),
    ("missing-path", "no such folder or file; expected a folder written by save_to_disk"),
    ("disk-cache", "data.cache: disk is for image folders; shards and hf: datasets decode into memory"),
    ("streamed-digits", "data.image_column, data.label_column and data.streaming are for hf: datasets; digits is "
                        "not one")])
def test_bad_input_is_one_sentence(made, tmp_path, capsys, case, words):
    sets = TINY + ["data.workers=0", "train.epochs=1", f"out_dir={tmp_path / 'runs'}",
                   *write_case(case, made, tmp_path / "d")]
    capsys.readouterr()
    assert main(["train", *sets_args(sets)]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err and "Traceback" not in err, err


@pytest.mark.parametrize("streaming", [False, True])
def test_channels_are_3_unless_every_looked_at_image_or_the_feature_is_grey(made, tmp_path, streaming):
    """Only when every image among the first CHANNEL_PEEK is grey (or the Image feature says mode L) is a
    dataset read as 1-channel; a grey first image among colour ones does not make the run grey."""
    grey_first = sorted(made.rows["train"], key=lambda r: r[1] % 2 == 0)  # odd i: grey images first
    assert Image.open(io.BytesIO(grey_first[0][2])).mode == "L"
    write_parquet(tmp_path / "mixed", "train", table(grey_first))
    assert open_splits(f"hf:{tmp_path / 'mixed'}", val_fraction=0, streaming=streaming).channels == 3
    write_parquet(tmp_path / "grey", "train", table(made.rows["train"]).filter(lambda r: r["image"].mode == "L"))
    assert open_splits(f"hf:{tmp_path / 'grey'}", val_fraction=0, streaming=streaming).channels == 1
    declared = table(made.rows["train"]).cast_column("image", datasets.Image(mode="L"))
    write_parquet(tmp_path / "declared", "train", declared)
    assert open_splits(f"hf:{tmp_path / 'declared'}", val_fraction=0, streaming=streaming).channels == 1


def test_one_parquet_file_is_the_training_split(made):
    file = made.pq / "data" / "train-00001-of-00004.parquet"
    splits = open_splits(f"hf:{file}", val_fraction=0.25)
    assert splits.classes == CLASSES and splits.size("train") + splits.size("val") == 9 and "test" not in splits.parts
    assert splits.rule.startswith(f"hf:{file} splits train as train; validation: 25% of each class of train")


def test_without_the_datasets_package_hf_is_one_sentence_naming_the_extra(made, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    sets = TINY + [f"data.dataset=hf:{made.pq}", "data.workers=0", "train.epochs=1"]
    assert main(["train", *sets_args(sets)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("vitkit train: error: data.dataset hf:... reads Hugging Face datasets, which needs the datasets "
                   "package: pip install 'vitkit[datasets]'"), err
