"""How each model family's images were prepared in training, so a loaded model gets its input the same way:
mean, std, interpolation, crop_pct and crop_mode, in the names of :class:`vitkit.data.preprocess.Preprocess`
(the model's own size completes it). The values are timm's pretrained configs of the matching models
(:data:`FROM_TIMM` names which); a source's own description (``open_clip_config.json``, a Hugging Face
``preprocessor_config.json``, a live timm model's ``pretrained_cfg``) wins over them."""

from __future__ import annotations

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


def _pp(mean, std, crop_pct: float, interpolation: str = "bicubic") -> dict:
    return {"mean": mean, "std": std, "interpolation": interpolation, "crop_pct": crop_pct, "crop_mode": "center"}


# CLIP: resize the short side to the size, centre crop (OpenAI's and open_clip's pipeline: crop_pct 1).
CLIP = _pp(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, 1.0)
SIGLIP = _pp(INCEPTION_MEAN, INCEPTION_STD, 0.9)
DINOV2 = _pp(IMAGENET_MEAN, IMAGENET_STD, 1.0)
DEIT = _pp(IMAGENET_MEAN, IMAGENET_STD, 0.9)
BEIT = _pp(INCEPTION_MEAN, INCEPTION_STD, 0.9)  # BEiT v2 checkpoints use ImageNet's statistics instead
MAE = _pp(IMAGENET_MEAN, IMAGENET_STD, 0.9)
VIT_GOOGLE = _pp(INCEPTION_MEAN, INCEPTION_STD, 0.9)

# Which timm pretrained config each set was copied from (tests compare them).
FROM_TIMM = {
    "CLIP": ("vit_base_patch16_clip_224.laion2b", CLIP),
    "SigLIP": ("vit_base_patch16_siglip_224.webli", SIGLIP),
    "DINOv2": ("vit_base_patch14_dinov2.lvd142m", DINOV2),
    "DeiT": ("deit_base_distilled_patch16_224.fb_in1k", DEIT),
    "BEiT": ("beit_base_patch16_224.in22k_ft_in22k_in1k", BEIT),
    "MAE": ("vit_base_patch16_224.mae", MAE),
    "ViT (google)": ("vit_base_patch16_224.augreg2_in21k_ft_in1k", VIT_GOOGLE),
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
