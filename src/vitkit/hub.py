"""Pretrained weights from the Hugging Face Hub, named two ways: ``hf-hub:org/name[@revision]``, and timm's
names with a pretrained tag (``vit_small_patch16_224.augreg_in21k``), whose weights live in the Hub repository
``timm/vit_small_patch16_224.augreg_in21k``.

:func:`download` fetches one weights file (safetensors before pickles) and the config beside it through
``huggingface_hub`` -- its cache, revisions, ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` -- and returns the local
folder that holds them. :func:`resolve` is what the model calls before it reads weights: a Hub name becomes
that folder, anything else passes through. Nothing here reads the files: interop does, and a ``.bin`` is only
ever opened by its ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
from pathlib import Path
from typing import Any

from .presets import PRESETS, get_preset
from .errors import CheckpointError, ConfigError

HUB_PREFIX = "hf-hub:"
_FILE_SUFFIXES = {"safetensors", "pth", "pt", "bin", "npz"}  # a name ending so is a file, not a tag

# The weights files looked for, in order of preference (safetensors first: a pickle is the last resort), each
# with the config file that describes it.
WEIGHTS = (("model.safetensors", "config.json"),
           ("open_clip_model.safetensors", "open_clip_config.json"),
           ("pytorch_model.bin", "config.json"),
           ("open_clip_pytorch_model.bin", "open_clip_config.json"))

# The tag timm loads for an untagged name (`timm.create_model(name, pretrained=True)`): the first pretrained
# config of each architecture in timm's `default_cfgs` (timm/models/vision_transformer.py, beit.py, deit.py),
# for the vitkit presets timm has weights for (a shell pattern stands for a family with one tag throughout).
# tests/test_hub.py checks it against timm.models.get_pretrained_cfg for every preset.
DEFAULT_TAGS = {
    "vit_small_patch8_224": "dino",
    "vit_base_patch8_224": "augreg2_in21k_ft_in1k",
    "vit_base_patch16_224": "augreg2_in21k_ft_in1k",
    "vit_large_patch32_224": "orig_in21k",
    "vit_large_patch32_384": "orig_in21k_ft_in1k",
    "vit_huge_patch14_224": "orig_in21k",
    **dict.fromkeys(["vit_tiny_patch16_224", "vit_tiny_patch16_384", "vit_small_patch16_224",
                     "vit_small_patch16_384", "vit_small_patch32_224", "vit_small_patch32_384",
                     "vit_base_patch16_384", "vit_base_patch32_224", "vit_base_patch32_384",
                     "vit_large_patch16_224", "vit_large_patch16_384"], "augreg_in21k_ft_in1k"),
    # CLIP image towers: each architecture has its own first weights
    "vit_xsmall_patch16_clip_224": "tinyclip_yfcc15m",
    "vit_medium_patch16_clip_224": "tinyclip_yfcc15m",
    "vit_medium_patch32_clip_224": "tinyclip_laion400m",
    "vit_betwixt_patch32_clip_224": "tinyclip_laion400m",
    "vit_base_patch32_clip_256": "datacompxl",
    "vit_base_patch16_plus_clip_240": "laion400m_e32",
    "vit_huge_patch14_clip_378": "dfn5b",
    "vit_giant_patch14_clip_224": "laion2b",
    "vit_gigantic_patch14_clip_224": "laion2b",
    "vit_gigantic_patch14_clip_378": "metaclip2_worldwide",
    "vit_base_patch32_clip_quickgelu_224": "laion400m_e32",
    "vit_base_patch16_clip_quickgelu_224": "metaclip_2pt5b",
    "vit_large_patch14_clip_quickgelu_224": "dfn2b",
    "vit_large_patch14_clip_quickgelu_336": "openai",
    "vit_huge_patch14_clip_quickgelu_224": "dfn5b",
    "vit_huge_patch14_clip_quickgelu_378": "dfn5b",
    "vit_gigantic_patch14_clip_quickgelu_224": "metaclip_2pt5b",
    **dict.fromkeys(["vit_base_patch32_clip_224", "vit_base_patch32_clip_384", "vit_base_patch32_clip_448",
                     "vit_base_patch16_clip_224", "vit_base_patch16_clip_384", "vit_large_patch14_clip_224",
                     "vit_large_patch14_clip_336", "vit_huge_patch14_clip_224", "vit_huge_patch14_clip_336"],
                    "laion2b_ft_in12k_in1k"),
    # families with one tag throughout
    "vit_*_siglip_*": "v2_webli",
    "vit_*_dinov2": "lvd142m",
    "deit_*": "fb_in1k",
    "beit_*": "in22k_ft_in22k_in1k",
    "beitv2_*": "in1k_ft_in22k_in1k",
    # the rotary families
    "vit_tiny_patch16_dinov3_qkvb": "eupe_lvd1689m",
    "vit_*_dinov3*": "lvd1689m",
    "vit_*_lingbot": "robbyant",
    "vit_pe_*": "fb",
    "eva02_*_clip_*": "merged2b",
    "eva02_*_224": "mim_in22k",
    "eva02_*_336": "mim_in22k_ft_in1k",
    "eva02_*_448": "mim_in22k_ft_in22k_in1k",
    "eva_giant_patch14_clip_224": "laion400m",
    "eva_giant_patch14_560": "m30m_ft_in22k_in1k",
    "eva_giant_*": "clip_ft_in1k",
    "eva_large_*": "in22k_ft_in22k_in1k",
    "vit_*_rope*_224": "naver_in1k",
    "vit_*_rope_reg*_gap_256": "sbb_in1k",
    "aimv2_*": "apple_pt",
    "vit_*_tipsv2": "webli",
}


# Architectures whose weights timm reads from another organisation than its own
HUB_ORGS = dict.fromkeys(["vit_small_patch16_lingbot", "vit_base_patch16_lingbot", "vit_large_patch16_lingbot",
                          "vit_giant_patch16_lingbot"], "belfner")


# --------------------------------------------------------------------------------------------------------------
# Names


def parse_name(name: str) -> tuple[str, str | None]:
    """Split a name at its qualifier: timm's ``arch.tag`` -> ``(arch, tag)``, ``arch`` -> ``(arch, None)``,
    and ``hf-hub:org/name@revision`` -> ``("hf-hub:org/name", revision)`` (``None`` without ``@``)."""
    if name.startswith(HUB_PREFIX):
        source, _, revision = name.partition("@")
        if "@" in name and not revision:
            raise ConfigError(f"Hub source {name!r} has an empty revision; expected hf-hub:org/name@revision")
        return source, revision or None
    arch, dot, tag = name.partition(".")
    if dot and not tag:
        raise ConfigError(f"model name {name!r} has an empty tag; expected architecture.tag, e.g. "
                          "vit_small_patch16_224.augreg_in21k")
    return arch, tag or None


def hub_repo(source: str) -> tuple[str, str | None]:
    """The Hub repository and revision of a source: ``hf-hub:org/name@rev`` -> ``("org/name", "rev")``; a timm
    name -> ``("timm/arch.tag", None)``, with the tag timm loads by default when the name has none."""
    base, qualifier = parse_name(source)
    if base.startswith(HUB_PREFIX):
        repo = base[len(HUB_PREFIX):]
        if not repo or repo.startswith("/") or repo.endswith("/") or repo.count("/") > 1:
            raise ConfigError(f"Hub source {source!r} names no repository; expected hf-hub:org/name[@revision]")
        return repo, qualifier
    get_preset(base)  # an unknown architecture is one sentence, with "did you mean"
    tag = qualifier or default_tag(base)
    if tag is None:
        raise ConfigError(f"timm has no pretrained weights for {base}; name a tag ({base}.TAG) or a Hub "
                          "repository (hf-hub:org/name)")
    # timm's QuickGELU CLIP architectures load the weights of their GELU-named twins
    org = HUB_ORGS.get(base, "timm")
    return f"{org}/{base.replace('_clip_quickgelu_', '_clip_')}.{tag}", None


def default_tag(arch: str) -> str | None:
    """The pretrained tag timm loads for an untagged architecture name (:data:`DEFAULT_TAGS`); None if none."""
    return next((tag for pattern, tag in DEFAULT_TAGS.items() if fnmatch.fnmatchcase(arch, pattern)), None)


def pretrained_source(name: str) -> str:
    """The Hub source of the weights ``create_model(name, pretrained=True)`` loads: ``hf-hub:timm/arch.tag`` for
    a timm name (timm's default tag when none is given); an ``hf-hub:`` source is returned as it is."""
    if name.startswith(HUB_PREFIX):
        hub_repo(name)  # checked now rather than at download time
        return name
    return HUB_PREFIX + hub_repo(name)[0]


def is_hub_source(src: Any) -> bool:
    """Whether ``src`` names Hub weights: an ``hf-hub:`` string, or a vitkit preset name (tagged or not) that is
    not a local path. A file or folder of the same name wins, so local weights are never shadowed, and a
    missing ``vit_base_patch16_224.pth`` stays a missing file rather than a Hub repository."""
    if not isinstance(src, str):
        return False
    if src.startswith(HUB_PREFIX):
        return True
    arch, _, tag = src.partition(".")
    return arch in PRESETS and tag not in _FILE_SUFFIXES and not Path(src).exists()


def named_architecture(src: Any) -> dict:
    """The ViTConfig fields a timm name fixes, as timm's ``create_model`` builds it: its preset without
    ``num_classes`` (the weights say that). ``{}`` for anything that is not a timm name (``hf-hub:`` sources,
    files, folders, state dicts), whose architecture the weights alone describe."""
    if not is_hub_source(src) or src.startswith(HUB_PREFIX):
        return {}
    return {k: v for k, v in PRESETS[parse_name(src)[0]].items() if k != "num_classes"}


def resolve(src: Any) -> Any:
    """What to read weights from: the downloaded folder for a Hub name (see :func:`is_hub_source`), ``src``
    unchanged for anything else (a file, a folder, a state dict, a live model)."""
    return download(src) if is_hub_source(src) else src


# --------------------------------------------------------------------------------------------------------------
# Download


def download(source: str, *, revision: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """The local folder holding the weights of a Hub source and their config, downloaded if not cached.

    ``source``: ``hf-hub:org/name[@revision]`` or a timm name (``vit_small_patch16_224.augreg_in21k``; untagged,
    timm's default tag). ``revision`` (a branch, tag or commit) wins over one in the name. The files go to
    ``cache_dir``, else huggingface_hub's cache (``HF_HOME`` / ``HF_HUB_CACHE``). The first weights file of
    :data:`WEIGHTS` the repository has is fetched, with its config when there is one. ``HF_ENDPOINT`` and
    ``HF_HUB_OFFLINE`` are read at each call: offline, only the cache is looked at. Every failure is one
    :class:`CheckpointError` sentence: no such repository or revision, no weights file, offline with nothing
    cached, or the Hub unreachable.
    """
    from huggingface_hub import constants

    repo, named_revision = hub_repo(source)
    revision = revision or named_revision
    endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    where = f"{repo}@{revision}" if revision else repo
    fetch = dict(repo=repo, where=where, cache_dir=cache_dir, endpoint=endpoint, offline=offline)
    for weights, config in WEIGHTS:
        path = _fetch(weights, revision, **fetch)
        if path is not None:
            folder = path.parent  # snapshots/<commit>/: the config is taken from that same commit
            _fetch(config, folder.name, **fetch)
            return folder
    names = ", ".join(w for w, _ in WEIGHTS)
    if offline:
        raise CheckpointError(f"Hugging Face repository {where} is not in the cache and HF_HUB_OFFLINE is set; "
                              "download it once online, or unset HF_HUB_OFFLINE")
    raise CheckpointError(f"Hugging Face repository {where} has no weights file; expected one of {names}")


def _fetch(filename: str, revision: str | None, *, repo: str, where: str, cache_dir, endpoint: str,
           offline: bool) -> Path | None:
    """The cached path of one file of the repository (downloaded if need be), or None if the repository does not
    have it (offline: if the cache does not). Other failures are one CheckpointError sentence."""
    import httpx2
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (HfHubHTTPError, HFValidationError, LocalEntryNotFoundError,
                                        RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)

    try:
        with _quiet_retries():
            return Path(hf_hub_download(repo, filename, revision=revision, cache_dir=cache_dir, endpoint=endpoint,
                                        local_files_only=offline))
    except RemoteEntryNotFoundError:
        return None
    except HFValidationError:
        raise ConfigError(f"{repo!r} is not a valid Hugging Face repository name; expected org/name") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"revision {revision!r} does not exist in Hugging Face repository {repo}") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"Hugging Face repository {repo} was not found at {endpoint}: it does not exist, or "
                              "it is private or gated and no token with access was given") from None
    except LocalEntryNotFoundError as e:  # offline and not cached, or the Hub did not answer
        if offline:
            return None
        reason = _reason(e.__cause__) if e.__cause__ is not None else "it did not answer"
        raise CheckpointError(f"cannot download {where} from the Hugging Face Hub at {endpoint} (HF_ENDPOINT): "
                              f"{reason}, and it is not in the cache") from None
    except (HfHubHTTPError, httpx2.TransportError) as e:
        raise CheckpointError(f"cannot download {where} from the Hugging Face Hub at {endpoint} (HF_ENDPOINT): "
                              f"{_reason(e)}") from None


@contextlib.contextmanager
def _quiet_retries():
    """huggingface_hub logs a warning for every retry of a failed request; the failure that remains is said
    once, as a sentence, by the caller."""
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_logger.setLevel(level)


def _reason(error: BaseException) -> str:
    """A failed request in a few words: its HTTP status, or the network error's first line."""
    response = getattr(error, "response", None)
    if response is not None and getattr(response, "status_code", None):
        return f"HTTP {response.status_code}"
    text = str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else ""
    return f"{type(error).__name__} ({text})" if text else type(error).__name__
