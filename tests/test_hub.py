"""vitkit.hub against a fake Hugging Face Hub on 127.0.0.1: huggingface_hub's real download code (HEAD for the
metadata, a redirect to a CDN for large files, its cache, revisions, offline mode) talks to a local server
that answers the way the Hub does, so every download, cache hit and error here is the real thing."""

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import pytest
import torch

import vitkit
from vitkit import VisionTransformer, hub
from vitkit.presets import PRESETS
from vitkit.errors import CheckpointError, ConfigError

LFS_SUFFIXES = (".safetensors", ".bin")  # stored in LFS on the Hub: served through a CDN redirect


class FakeHub:
    """The two routes hf_hub_download uses, as the Hub serves them.

    ``HEAD|GET /{org}/{name}/resolve/{revision}/{file}``: a small file answers 200 with its ``ETag`` (a git blob
    id) and ``X-Repo-Commit``; an LFS file (weights) answers 302 to the CDN -- a second server, so another
    origin, whose address huggingface_hub does not follow on HEAD -- with ``X-Linked-Etag`` (its sha256),
    ``X-Linked-Size`` and ``X-Repo-Commit``. An unknown repository, revision or file answers 404 with the Hub's
    ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound). A revision is a branch or a full commit
    id. With ``drop`` set, the Hub closes every connection without answering. Requests go to ``requests`` as
    (method, path)."""

    lfs_suffixes = LFS_SUFFIXES

    def __init__(self):
        self.branches: dict[str, dict[str, str]] = {}  # repo -> {branch: commit}
        self.commits: dict[str, dict[str, bytes]] = {}  # commit -> {filename: content}
        self.blobs: dict[str, bytes] = {}  # sha256 -> content (the CDN)
        self.requests: list[tuple[str, str]] = []
        self.drop = False
        self.hub = self._start(self._hub_route)
        self.cdn = self._start(self._cdn_route)
        self.url = f"http://127.0.0.1:{self.hub.server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self.cdn.server_address[1]}"

    def add(self, repo: str, files: dict[str, bytes], branch: str = "main") -> str:
        """Commit ``files`` as the whole content of ``repo`` at ``branch``; returns the commit id."""
        digest = hashlib.sha1(repo.encode())
        for name in sorted(files):
            digest.update(name.encode() + hashlib.sha1(files[name]).digest())
        commit = digest.hexdigest()  # 40 hex characters, like a git commit id
        self.commits[commit] = dict(files)
        self.branches.setdefault(repo, {})[branch] = commit
        return commit

    def file_requests(self) -> list[str]:
        """The paths of every GET (file content, from the Hub or the CDN)."""
        return [path for method, path in self.requests if method == "GET"]

    def close(self):
        for server in (self.hub, self.cdn):
            server.shutdown()
            server.server_close()

    # ----------------------------------------------------------------------------------------------------------

    def _start(self, route) -> ThreadingHTTPServer:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                fake.requests.append(("HEAD", self.path))
                route(self, body=False)

            def do_GET(self):
                fake.requests.append(("GET", self.path))
                route(self, body=True)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return server

    @staticmethod
    def _answer(handler, status: int, headers: dict, content: bytes = b"", body: bool = True):
        handler.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(content))}.items():
            handler.send_header(key, value)
        handler.end_headers()
        if body:
            handler.wfile.write(content)

    def _error(self, handler, code: str, body: bool, **headers):
        message = {"RepoNotFound": "Repository not found", "RevisionNotFound": "Invalid rev id",
                   "EntryNotFound": "Entry not found"}[code]
        self._answer(handler, 404, {"X-Error-Code": code, "X-Error-Message": message, **headers,
                                    "Content-Type": "application/json"},
                     json.dumps({"error": message}).encode(), body)

    def _hub_route(self, handler, body: bool):
        if self.drop:
            handler.close_connection = True  # no status line: the client sees the connection drop
            return
        parts = unquote(urlsplit(handler.path).path).split("/")  # '', org, name, 'resolve', revision, file...
        if len(parts) < 6 or parts[3] != "resolve":
            return self._answer(handler, 404, {}, b"Not Found", body)
        repo, revision, filename = f"{parts[1]}/{parts[2]}", parts[4], "/".join(parts[5:])
        if repo not in self.branches:
            return self._error(handler, "RepoNotFound", body)
        commit = self.branches[repo].get(revision, revision)
        if commit not in self.commits or commit not in self.branches[repo].values():
            return self._error(handler, "RevisionNotFound", body)
        self._serve(handler, commit, filename, body)

    def _serve(self, handler, commit: str, filename: str, body: bool):
        """One file of a commit: 404 EntryNotFound, a CDN redirect for an LFS file, else its content."""
        files = self.commits[commit]
        if filename not in files:
            return self._error(handler, "EntryNotFound", body, **{"X-Repo-Commit": commit})
        content = files[filename]
        if filename.endswith(self.lfs_suffixes):
            sha256 = hashlib.sha256(content).hexdigest()
            self.blobs[sha256] = content
            return self._answer(handler, 302, {
                "Location": f"{self.cdn_url}/blobs/{sha256}", "X-Repo-Commit": commit,
                "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(content)),
                "ETag": f'"{hashlib.sha1(sha256.encode()).hexdigest()}"'}, b"", body)
        etag = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()  # git's blob id
        self._content(handler, {"ETag": f'"{etag}"', "X-Repo-Commit": commit}, content, body)

    def _content(self, handler, headers: dict, content: bytes, body: bool):
        self._answer(handler, 200, headers, content, body)

    def _cdn_route(self, handler, body: bool):
        sha256 = handler.path.rpartition("/")[2]
        if sha256 not in self.blobs:
            return self._answer(handler, 404, {}, b"NoSuchKey", body)
        self._answer(handler, 200, {"Content-Type": "application/octet-stream"}, self.blobs[sha256], body)


# --------------------------------------------------------------------------------------------------------------
# Served models


def _timm_repo_files(tmp_path_factory, num_classes: int) -> tuple[torch.nn.Module, dict[str, bytes]]:
    """A small timm ViT and its Hub files as timm writes them: model.safetensors, pytorch_model.bin, config.json."""
    import timm
    from timm.models._hub import save_for_hf
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=num_classes).eval()
    folder = tmp_path_factory.mktemp("timm")
    save_for_hf(model, str(folder), safe_serialization="both")
    return model, {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture(scope="module")
def timm_repo(tmp_path_factory):
    return _timm_repo_files(tmp_path_factory, num_classes=10)


@pytest.fixture(scope="module")
def hf_repo(tmp_path_factory):
    """A small transformers ViTForImageClassification and its Hub files (config.json, model.safetensors)."""
    from transformers import ViTConfig, ViTForImageClassification
    model = ViTForImageClassification(ViTConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32,
        patch_size=8, num_labels=5)).eval()
    folder = tmp_path_factory.mktemp("hf")
    model.save_pretrained(folder)
    return model, {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """A fake Hub at HF_ENDPOINT, and huggingface_hub's default cache in tmp_path (never the user's)."""
    from huggingface_hub import constants
    server = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield server
    server.close()


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


# --------------------------------------------------------------------------------------------------------------
# Names


def test_parse_name_splits_timm_tags_and_hub_revisions():
    assert hub.parse_name("vit_small_patch16_224.augreg_in21k") == ("vit_small_patch16_224", "augreg_in21k")
    assert hub.parse_name("vit_small_patch16_224") == ("vit_small_patch16_224", None)
    assert hub.parse_name("hf-hub:org/name") == ("hf-hub:org/name", None)
    assert hub.parse_name("hf-hub:timm/vit_tiny_patch16_224.augreg_in21k@v1.0") == \
        ("hf-hub:timm/vit_tiny_patch16_224.augreg_in21k", "v1.0")
    assert hub.hub_repo("hf-hub:org/name@dev") == ("org/name", "dev")
    assert hub.hub_repo("vit_tiny_patch16_224.augreg_in21k") == ("timm/vit_tiny_patch16_224.augreg_in21k", None)
    for bad, match in [("vit_small_patch16_224.", "empty tag"), ("hf-hub:org/name@", "empty revision"),
                       ("hf-hub:", "names no repository"), ("hf-hub:a/b/c", "names no repository")]:
        with pytest.raises(ConfigError, match=match):
            hub.hub_repo(bad)


def test_pretrained_source_is_timms_repository_with_its_default_tag():
    assert hub.pretrained_source("vit_base_patch16_224") == "hf-hub:timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"
    assert hub.pretrained_source("vit_small_patch16_224.augreg_in21k") == \
        "hf-hub:timm/vit_small_patch16_224.augreg_in21k"
    assert hub.pretrained_source("hf-hub:org/name@v1") == "hf-hub:org/name@v1"
    with pytest.raises(ConfigError, match="timm has no pretrained weights for vit_giant_patch14_224; name a tag"):
        hub.pretrained_source("vit_giant_patch14_224")
    with pytest.raises(ConfigError, match="did you mean vit_base_patch16_224"):
        hub.pretrained_source("vit_base_patch16_244.augreg_in21k")


def test_default_tags_and_repositories_are_timms():
    """For every preset: the tag timm loads without one (none when timm has no weights), and for every tagged
    name of a preset the Hub repository timm downloads it from."""
    import timm
    from timm.models import get_pretrained_cfg
    for name in PRESETS:
        cfg = get_pretrained_cfg(name)
        want = cfg.tag if cfg is not None and cfg.hf_hub_id else None
        assert hub.default_tag(name) == want, name
    for tagged in timm.list_pretrained():
        if tagged.partition(".")[0] in PRESETS:
            assert hub.hub_repo(tagged) == (get_pretrained_cfg(tagged).hf_hub_id, None), tagged


# --------------------------------------------------------------------------------------------------------------
# Downloads


def test_download_by_hub_name_and_by_tagged_timm_name(fake_hub, timm_repo, tmp_path):
    _, files = timm_repo
    fake_hub.add("org/tiny-vit", files)
    fake_hub.add("timm/vit_tiny_patch16_224.augreg_in21k", files)
    folder = hub.download("hf-hub:org/tiny-vit", cache_dir=tmp_path / "cache")
    assert _files(folder) == {"model.safetensors": files["model.safetensors"], "config.json": files["config.json"]}
    folder = hub.download("vit_tiny_patch16_224.augreg_in21k", cache_dir=tmp_path / "cache")
    assert _files(folder) == {"model.safetensors": files["model.safetensors"], "config.json": files["config.json"]}
    assert ("HEAD", "/timm/vit_tiny_patch16_224.augreg_in21k/resolve/main/model.safetensors") in fake_hub.requests


def test_download_a_revision_by_name_by_argument_and_by_commit(fake_hub, timm_repo, tmp_path):
    _, files = timm_repo
    main = fake_hub.add("org/tiny-vit", files)
    v1_files = {**files, "config.json": b'{"architecture": "vit_tiny_patch16_224", "num_classes": 10}'}
    v1 = fake_hub.add("org/tiny-vit", v1_files, branch="v1")
    cache = tmp_path / "cache"
    assert hub.download("hf-hub:org/tiny-vit", cache_dir=cache).name == main
    for folder in (hub.download("hf-hub:org/tiny-vit@v1", cache_dir=cache),
                   hub.download("hf-hub:org/tiny-vit", revision="v1", cache_dir=cache),
                   hub.download("hf-hub:org/tiny-vit@main", revision=v1, cache_dir=cache)):  # the argument wins
        assert folder.name == v1 and (folder / "config.json").read_bytes() == v1_files["config.json"]
    with pytest.raises(CheckpointError, match=r"^revision 'v2' does not exist in Hugging Face repository "
                                              r"org/tiny-vit$"):
        hub.download("hf-hub:org/tiny-vit@v2", cache_dir=cache)


def test_second_download_comes_from_the_cache(fake_hub, timm_repo, tmp_path):
    _, files = timm_repo
    commit = fake_hub.add("org/tiny-vit", files)
    first = hub.download("hf-hub:org/tiny-vit", cache_dir=tmp_path)
    weights_blob = f"/blobs/{hashlib.sha256(files['model.safetensors']).hexdigest()}"  # from the CDN
    assert sorted(fake_hub.file_requests()) == [weights_blob, f"/org/tiny-vit/resolve/{commit}/config.json"]
    fake_hub.requests.clear()
    assert hub.download("hf-hub:org/tiny-vit", cache_dir=tmp_path) == first
    assert fake_hub.file_requests() == []  # a branch is checked with one HEAD, the files are not fetched again
    assert fake_hub.requests == [("HEAD", "/org/tiny-vit/resolve/main/model.safetensors")]
    fake_hub.requests.clear()
    assert hub.download("hf-hub:org/tiny-vit", revision=commit, cache_dir=tmp_path) == first
    assert fake_hub.requests == []  # a commit cannot change: no request at all


def test_offline_mode_reads_the_cache_and_says_so_when_it_is_empty(fake_hub, timm_repo, tmp_path, monkeypatch):
    _, files = timm_repo
    fake_hub.add("org/tiny-vit", files)
    folder = hub.download("hf-hub:org/tiny-vit", cache_dir=tmp_path)
    fake_hub.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.download("hf-hub:org/tiny-vit", cache_dir=tmp_path) == folder
    assert fake_hub.requests == []
    with pytest.raises(CheckpointError, match=r"^Hugging Face repository org/other is not in the cache and "
                                              r"HF_HUB_OFFLINE is set; download it once online, or unset "
                                              r"HF_HUB_OFFLINE$"):
        hub.download("hf-hub:org/other", cache_dir=tmp_path)
    assert fake_hub.requests == []


def test_missing_repository_and_repository_without_weights_are_one_sentence(fake_hub, tmp_path):
    fake_hub.add("org/readme-only", {"README.md": b"# nothing here"})
    with pytest.raises(CheckpointError, match=rf"^Hugging Face repository org/missing was not found at "
                                              rf"{fake_hub.url}: it does not exist, or it is private or gated "
                                              r"and no token with access was given$"):
        hub.download("hf-hub:org/missing", cache_dir=tmp_path)
    with pytest.raises(CheckpointError, match=r"^Hugging Face repository org/readme-only has no weights file; "
                                              r"expected one of model.safetensors, open_clip_model.safetensors, "
                                              r"pytorch_model.bin, open_clip_pytorch_model.bin$"):
        hub.download("hf-hub:org/readme-only", cache_dir=tmp_path)


def test_dropped_connection_is_one_sentence_naming_the_endpoint(fake_hub, tmp_path):
    fake_hub.add("org/tiny-vit", {"model.safetensors": b"x"})
    fake_hub.drop = True
    with pytest.raises(CheckpointError, match=rf"^cannot download org/tiny-vit from the Hugging Face Hub at "
                                              rf"{fake_hub.url} \(HF_ENDPOINT\): RemoteProtocolError \("):
        hub.download("hf-hub:org/tiny-vit", cache_dir=tmp_path)


def test_refused_connection_is_one_sentence_naming_the_endpoint(fake_hub, tmp_path, monkeypatch, capfd):
    from huggingface_hub.utils import _http
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(_http.time, "sleep", lambda seconds: None)  # its back-off would wait 23 s in all
    with pytest.raises(CheckpointError) as error:
        hub.download("hf-hub:org/tiny-vit", cache_dir=tmp_path)
    message = str(error.value)
    assert message.startswith(f"cannot download org/tiny-vit from the Hugging Face Hub at {url} (HF_ENDPOINT): "
                              "ConnectError (") and message.endswith(", and it is not in the cache")
    assert "\n" not in message
    assert "Retry" not in capfd.readouterr().err  # huggingface_hub's retry warnings are not shown


@pytest.mark.parametrize("present, fetched", [
    (["model.safetensors", "pytorch_model.bin", "config.json"], ["config.json", "model.safetensors"]),
    (["pytorch_model.bin", "config.json"], ["config.json", "pytorch_model.bin"]),
    (["open_clip_pytorch_model.bin", "open_clip_model.safetensors", "open_clip_config.json"],
     ["open_clip_config.json", "open_clip_model.safetensors"]),
    (["open_clip_pytorch_model.bin"], ["open_clip_pytorch_model.bin"]),
])
def test_safetensors_first_and_only_one_weights_file(fake_hub, tmp_path, present, fetched):
    fake_hub.add("org/vit", {name: name.encode() * 3 for name in present})
    folder = hub.download("hf-hub:org/vit", cache_dir=tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == fetched
    fetched_files = {path.rpartition("/")[2] for _, path in fake_hub.requests if "/resolve/" in path}
    assert not {name for name in present if name not in fetched} & fetched_files  # never even asked about


# --------------------------------------------------------------------------------------------------------------
# Into the model


def test_resolve_passes_local_sources_through(fake_hub, timm_repo, tmp_path, monkeypatch):
    model, files = timm_repo
    state = model.state_dict()
    for src in (state, model, tmp_path / "x.safetensors", "runs/x/checkpoints/best", "vit_tiny_patch16_224.pth"):
        assert hub.resolve(src) is src
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vit_tiny_patch16_224.augreg_in21k").mkdir()  # a local folder of that name wins
    assert hub.resolve("vit_tiny_patch16_224.augreg_in21k") == "vit_tiny_patch16_224.augreg_in21k"
    fake_hub.add("timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k", files)  # the default tag
    folder = hub.resolve("vit_tiny_patch16_224")  # no cache_dir: huggingface_hub's, here under tmp_path
    assert folder.is_relative_to(tmp_path / "hf_home" / "hub") and (folder / "model.safetensors").is_file()


def test_downloaded_hugging_face_folder_loads_with_the_same_logits(fake_hub, hf_repo):
    model, files = hf_repo
    fake_hub.add("org/hf-vit", files)
    ours = VisionTransformer.from_pretrained(hub.resolve("hf-hub:org/hf-vit"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (ours(x) - model(x).logits).abs().max() <= 1e-5


def test_downloaded_timm_weights_load_with_the_same_logits(fake_hub, timm_repo):
    model, files = timm_repo
    fake_hub.add("timm/vit_tiny_patch16_224.augreg_in21k", files)
    folder = hub.resolve("vit_tiny_patch16_224.augreg_in21k")
    ours = VisionTransformer.from_pretrained(folder / "model.safetensors")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), model(x))


def test_downloaded_timm_folder_loads_with_the_same_logits(fake_hub, timm_repo):
    model, files = timm_repo
    fake_hub.add("timm/vit_tiny_patch16_224.augreg_in21k", files)
    ours = VisionTransformer.from_pretrained(hub.resolve("vit_tiny_patch16_224.augreg_in21k"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), model(x))


# --------------------------------------------------------------------------------------------------------------
# create_model(name, pretrained=True)


def test_create_model_pretrained_by_tagged_and_untagged_timm_name(fake_hub, timm_repo):
    """timm's create_model(name, pretrained=True): the tag's repository, or timm's default tag for the name;
    the architecture comes from the preset plus the overrides, as in timm."""
    model, files = timm_repo
    fake_hub.add("timm/vit_tiny_patch16_224.augreg_in21k", files)
    fake_hub.add("timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k", files)
    x = torch.randn(2, 3, 32, 32)
    for name in ("vit_tiny_patch16_224.augreg_in21k", "vit_tiny_patch16_224"):
        ours = vitkit.create_model(name, pretrained=True, depth=2, img_size=32)
        assert not ours.training
        with torch.no_grad():
            assert torch.equal(ours(x), model(x))
    fetched = [p for p in fake_hub.file_requests() if "resolve" in p]
    assert any("augreg_in21k_ft_in1k" in p for p in fetched)


def test_create_model_pretrained_with_new_classes_keeps_the_trunk(fake_hub, timm_repo):
    model, files = timm_repo
    fake_hub.add("timm/vit_tiny_patch16_224.augreg_in21k", files)
    with pytest.warns(UserWarning, match="head"):
        ours = vitkit.create_model("vit_tiny_patch16_224.augreg_in21k", pretrained=True, depth=2, img_size=32,
                                   num_classes=3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert ours(x).shape == (2, 3)
        assert torch.equal(ours.forward_features(x), model.forward_features(x))


def test_create_model_pretrained_from_a_hub_repository(fake_hub, hf_repo):
    model, files = hf_repo
    fake_hub.add("org/hf-vit", files)
    ours = vitkit.create_model("hf-hub:org/hf-vit", pretrained=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (ours(x) - model(x).logits).abs().max() <= 1e-5
    with pytest.raises(ConfigError, match="names weights on the Hub, not an architecture; pass pretrained=True"):
        vitkit.create_model("hf-hub:org/hf-vit")


def test_create_model_without_pretrained_reads_no_hub(fake_hub):
    model = vitkit.create_model("vit_tiny_patch16_224.augreg_in21k", depth=1, img_size=32)
    assert len(model.blocks) == 1 and fake_hub.requests == []


def test_from_pretrained_by_timm_name_builds_the_names_architecture(fake_hub, tmp_path_factory):
    """timm's Hub repository of OpenAI's CLIP says 'vit_base_patch16_clip_224' (GELU) in its config.json;
    the QuickGELU name loads those files with QuickGELU, as timm's create_model does, in from_pretrained and
    create_model alike."""
    import timm
    from timm.models._hub import save_for_hf
    small = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=0)
    reference = timm.create_model("vit_base_patch16_clip_quickgelu_224", **small).eval()
    folder = tmp_path_factory.mktemp("openai")
    save_for_hf(reference, str(folder), safe_serialization=True)
    config = json.loads((folder / "config.json").read_text())
    config["architecture"] = "vit_base_patch16_clip_224"  # as on the Hub
    (folder / "config.json").write_text(json.dumps(config))
    fake_hub.add("timm/vit_base_patch16_clip_224.openai", _files(folder))
    x = torch.randn(2, 3, 32, 32)
    name = "vit_base_patch16_clip_quickgelu_224.openai"
    for ours in (VisionTransformer.from_pretrained(name, **small), vitkit.create_model(name, pretrained=True, **small)):
        assert ours.config.act == "quick_gelu"
        with torch.no_grad():
            assert (ours(x) - reference(x)).abs().max() <= 1e-5


def test_predict_reads_a_hub_name(fake_hub, hf_repo, tmp_path, capsys):
    """`vitkit predict --checkpoint hf-hub:org/name`: the downloaded model's probabilities, with the family's
    preprocessing (Google's ViT: mean and std 0.5) since the folder has no preprocessor config."""
    from PIL import Image
    from vitkit.cli import main
    from vitkit.predictor import Predictor
    model, files = hf_repo
    fake_hub.add("org/hf-vit", files)
    image = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    predictor = Predictor.load("hf-hub:org/hf-vit")
    assert predictor.preprocess.mean == (0.5, 0.5, 0.5) and predictor.preprocess.img_size == (32, 32)
    batch = predictor.inputs([image])
    with torch.no_grad():
        expected = model(batch).logits.softmax(dim=1)
    assert (predictor.probabilities(batch) - expected).abs().max() <= 1e-6
    capsys.readouterr()
    assert main(["predict", str(image), "--checkpoint", "hf-hub:org/hf-vit", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["top_k"][0]["class"] == str(int(expected.argmax()))


def test_train_fine_tunes_from_a_hub_name(fake_hub, hf_repo, tmp_path, monkeypatch):
    """`vitkit train --set model.init=hf-hub:org/name`: the run starts from the downloaded weights."""
    from safetensors.torch import load_file
    from test_train_imagefolder import make_layout
    from vitkit.cli import main
    model, files = hf_repo
    fake_hub.add("org/hf-vit", files)
    make_layout(tmp_path / "images", "split")
    monkeypatch.chdir(tmp_path)
    sets = ["model.init=hf-hub:org/hf-vit", f"data.dataset=imagefolder:{tmp_path / 'images'}", "data.img_size=32",
            "data.batch_size=4", "data.workers=0", "data.mean=[0.5, 0.5, 0.5]", "data.std=[0.5, 0.5, 0.5]",
            "optim.lr=1e-9", "optim.min_lr=0", "optim.warmup_epochs=0", "train.epochs=1", "report=false",
            "device=cpu", "name=ft"]
    with pytest.warns(UserWarning, match="new 3-class head"):
        assert main(["train", "--config", "finetune-clip", "--set", *sets, "optim.head_warmup_epochs=0"]) == 0
    tuned = load_file(str(tmp_path / "runs" / "ft" / "checkpoints" / "last.safetensors"))
    reference = VisionTransformer.from_pretrained(model)
    for key, value in reference.state_dict().items():
        if not key.startswith("head."):  # lr 1e-9: the trunk is the downloaded one
            torch.testing.assert_close(tuned[key], value, rtol=0, atol=1e-6)


def test_predict_reads_a_dinov3_hub_folder_with_its_rotary_embedding(fake_hub, tmp_path):
    """`vitkit predict --checkpoint hf-hub:timm/vit_small_patch16_dinov3.lvd1689m --features`: timm's Hub folder
    (config.json naming the architecture and its arguments, model.safetensors holding nothing of the rotation)
    loads as the DINOv3 it is, and the embedding equals timm's own, preprocessed as timm's data config says."""
    import timm
    from PIL import Image
    from safetensors.torch import load_file
    from timm.models._hub import save_for_hf

    from test_interop_timm_families import strong
    from vitkit.cli import main
    from vitkit.predictor import Predictor
    torch.manual_seed(0)
    args = dict(depth=2, embed_dim=64, num_heads=2, img_size=32, dynamic_img_size=True)
    ref = strong(timm.create_model("vit_small_patch16_dinov3", **args)).eval()
    folder = tmp_path / "repo"
    save_for_hf(ref, str(folder), model_args=args)
    fake_hub.add("timm/vit_small_patch16_dinov3.lvd1689m", _files(folder))
    image, out = tmp_path / "photo.png", tmp_path / "features.safetensors"
    Image.fromarray((torch.rand(45, 60, 3) * 255).byte().numpy()).save(image)
    assert main(["predict", str(image), "--checkpoint", "hf-hub:timm/vit_small_patch16_dinov3.lvd1689m",
                 "--features", str(out)]) == 0
    got = load_file(out)["features"]
    batch = Predictor.load("hf-hub:timm/vit_small_patch16_dinov3.lvd1689m").inputs([image])
    with torch.no_grad():
        want = ref.forward_head(ref.forward_features(batch), pre_logits=True)
    assert got.shape == want.shape == (1, 64) and (got - want).abs().max().item() <= 1e-5
    # the input is timm's data config's (ImageNet statistics, bicubic, the whole short side), to one grey level
    transform = timm.data.create_transform(**timm.data.resolve_data_config({"input_size": (3, 32, 32)}, model=ref))
    theirs = transform(Image.open(image).convert("RGB"))[None]
    assert (batch - theirs).abs().max().item() <= 1.01 / 255 / 0.224 and (batch - theirs).abs().mean() < 1e-3
    model = VisionTransformer.from_pretrained("hf-hub:timm/vit_small_patch16_dinov3.lvd1689m")
    assert model.config.rope == "dinov3" and model.config.reg_tokens == 4 and model.config.pool == "mean"
    assert model.pretrained_preprocess["mean"] == (0.485, 0.456, 0.406)


def test_a_hugging_face_folder_without_a_preprocessor_config_gets_the_image_processors_defaults(hf_repo, tmp_path):
    """No preprocessor_config.json: what transformers' ViTImageProcessor does by default (squash to the size,
    bilinear, mean and std 0.5), with a warning that says it was assumed; the embedding then equals the HF
    pipeline's for the same file."""
    from PIL import Image
    from transformers import ViTImageProcessor
    from vitkit.predictor import Predictor
    model, files = hf_repo
    folder = tmp_path / "hf"
    folder.mkdir()
    for name, content in files.items():
        (folder / name).write_bytes(content)
    assert not (folder / "preprocessor_config.json").exists()
    image = tmp_path / "wide.png"
    Image.fromarray((torch.rand(30, 70, 3) * 255).byte().numpy()).save(image)
    with pytest.warns(UserWarning, match=r"does not say how its images were prepared; assuming ViT "
                                         r"\(ViTImageProcessor's defaults\)'s \(mean \(0.5, 0.5, 0.5\)"):
        predictor = Predictor.load(folder)
    ours = predictor.inputs([image])
    theirs = ViTImageProcessor(size={"height": 32, "width": 32})(Image.open(image), return_tensors="pt")
    assert (ours - theirs["pixel_values"]).abs().max().item() <= 1e-5
    with torch.no_grad():
        want = model(theirs["pixel_values"]).logits.softmax(dim=1)
    assert (predictor.probabilities(ours) - want).abs().max().item() <= 1e-5
