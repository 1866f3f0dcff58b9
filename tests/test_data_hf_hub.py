"""``data.dataset: hf:owner/name`` against a fake Hugging Face Hub on 127.0.0.1: the real ``datasets`` and
``huggingface_hub`` code resolves the name, lists the repository, downloads its Parquet files (through a CDN
redirect, as LFS files are served), builds the dataset in its cache and reads it again offline; vitkit then
gives the splits, the ClassLabel's class names and pixel-equal images, and one sentence for each failure.

Both libraries read HF_ENDPOINT, HF_HOME, HF_HUB_OFFLINE and HF_DATASETS_OFFLINE once, at import, into
``huggingface_hub.constants`` and ``datasets.config``; the fixtures set the variables and those constants, as a
user's environment would have set them before Python started."""

import hashlib
import io
import json
import re
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import numpy as np
import pytest
from PIL import Image

from test_data_shards import TINY, sets_args
from test_hub import FakeHub
from vitkit.cli import main
from vitkit.data import open_splits
from vitkit.data.images import open_image, to_uint8_chw
from vitkit.errors import DataError

LFS_SUFFIXES = (".parquet", ".arrow")  # stored in LFS on the Hub: served through a CDN redirect
CLASSES = ["cat", "dog", "frog"]
DATE = "2024-05-01T12:00:00.000Z"


class FakeDatasetHub(FakeHub):
    """:class:`FakeHub` for dataset repositories: the routes ``datasets.load_dataset("owner/name")`` uses.

    - ``HEAD|GET /datasets/{owner}/{name}/resolve/{revision}/{file}``: as FakeHub's for models (ETag,
      X-Repo-Commit, 404 with X-Error-Code); Parquet and Arrow files are LFS files, a 302 to the CDN.
    - ``GET /api/datasets/{owner}/{name}[/revision/{revision}]``: the dataset's info (id, sha, siblings).
    - ``GET /api/datasets/{owner}/{name}/tree/{revision}[/{folder}]?recursive=&expand=``: the folder's
      entries ({type: file|directory, path, oid, size, lfs}), folders first, ``page_size`` a page with the
      Hub's ``Link: <...&cursor=N>; rel="next"`` header.

    Both servers answer a ``Range`` request (a streamed file) with 206 and that part. Any other route is a
    bare 404, noted in ``unknown``: the tests check that none was asked for (``paths-info``, for one, is not
    used by this road)."""

    page_size = 1000
    lfs_suffixes = LFS_SUFFIXES

    def __init__(self):
        self.unknown: list[tuple[str, str]] = []
        super().__init__()

    def _content(self, handler, headers: dict, content: bytes, body: bool):
        """200 with the content, or 206 with the part a ``Range: bytes=A-B`` header asks for."""
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", handler.headers.get("Range", ""))
        if wanted is None:
            return self._answer(handler, 200, headers, content, body)
        start, end = int(wanted[1]), min(int(wanted[2] or len(content) - 1), len(content) - 1)
        self._answer(handler, 206, {**headers, "Content-Range": f"bytes {start}-{end}/{len(content)}"},
                     content[start:end + 1], body)

    def _cdn_route(self, handler, body: bool):
        sha256 = handler.path.rpartition("/")[2]
        if sha256 not in self.blobs:
            return self._answer(handler, 404, {}, b"NoSuchKey", body)
        self._content(handler, {"Content-Type": "application/octet-stream"}, self.blobs[sha256], body)

    def _hub_route(self, handler, body: bool):
        if self.drop:
            handler.close_connection = True  # no status line: the client sees the connection drop
            return
        url = urlsplit(handler.path)
        parts = [unquote(p) for p in url.path.split("/")]  # each segment unquoted: a revision may hold a "/"
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if len(parts) >= 7 and parts[1] == "datasets" and parts[4] == "resolve":
            return self._resolve(handler, f"{parts[2]}/{parts[3]}", parts[5], "/".join(parts[6:]), body)
        if len(parts) >= 5 and parts[1:3] == ["api", "datasets"]:
            repo, route, rest = f"{parts[3]}/{parts[4]}", (parts[5:6] or [""])[0], parts[6:]
            if route in ("", "revision") and handler.command == "GET":
                return self._info(handler, repo, rest[0] if rest else "main", body)
            if route == "tree" and rest and handler.command == "GET":
                return self._tree(handler, repo, rest[0], "/".join(rest[1:]), query, body)
        self.unknown.append((handler.command, handler.path))
        return self._answer(handler, 404, {}, b"Not Found", body)

    # ----------------------------------------------------------------------------------------------------------

    def _commit(self, handler, repo: str, revision: str, body: bool):
        """The commit ``revision`` names in ``repo``, or None once the 404 the Hub gives is sent."""
        if repo not in self.branches:
            self._error(handler, "RepoNotFound", body)
            return None
        commit = self.branches[repo].get(revision, revision)
        if commit not in self.commits or commit not in self.branches[repo].values():
            self._error(handler, "RevisionNotFound", body)
            return None
        return commit

    def _json(self, handler, value, body: bool, **headers):
        self._answer(handler, 200, {"Content-Type": "application/json", **headers}, json.dumps(value).encode(), body)

    def _resolve(self, handler, repo: str, revision: str, filename: str, body: bool):
        commit = self._commit(handler, repo, revision, body)
        if commit is not None:
            self._serve(handler, commit, filename, body)

    def _info(self, handler, repo: str, revision: str, body: bool):
        commit = self._commit(handler, repo, revision, body)
        if commit is not None:
            self._json(handler, {
                "_id": hashlib.sha1(repo.encode()).hexdigest()[:24], "id": repo, "author": repo.split("/")[0],
                "sha": commit, "lastModified": DATE, "createdAt": DATE, "private": False, "gated": False,
                "disabled": False, "downloads": 0, "likes": 0, "tags": [],
                "siblings": [{"rfilename": name} for name in sorted(self.commits[commit])]}, body)

    def _entries(self, commit: str, expand: bool) -> dict[str, dict]:
        """Every path of the commit (files and the folders above them) as the tree route describes it."""
        files = self.commits[commit]
        entries = {}
        for name in sorted(files):
            folders = name.split("/")[:-1]
            for depth in range(1, len(folders) + 1):
                folder = "/".join(folders[:depth])
                entries.setdefault(folder, {"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(),
                                            "path": folder})
            content = files[name]
            entry = {"type": "file", "oid": git_blob_id(content), "size": len(content), "path": name}
            if name.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"oid": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": 134}
            entries[name] = entry
        if expand:
            for entry in entries.values():
                entry["lastCommit"] = {"id": commit, "title": "Upload dataset", "date": DATE}
        return entries

    def _tree(self, handler, repo: str, revision: str, path: str, query: dict, body: bool):
        commit = self._commit(handler, repo, revision, body)
        if commit is None:
            return
        recursive = query.get("recursive", "false").lower() in ("1", "true")
        entries = self._entries(commit, query.get("expand", "false").lower() in ("1", "true"))
        if path and entries.get(path, {}).get("type") != "directory":
            return self._error(handler, "EntryNotFound", body, **{"X-Repo-Commit": commit})
        prefix = path + "/" if path else ""
        listed = [e for p, e in entries.items()
                  if p.startswith(prefix) and (recursive or "/" not in p[len(prefix):])]
        listed.sort(key=lambda e: (e["type"] != "directory", e["path"]))  # the Hub lists folders first
        start = int(query.get("cursor", 0))
        page, headers = listed[start:start + self.page_size], {}
        if start + self.page_size < len(listed):  # the next page, as the Hub's Link header gives it
            next_query = urlencode({**query, "cursor": start + self.page_size})
            headers["Link"] = f'<{self.url}{urlsplit(handler.path).path}?{next_query}>; rel="next"'
        self._json(handler, page, body, **headers)


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@pytest.fixture
def fake_dataset_hub(monkeypatch, tmp_path):
    """A fake Hub at HF_ENDPOINT and every Hugging Face cache under tmp_path/hf_home (HF_HOME), never the
    user's; no token, online, no telemetry and no download-count ping (a HEAD to s3.amazonaws.com)."""
    import datasets
    from huggingface_hub import constants
    server = FakeDatasetHub()
    home = tmp_path / "hf_home"
    for key in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_CACHE",
                "HF_HUB_CACHE", "HF_DATASETS_DOWNLOADED_DATASETS_PATH", "HF_DATASETS_EXTRACTED_DATASETS_PATH"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {"HF_ENDPOINT": server.url, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1",
                       "HF_UPDATE_DOWNLOAD_COUNTS": "0"}.items():
        monkeypatch.setenv(key, value)
    for key, value in {
            "ENDPOINT": server.url,
            "HUGGINGFACE_CO_URL_TEMPLATE": server.url + "/{repo_id}/resolve/{revision}/{filename}",
            "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_XET_CACHE": str(home / "xet"),
            "HF_TOKEN_PATH": str(home / "token"), "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
            "HF_HUB_OFFLINE": False, "HF_HUB_DISABLE_TELEMETRY": True}.items():
        monkeypatch.setattr(constants, key, value)
    for key, value in {
            "HF_ENDPOINT": server.url, "HUB_DATASETS_URL": server.url + "/datasets/{repo_id}/resolve/{revision}/{path}",
            "HF_CACHE_HOME": str(home), "HF_DATASETS_CACHE": home / "datasets", "HF_MODULES_CACHE": home / "modules",
            "DOWNLOADED_DATASETS_PATH": home / "datasets" / "downloads",
            "EXTRACTED_DATASETS_PATH": home / "datasets" / "downloads" / "extracted",
            "HF_HUB_OFFLINE": False, "HF_DATASETS_OFFLINE": False, "HF_UPDATE_DOWNLOAD_COUNTS": False}.items():
        monkeypatch.setattr(datasets.config, key, value)
    yield server
    server.close()


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def make_repo(per_class: int = 8, test_per_class: int = 2) -> tuple[dict[str, bytes], dict[str, list]]:
    """A dataset repository as push_to_hub writes one: data/{split}-00000-of-00001.parquet (Image and ClassLabel
    features recorded in the files) and a README.md whose YAML gives the features, splits and data files; and
    the rows served, {split: [(pixels, label), ...]}."""
    import datasets
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData
    rng = np.random.default_rng(0)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    rows = {"train": [], "test": []}
    for k in range(len(CLASSES)):
        for i in range(per_class):
            h, w = 10 + i % 3, 12 + i % 4
            pixels = np.clip(40 + 80 * k + rng.integers(-30, 31, (h, w, 3)), 0, 255).astype(np.uint8)
            rows["test" if i < test_per_class else "train"].append((pixels, k))
    files, splits = {}, SplitDict()
    for split, items in rows.items():
        ds = datasets.Dataset.from_dict({"img": [{"bytes": png(x), "path": None} for x, _ in items],
                                         "label": [y for _, y in items]}, features=features)
        out = io.BytesIO()
        ds.to_parquet(out)
        files[f"data/{split}-00000-of-00001.parquet"] = out.getvalue()
        splits.add(SplitInfo(name=split, num_bytes=ds.data.nbytes, num_examples=len(ds)))
    card = DatasetCardData()
    DatasetInfosDict({"default": DatasetInfo(features=features, splits=splits)}).to_dataset_card_data(card)
    MetadataConfigs({"default": {"data_files": [{"split": s, "path": f"data/{s}-*"} for s in rows]}}
                    ).to_dataset_card_data(card)
    files["README.md"] = str(DatasetCard(f"---\n{card}\n---\n# cifarlike\n")).encode()
    return files, rows


@pytest.fixture(scope="module")
def repo():
    return make_repo()


def go_offline(monkeypatch, hub):
    """HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1, as a user sets them before starting Python (both libraries
    read them at import), and a Hub that drops every connection: any request shows in ``hub.requests``."""
    import datasets
    from huggingface_hub import constants
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(key, "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    hub.drop = True
    hub.requests.clear()


def read_rows(splits) -> dict[str, list]:
    """{split: [(source split, row, label, HWC uint8 pixels)]}: each sample as vitkit reads it."""
    return {name: [(row.table.name.rpartition("/")[2], row.row, label,
                    to_uint8_chw(open_image(row), 3).permute(1, 2, 0).numpy()) for row, label in part.samples]
            for name, part in splits.parts.items()}


def assert_served(splits, rows):
    """The splits hold every served row once, with its label and its pixels."""
    seen = []
    for name, samples in read_rows(splits).items():
        for source, row, label, pixels in samples:
            assert source == ("test" if name == "test" else "train"), (name, source)
            want, want_label = rows[source][row]
            assert label == want_label and np.array_equal(pixels, want), (name, source, row)
            seen.append((source, row))
    assert sorted(seen) == sorted((s, i) for s in rows for i in range(len(rows[s])))


@pytest.fixture
def served(fake_dataset_hub, repo):
    fake_dataset_hub.add("owner/cifarlike", repo[0])
    return fake_dataset_hub


# --------------------------------------------------------------------------------------------------------------
# The splits


def test_a_hub_name_gives_the_classlabels_names_and_the_served_pixels(served, repo):
    splits = open_splits("hf:owner/cifarlike", val_fraction=0.25)
    assert splits.classes == CLASSES and splits.channels == 3
    assert splits.rule == "hf:owner/cifarlike splits train as train, test as test; validation: 25% of each " \
                          "class of train (split_seed 0)"
    assert {k: len(v) for k, v in splits.parts.items()} == {"train": 12, "val": 6, "test": 6}
    assert sorted(splits.parts["val"].targets) == [0, 0, 1, 1, 2, 2]  # 25 % of each class's 6, rounded up
    assert_served(splits, repo[1])
    commit = served.branches["owner/cifarlike"]["main"]
    for route in [("HEAD", "/datasets/owner/cifarlike/resolve/main/README.md"),
                  ("GET", f"/api/datasets/owner/cifarlike/revision/{commit}"),
                  ("GET", f"/api/datasets/owner/cifarlike/tree/{commit}/data?recursive=false&expand=false"),
                  ("HEAD", f"/datasets/owner/cifarlike/resolve/{commit}/data/train-00000-of-00001.parquet")]:
        assert route in served.requests
    blobs = [path for method, path in served.requests if path.startswith("/blobs/")]
    assert len(blobs) == 2 and served.unknown == []  # both Parquet files from the CDN; no route unanswered
    served.requests.clear()
    again = open_splits("hf:owner/cifarlike", val_fraction=0.25)  # online, built already: nothing downloaded
    assert again.split_file_text() == splits.split_file_text()
    assert served.requests and not [path for _, path in served.requests if "parquet" in path or "/blobs/" in path]


@pytest.mark.parametrize("how", ["offline", "unreachable"])
def test_a_cached_hub_name_opens_again_with_the_same_rows(served, repo, monkeypatch, how):
    """HF_DATASETS_OFFLINE=1 with the Hub gone: no request at all; online with a Hub that drops every
    connection: datasets falls back to the dataset it built."""
    first = open_splits("hf:owner/cifarlike", val_fraction=0.25)
    if how == "offline":
        go_offline(monkeypatch, served)
    else:
        served.drop = True
        served.requests.clear()
    again = open_splits("hf:owner/cifarlike", val_fraction=0.25)
    assert again.classes == CLASSES and again.rule == first.rule
    assert again.split_file_text() == first.split_file_text()
    assert [p.fingerprint for p in again.parts.values()] == [p.fingerprint for p in first.parts.values()]
    assert_served(again, repo[1])
    if how == "offline":
        assert served.requests == []


def test_a_repository_without_a_card_is_listed_page_by_page(fake_dataset_hub, repo):
    """No README.md: the commit comes from the dataset's info, the splits from the file names
    (data/train-..., data/test-...) and the class names from the features datasets recorded in the Parquet
    files; the tree arrives one entry a page."""
    files, rows = repo
    fake_dataset_hub.add("owner/bare", {k: v for k, v in files.items() if k != "README.md"})
    fake_dataset_hub.page_size = 1
    splits = open_splits("hf:owner/bare", val_fraction=0)
    assert splits.classes == CLASSES and set(splits.parts) == {"train", "test"}
    assert_served(splits, rows)
    assert ("GET", "/api/datasets/owner/bare") in fake_dataset_hub.requests
    assert any("/tree/" in path and "cursor=" in path for _, path in fake_dataset_hub.requests)
    assert fake_dataset_hub.unknown == []


def test_a_streamed_hub_name_reads_the_served_pixels(served, repo):
    splits = open_splits("hf:owner/cifarlike", val_fraction=0, streaming=True)
    assert splits.classes == CLASSES and {k: len(v) for k, v in splits.parts.items()} == {"train": 18, "test": 6}
    for name, part in splits.parts.items():
        got = [part.sample(example, name) for example in part.dataset]
        want = repo[1][name]
        assert [y for _, y in got] == [y for _, y in want]
        assert all(np.array_equal(to_uint8_chw(open_image(data), 3).permute(1, 2, 0).numpy(), pixels)
                   for (data, _), (pixels, _) in zip(got, want))
    assert served.unknown == []


# --------------------------------------------------------------------------------------------------------------
# One sentence each


def test_a_name_that_is_not_on_the_hub_is_one_sentence(fake_dataset_hub, tmp_path, capsys):
    with pytest.raises(DataError) as error:
        open_splits("hf:owner/missing")
    assert str(error.value) == (f"Hugging Face dataset owner/missing was not found at {fake_dataset_hub.url}: it "
                                "does not exist, or it is private or gated and no token with access was given "
                                "(huggingface-cli login)")
    capsys.readouterr()
    sets = TINY + ["data.dataset=hf:owner/missing", "data.workers=0", "train.epochs=1", f"out_dir={tmp_path / 'runs'}"]
    assert main(["train", *sets_args(sets)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(error.value) in err and "\n" not in err and "Traceback" not in err, err


@pytest.mark.parametrize("how", ["offline", "unreachable"])
def test_an_uncached_name_without_the_hub_is_one_sentence(fake_dataset_hub, repo, monkeypatch, how):
    fake_dataset_hub.add("owner/cifarlike", repo[0])
    if how == "offline":
        go_offline(monkeypatch, fake_dataset_hub)
        why = r"^hf:owner/cifarlike is not in the Hugging Face datasets cache \(.+\) and HF_DATASETS_OFFLINE or " \
              r"HF_HUB_OFFLINE is set; open it once online, or unset them$"
    else:
        fake_dataset_hub.drop = True
        why = rf"^cannot reach the Hugging Face Hub at {fake_dataset_hub.url} \(HF_ENDPOINT\) for hf:owner/cifarlike " \
              r"\(RemoteProtocolError: Server disconnected without sending a response.\), and it is not in the cache$"
    with pytest.raises(DataError, match=why):
        open_splits("hf:owner/cifarlike")
    if how == "offline":
        assert fake_dataset_hub.requests == []


# --------------------------------------------------------------------------------------------------------------
# vitkit train


def test_train_on_a_hub_name_then_eval_offline(served, tmp_path, monkeypatch, capsys):
    sets = TINY + ["data.dataset=hf:owner/cifarlike", "data.val_fraction=0.25", "data.workers=0", "train.epochs=1",
                   f"out_dir={tmp_path / 'runs'}", "name=run"]
    assert main(["train", *sets_args(sets)]) == 0
    assert "hf:owner/cifarlike" in capsys.readouterr().out
    run = tmp_path / "runs" / "run"
    split_file = (run / "split.csv").read_text()
    assert split_file.count("hf:owner/cifarlike/train[") == 18 and split_file.count("hf:owner/cifarlike/test[") == 6
    go_offline(monkeypatch, served)
    assert main(["eval", "--checkpoint", str(run / "checkpoints" / "best")]) == 0
    assert "val split: 6 images" in capsys.readouterr().out
    assert served.requests == []
