"""How each model family's images were prepared in training, so a loaded model gets its input the same way:
mean, std, interpolation, crop_pct and crop_mode, in the names of :class:`vitkit.data.preprocess.Preprocess`
(the model's own size completes it). The values are timm's pretrained configs of the matching models
(:data:`FROM_TIMM` names which); a source's own description (``open_clip_config.json``, a Hugging Face
``preprocessor_config.json``, a live timm model's ``pretrained_cfg``) wins over them.

These are facts of weights, not of architectures, so they live here and not with the presets: each family's
(:data:`FAMILY_PREPROCESSING`) and each preset name's default weights' (:data:`PREPROCESSING`,
:func:`preprocessing_of`)."""

from __future__ import annotations

from ..presets import PRESET_FAMILIES, PRESETS

# How each family's weights want their images (timm's pretrained_cfg of the weights a name loads by default)

_IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
_INCEPTION = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
_OPENAI_CLIP = dict(mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))
_SQUASH = dict(crop_mode="squash", crop_pct=1.0)  # both sides resized to the model's size, nothing cut
FAMILY_PREPROCESSING = {  # resize the short side to img_size / crop_pct (interpolation), take the centre, normalise
    "vit": dict(_INCEPTION, interpolation="bicubic", crop_pct=0.9),  # Google's augreg weights
    "mae": dict(_IMAGENET, interpolation="bicubic", crop_pct=0.9),
    "clip": dict(_OPENAI_CLIP, interpolation="bicubic", crop_pct=1.0),
    "siglip": dict(_INCEPTION, interpolation="bicubic", crop_pct=0.9),
    "dinov2": dict(_IMAGENET, interpolation="bicubic", crop_pct=1.0),
    "deit": dict(_IMAGENET, interpolation="bicubic", crop_pct=0.9),
    "beit": dict(_INCEPTION, interpolation="bicubic", crop_pct=0.9),
    "beitv2": dict(_IMAGENET, interpolation="bicubic", crop_pct=0.9),
    "dinov3": dict(_IMAGENET, interpolation="bicubic", crop_pct=1.0),
    "lingbot": dict(_IMAGENET, interpolation="bilinear", **_SQUASH),
    "pe": dict(_INCEPTION, interpolation="bicubic", crop_pct=1.0),
    "eva02": dict(_OPENAI_CLIP, interpolation="bicubic", crop_pct=0.9),
    "eva": dict(_OPENAI_CLIP, interpolation="bicubic", crop_pct=0.9),
    "rope_vit": dict(_IMAGENET, interpolation="bicubic", crop_pct=0.9),
    "sbb": dict(_INCEPTION, interpolation="bicubic", crop_pct=0.95),
    "aimv2": dict(_OPENAI_CLIP, interpolation="bicubic", crop_pct=1.0),
    "tipsv2": dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation="bicubic", crop_pct=1.0),
}
_DEFAULT_WEIGHTS_DIFFER = {  # names whose default weights in timm were trained or fine-tuned otherwise
    "vit_small_patch8_224": _IMAGENET,  # DINO
    "vit_large_patch14_clip_224": _INCEPTION,  # LAION-2B, in1k fine-tune
    "vit_large_patch14_clip_336": dict(_INCEPTION, **_SQUASH),
    "vit_base_patch16_clip_224": dict(crop_pct=0.95),
    **{name: dict(crop_pct=0.9) for name in ("vit_base_patch32_clip_224", "vit_base_patch32_clip_quickgelu_224",
                                             "vit_xsmall_patch16_clip_224", "vit_medium_patch16_clip_224",
                                             "vit_medium_patch32_clip_224", "vit_betwixt_patch32_clip_224")},
    "beitv2_large_patch16_224": dict(crop_pct=0.95),
    **dict.fromkeys(["vit_base_patch16_clip_384", "vit_huge_patch14_clip_336",
                     "vit_gigantic_patch14_clip_378", "eva02_base_patch14_448", "eva02_large_patch14_448",
                     "eva_giant_patch14_336", "eva_large_patch14_336"], _SQUASH),
    "eva_giant_patch14_560": dict(_IMAGENET, **_SQUASH),  # Merged-30M, then ImageNet-22k and -1k
    "vit_betwixt_patch16_rope_reg4_gap_256": _OPENAI_CLIP,
}


def _preprocessing(name: str, family: str) -> dict:
    prep = dict(FAMILY_PREPROCESSING[family], crop_mode=FAMILY_PREPROCESSING[family].get("crop_mode", "center"))
    if family in ("vit", "deit", "beit", "eva02", "eva") and PRESETS[name]["img_size"] > 224:
        prep["crop_pct"] = 1.0  # fine-tuned at the higher resolution on full images
    if family == "eva" and PRESETS[name]["img_size"] < 224:
        prep["crop_pct"] = 1.0
    return {**prep, **_DEFAULT_WEIGHTS_DIFFER.get(name, {})}


PREPROCESSING: dict[str, dict] = {**FAMILY_PREPROCESSING,
                                  **{name: _preprocessing(name, family) for name, family in PRESET_FAMILIES.items()}}


def preprocessing_of(name: str) -> dict | None:
    """How the images of a preset's (or a family's: 'vit', 'mae', 'clip', 'siglip', 'dinov2', 'deit', 'beit',
    'beitv2', 'dinov3', 'pe', 'eva02' ...) weights are prepared: ``mean``, ``std``, ``interpolation``,
    ``crop_pct`` and (for presets) ``crop_mode``; None if unknown."""
    prep = PREPROCESSING.get(name)
    return None if prep is None else dict(prep)


def _family(name: str) -> dict:
    return {**FAMILY_PREPROCESSING[name], "crop_mode": "center"}


# Each family's preprocessing is the one table above (resize the short side to size / crop_pct,
# centre crop; CLIP's crop_pct 1 is OpenAI's and open_clip's pipeline).
CLIP, SIGLIP, DINOV2, DEIT = _family("clip"), _family("siglip"), _family("dinov2"), _family("deit")
BEIT, MAE, VIT_GOOGLE = _family("beit"), _family("mae"), _family("vit")  # BEiT v2: "beitv2", ImageNet's statistics
# timm's configs of the 2025-26 families (vit_*_dinov3.lvd1689m, vit_pe_core_*.fb, aimv2_*.apple_pt): DINOv3 as
# DINOv2 (ImageNet's statistics, the whole image), PE with SigLIP's 0.5 statistics and AIMv2 with OpenAI's, both
# on the whole image
DINOV3, PE, AIMV2 = dict(DINOV2), {**SIGLIP, "crop_pct": 1.0}, dict(CLIP)

# What transformers' image processors do when a folder has no preprocessor_config.json to say otherwise (their
# defaults): ViTImageProcessor and SiglipImageProcessor resize to 224 x 224 (squash), DeiTImageProcessor to
# 256 x 256 and crops the centre 224.
HF_VIT = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear", "crop_pct": 1.0,
          "crop_mode": "squash"}
HF_DEIT = {**DEIT, "interpolation": "bicubic", "crop_pct": 224 / 256, "crop_mode": "squash"}
HF_SIGLIP = {**SIGLIP, "crop_pct": 1.0, "crop_mode": "squash"}

# Which timm pretrained config each set was copied from (tests compare them).
FROM_TIMM = {
    "CLIP": ("vit_base_patch16_clip_224.laion2b", CLIP),
    "SigLIP": ("vit_base_patch16_siglip_224.webli", SIGLIP),
    "DINOv2": ("vit_base_patch14_dinov2.lvd142m", DINOV2),
    "DeiT": ("deit_base_distilled_patch16_224.fb_in1k", DEIT),
    "BEiT": ("beit_base_patch16_224.in22k_ft_in22k_in1k", BEIT),
    "MAE": ("vit_base_patch16_224.mae", MAE),
    "ViT (google)": ("vit_base_patch16_224.augreg2_in21k_ft_in1k", VIT_GOOGLE),
    "DINOv3": ("vit_small_patch16_dinov3.lvd1689m", DINOV3),
    "Perception Encoder": ("vit_pe_core_base_patch16_224.fb", PE),
    "AIMv2": ("aimv2_large_patch14_224.apple_pt", AIMV2),
}

_INTERPOLATIONS = {0: "nearest", 2: "bilinear", 3: "bicubic", "nearest": "nearest", "bilinear": "bilinear",
                   "bicubic": "bicubic"}


def from_timm_cfg(cfg) -> dict | None:
    """The preprocessing of a timm ``pretrained_cfg`` (object or dict), or None if it names none."""
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg or {})
    if not d.get("mean") or not d.get("std"):
        return None
    return {"mean": tuple(d["mean"]), "std": tuple(d["std"]),
            "interpolation": _INTERPOLATIONS.get(d.get("interpolation", "bicubic"), "bicubic"),
            "crop_pct": float(d.get("crop_pct") or 1.0),
            "crop_mode": "squash" if d.get("crop_mode") == "squash" else "center"}


def from_open_clip(cfg: dict) -> dict | None:
    """The preprocessing of an ``open_clip_config.json``'s ``preprocess_cfg`` (resize the short side, crop)."""
    if not cfg.get("mean") or not cfg.get("std"):
        return None
    return {"mean": tuple(cfg["mean"]), "std": tuple(cfg["std"]),
            "interpolation": _INTERPOLATIONS.get(cfg.get("interpolation", "bicubic"), "bicubic"),
            "crop_pct": 1.0, "crop_mode": "squash" if cfg.get("resize_mode") == "squash" else "center"}


def from_hf_processor(cfg: dict) -> dict | None:
    """The preprocessing of a Hugging Face ``preprocessor_config.json``: a centre crop of ``crop_size`` from a
    resize to ``size`` (crop_pct = crop / size), or a resize to ``size`` alone (squash)."""
    if not cfg.get("image_mean") or not cfg.get("image_std"):
        return None

    def side(s):
        if isinstance(s, dict):
            return s.get("shortest_edge") or s.get("height")
        return s

    size, crop = side(cfg.get("size")), side(cfg.get("crop_size")) if cfg.get("do_center_crop") else None
    squash = isinstance(cfg.get("size"), dict) and "height" in cfg["size"] and not crop
    return {"mean": tuple(cfg["image_mean"]), "std": tuple(cfg["image_std"]),
            "interpolation": _INTERPOLATIONS.get(cfg.get("resample", 3), "bicubic"),
            "crop_pct": float(crop) / float(size) if crop and size else 1.0,
            "crop_mode": "squash" if squash else "center"}
