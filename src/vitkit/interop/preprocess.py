"""How each model family's images were prepared in training, so a loaded model gets its input the same way:
mean, std, interpolation, crop_pct and crop_mode, in the names of :class:`vitkit.data.preprocess.Preprocess`
(the model's own size completes it). The values are timm's pretrained configs of the matching models
(:data:`FROM_TIMM` names which); a source's own description (``open_clip_config.json``, a Hugging Face
``preprocessor_config.json``, a live timm model's ``pretrained_cfg``) wins over them."""

from __future__ import annotations

from ..presets import FAMILY_PREPROCESSING


def _family(name: str) -> dict:
    return {**FAMILY_PREPROCESSING[name], "crop_mode": "center"}


# Each family's preprocessing is the one table in vitkit.config (resize the short side to size / crop_pct,
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
