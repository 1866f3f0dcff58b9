"""Hugging Face ``datasets`` as a run's data: ``data.dataset: hf:PATH_OR_NAME`` (the ``datasets`` extra).

``PATH_OR_NAME`` is a folder written by ``save_to_disk`` (a DatasetDict, or one Dataset taken as the training
split), one .parquet or .arrow file (the training split), a folder of Parquet or Arrow files (``datasets.load_dataset(PATH)`` names the splits from the file
names, e.g. ``data/train-00000-of-00004.parquet``), or a Hub name such as ``uoft-cs/cifar10``, read through the
Hugging Face cache (offline with ``HF_DATASETS_OFFLINE=1`` once it is there). A value starting with ``/``,
``.`` or ``~``, or naming a folder that exists, is a path; anything else is a Hub name.

- **Columns.** ``data.image_column`` (default: the first ``Image`` feature, else a column named image, img,
  jpg, jpeg, png or webp) and ``data.label_column`` (default: the first ``ClassLabel``, else label, labels,
  fine_label, target or cls). Class names come from the ClassLabel; integer labels are named by their value
  (classes 0 .. max); string labels are sorted as folder names are.
- **Splits.** train; val from the first of validation, valid, val, dev; test. Without a validation split,
  ``val_fraction`` of each class of train is held out with ``split_seed`` (the rule of
  :mod:`vitkit.data.splits`). A split whose labels are all -1 (an unlabelled test split, as ImageNet's on the
  Hub) is left out, and the rule says so.
- **Map-style** (default): rows are read from the memory-mapped Arrow table by index, so training goes through
  the image-folder loader (:class:`~vitkit.data.FolderLoader`: workers, per-sample augmentation, exact resume)
  and every image is a :class:`Row` where a folder has a file. **Streaming** (``data.streaming: true``) reads
  the splits as ``datasets.IterableDataset`` without converting or downloading them whole
  (:mod:`vitkit.data.hf_stream`).

Images are read as their stored bytes (or file) and decoded by vitkit's own rules (:mod:`vitkit.data.images`),
so one image gives the same pixels from a folder, a tar shard or a dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, DataError
from .imagefolder import FolderSamples

IMAGE_NAMES = ("image", "img", "jpg", "jpeg", "png", "webp")
LABEL_NAMES = ("label", "labels", "fine_label", "target", "cls")
SPLIT_NAMES = {"train": ("train",), "val": ("validation", "valid", "val", "dev"), "test": ("test",)}
FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow"}  # hf:FILE, read as the training split
CHANNEL_PEEK = 256  # training images looked at to tell a grey data set from a colour one
HF_KEYS = ("image_column", "label_column", "streaming")  # the data keys of how a run read its hf: dataset
STREAM_PIECES = 64  # a save_to_disk table streamed is read as this many contiguous pieces (dealt to ranks)


def require_datasets():
    try:
        import datasets
    except ImportError:
        raise ConfigError("data.dataset hf:... reads Hugging Face datasets, which needs the datasets package: "
                          "pip install 'vitkit[datasets]'") from None
    return datasets


def is_path(spec: str) -> bool:
    return spec.startswith(("/", ".", "~")) or Path(spec).expanduser().exists()


def load(spec: str, *, streaming: bool) -> dict:
    """``{split name: Dataset or IterableDataset}`` of ``hf:SPEC`` (every split the source has)."""
    datasets = require_datasets()
    target = Path(spec).expanduser()
    single = target.suffix.lower() in FILE_BUILDERS and target.is_file()
    if is_path(spec) and not target.is_dir() and not single:
        raise DataError(f"hf:{spec}: no such folder or file; expected a folder written by save_to_disk, a folder of "
                        "Parquet/Arrow files, one .parquet or .arrow file, or a Hub name such as uoft-cs/cifar10")
    try:
        if target.is_dir() and ((target / "dataset_dict.json").is_file() or (target / "state.json").is_file()):
            loaded = datasets.load_from_disk(str(target))
            if isinstance(loaded, datasets.Dataset):
                loaded = {"train": loaded}
            if streaming:  # an Arrow table on disk, read as a stream of contiguous pieces
                loaded = {k: d.to_iterable_dataset(num_shards=max(1, min(STREAM_PIECES, len(d))))
                          for k, d in loaded.items()}
        elif single:  # one file: the training split
            loaded = datasets.load_dataset(FILE_BUILDERS[target.suffix.lower()], data_files={"train": str(target)},
                                           streaming=streaming)
        else:
            loaded = datasets.load_dataset(str(target) if target.is_dir() else spec, streaming=streaming)
    except (ConfigError, DataError):
        raise
    except Exception as e:  # the library raises many types (not found, offline, unreadable Parquet, ...)
        while e.__cause__ is not None:  # the reason, under a DatasetGenerationError ("An error occurred ...")
            e = e.__cause__
        raise load_error(spec, e, datasets.config) from None
    return dict(loaded)


def load_error(spec: str, e: Exception, config) -> DataError:
    """The one sentence for a dataset ``datasets`` could not open: not on the Hub, not in the cache offline,
    the Hub unreachable, or anything else it said."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    name = type(e).__name__
    if not is_path(spec):
        if name == "DatasetNotFoundError":
            return DataError(f"Hugging Face dataset {spec} was not found at {config.HF_ENDPOINT}: it does not exist, "
                             "or it is private or gated and no token with access was given (huggingface-cli login)")
        if config.HF_HUB_OFFLINE or "OfflineModeIsEnabled" in first:
            return DataError(f"hf:{spec} is not in the Hugging Face datasets cache ({config.HF_DATASETS_CACHE}) and "
                             "HF_DATASETS_OFFLINE or HF_HUB_OFFLINE is set; open it once online, or unset them")
        if isinstance(e, ConnectionError) or name in ("ConnectError", "ConnectTimeout", "ReadTimeout",
                                                      "RemoteProtocolError", "TransportError"):
            return DataError(f"cannot reach the Hugging Face Hub at {config.HF_ENDPOINT} (HF_ENDPOINT) for hf:{spec} "
                             f"({name}: {first}), and it is not in the cache")
    return DataError(f"hf:{spec} could not be read by datasets ({name}: {first})")


def pick_splits(available: dict, spec: str) -> dict:
    """vitkit's split names -> the source's split names (train required; val and test when present)."""
    names = {}
    for ours, theirs in SPLIT_NAMES.items():
        found = next((t for t in theirs if t in available), None)
        if found is not None:
            names[ours] = found
    if "train" not in names:
        raise DataError(f"hf:{spec} has no train split (its splits: {', '.join(available) or 'none'}); vitkit "
                        "trains on the split named train")
    return names


def find_columns(features, image_column: str | None, label_column: str | None, spec: str) -> tuple[str, str]:
    """The image and label columns: the ones given, else found by type, else by name (module docstring)."""
    import datasets
    if features is None:
        raise DataError(f"hf:{spec} does not declare its columns (no features); save it with datasets' Image and "
                        "ClassLabel features, or as Parquet written by datasets")
    columns = list(features)

    def pick(given, kind, names, what, key):
        if given is not None:
            if given not in features:
                raise DataError(f"hf:{spec} has no column {given!r} ({key}); its columns: {', '.join(columns)}")
            return given
        typed = [c for c in columns if isinstance(features[c], kind)]
        named = [c for c in names if c in features]
        if typed or named:
            return (typed or named)[0]
        raise DataError(f"hf:{spec} has no {what} column that vitkit recognises (its columns: "
                        f"{', '.join(columns)}); name it with {key}")

    image = pick(image_column, datasets.Image, IMAGE_NAMES, "image", "data.image_column")
    label = pick(label_column, datasets.ClassLabel, LABEL_NAMES, "label", "data.label_column")
    if image == label:
        raise DataError(f"hf:{spec}: data.image_column and data.label_column are both {image!r}")
    return image, label


def label_kind(features, column: str, spec: str) -> str:
    """"classlabel", "int" or "string": how the label column names its classes."""
    import datasets
    f = features[column]
    if isinstance(f, datasets.ClassLabel):
        return "classlabel"
    dtype = getattr(f, "dtype", None)
    if isinstance(f, datasets.Value) and dtype.startswith(("int", "uint")):
        return "int"
    if isinstance(f, datasets.Value) and dtype in ("string", "large_string"):
        return "string"
    raise DataError(f"hf:{spec}: the label column {column!r} is {f}; expected a ClassLabel, integer or string "
                    "column (give another with data.label_column)")


def label_values(values, column: str, spec: str, split: str) -> list:
    """The labels of one split as a list; a null one is a DataError naming its row."""
    values = list(values)
    if None in values:
        raise DataError(f"hf:{spec}: row {values.index(None)} of the {split} split has no label ({column!r} is null)")
    return values


def classes_of(features, column: str, values, spec: str) -> tuple[list[str], dict | None]:
    """(class names, a value -> index map for string labels, else None) from the training labels ``values``
    (:func:`label_values`; not looked at when the column's type names the classes)."""
    kind = label_kind(features, column, spec)
    if kind == "classlabel":
        return list(features[column].names), None
    if not values:
        raise DataError(f"hf:{spec}: the training split has no rows")
    if kind == "int":
        if min(values) < 0:
            raise DataError(f"hf:{spec}: the training labels ({column!r}) include {min(values)}; expected class "
                            "indices 0, 1, ... (an unlabelled split cannot be trained on)")
        return [str(i) for i in range(max(values) + 1)], None
    names = sorted(set(values))
    return names, {name: i for i, name in enumerate(names)}


# ---------------------------------------------------------------------------------------------------------
# Map-style: rows of an Arrow table


class Table:
    """One split's image column, read by row as stored bytes (a picklable handle: a memory-mapped Arrow table
    pickles as its files, so loader workers open it again instead of copying it)."""

    def __init__(self, dataset, image_column: str, name: str):
        import datasets
        self.dataset = dataset.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
        self.column, self.name = image_column, name

    def image_bytes(self, row: int) -> bytes:
        return stored_bytes(self.dataset[row][self.column], f"{self.name}[{row}]")


def stored_bytes(value, where: str) -> bytes:
    """An undecoded ``Image`` value (``{"bytes": ..., "path": ...}``) as the image file's bytes."""
    if isinstance(value, dict) and value.get("bytes"):
        return value["bytes"]
    if isinstance(value, dict) and value.get("path"):
        try:
            return Path(value["path"]).read_bytes()
        except OSError as e:
            raise DataError(f"{where} names the image file {value['path']}, which cannot be read ({e})") from None
    raise DataError(f"{where} has no image (an empty or null value)")


@dataclass(frozen=True)
class Row:
    """One image of a dataset split, where an image folder has a file: it reads its bytes like a path does
    (:func:`~vitkit.data.images.open_image`) and prints as ``hf:SOURCE/SPLIT[ROW]``."""

    table: Table
    row: int

    def read_bytes(self) -> bytes:
        return self.table.image_bytes(self.row)

    def __str__(self) -> str:
        return f"{self.table.name}[{self.row}]"


@dataclass
class HFSamples(FolderSamples):
    """The rows of one split as (:class:`Row`, label) samples, with the source's fingerprint (for caches)."""

    fingerprint: str = ""


def map_parts(spec: str, *, image_column=None, label_column=None, val_fraction: float = 0.0):
    """``hf:SPEC`` read map-style: (classes, {split: HFSamples}, the rule so far, whether the images are grey:
    :func:`grey_images`). The validation hold-out, when the source has no validation split, is drawn by
    :func:`~vitkit.data.open_splits`."""
    loaded = load(spec, streaming=False)
    names = pick_splits(loaded, spec)
    train = loaded[names["train"]]
    image, label = find_columns(train.features, image_column, label_column, spec)
    parts, left_out, classes, index = {}, [], None, None
    for ours, theirs in names.items():  # train first
        ds = loaded[theirs]
        if image not in ds.features or label not in ds.features:
            raise DataError(f"hf:{spec}: the {theirs} split lacks the column {image if image not in ds.features else label!r}")
        values = label_values(ds[label], label, spec, "training" if ours == "train" else theirs)
        if ours == "train":
            classes, index = classes_of(train.features, label, values, spec)
        labels = [index.get(v, -1) for v in values] if index is not None else [int(v) for v in values]
        if ours != "train" and labels and all(v < 0 for v in labels) and index is None:
            left_out.append(theirs)  # an unlabelled split
            continue
        bad = next((i for i, v in enumerate(labels) if not 0 <= v < len(classes)), None)
        if bad is not None:  # an index out of range, or a string label that train lacks
            known = f"0..{len(classes) - 1}" if index is None else ", ".join(classes[:5])
            raise DataError(f"hf:{spec}: the {theirs} split has the label {values[bad]!r}, outside the "
                            f"{len(classes)} classes of train ({known})")
        table = Table(ds, image, f"hf:{spec}/{theirs}")
        parts[ours] = HFSamples([(Row(table, i), v) for i, v in enumerate(labels)], ds._fingerprint)
    rule = f"hf:{spec} splits " + ", ".join(f"{names[s]} as {s}" for s in parts)
    rule += f"; {', '.join(left_out)} left out (unlabelled)" if left_out else ""
    if not parts["train"].samples:
        raise DataError(f"hf:{spec}: the training split has no rows")
    rows = parts["train"].samples[:CHANNEL_PEEK]
    return classes, parts, rule, grey_images(train.features[image], ((r.read_bytes(), str(r)) for r, _ in rows))


def grey_images(feature, images) -> bool:
    """True when the images are to be read as 1-channel: the ``Image`` feature says ``mode="L"`` (or another
    grey mode), or it names no mode and every one of ``images`` ((bytes, name), the first CHANNEL_PEEK of the
    training split) is grey. ``data.channels`` decides instead when given."""
    from .images import is_grey_mode, open_image
    mode = getattr(feature, "mode", None)
    if mode:
        return is_grey_mode(mode)
    return all(is_grey_mode(open_image(data, name).mode) for data, name in images)


def parquet_images(path: Path, image_column: str | None = None):
    """``(row, image bytes)`` of each row of one Parquet file (``vitkit predict FILE.parquet``): the column
    given, else the first ``Image`` feature that datasets recorded in the file, else the first column holding
    image structs ({bytes, path}). An unreadable file is one DataError."""
    require_datasets()
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        file = pq.ParquetFile(path)
        schema = file.schema_arrow
        recorded = json.loads((schema.metadata or {}).get(b"huggingface", b"{}")).get("info", {}).get("features", {})
        images = [c for c, f in recorded.items() if isinstance(f, dict) and f.get("_type") == "Image"]
        images += [f.name for f in schema if pa.types.is_struct(f.type) and f.type.get_field_index("bytes") >= 0]
        column = image_column or next(iter(images), None)
        if column is None or column not in schema.names:
            raise DataError(f"Parquet file {path} has no image column (its columns: {', '.join(schema.names)})")
        row = 0
        for batch in file.iter_batches(columns=[column], batch_size=256):
            for value in batch.column(0).to_pylist():
                yield row, stored_bytes(value, f"{path}[{row}]")
                row += 1
    except (DataError, ConfigError):
        raise
    except Exception as e:  # pyarrow's errors for a damaged or non-Parquet file
        raise DataError(f"Parquet file {path} is unreadable ({type(e).__name__}: {str(e)[:200]})") from None
