"""The named architectures (timm's names, each :class:`~vitkit.config.ViTConfig` as timm builds it), how each
family's weights want their images, and the licence of the weights each name loads by default."""

from __future__ import annotations

import re

from .config import ViTConfig
from .errors import ConfigError

# --------------------------------------------------------------------------------------------------------------
# Named architectures (timm's names)

VARIANTS = {  # width, depth, heads, mlp_ratio (the paper; big_vision's decode_variant)
    "tiny": (192, 12, 3, 4.0),
    "small": (384, 12, 6, 4.0),
    "medium": (512, 12, 8, 4.0),
    "base": (768, 12, 12, 4.0),
    "large": (1024, 24, 16, 4.0),
    "huge": (1280, 32, 16, 4.0),
    "giant": (1408, 40, 16, 48 / 11),
}
FAMILY_VARIANTS = {  # more shapes the CLIP, SigLIP and DINOv2 families use, with the mlp_ratio timm writes
    "xsmall": (256, 10, 4, 4.0),
    "betwixt": (640, 12, 10, 4.0),
    "base_plus": (896, 12, 14, 4.0),
    "gigantic": (1664, 48, 16, 64 / 13),
    "so400m": (1152, 27, 16, 3.7362),  # SigLIP's shape-optimised 400M model
    "giantopt": (1536, 40, 16, 4.0),
    "giant_dinov2": (1536, 40, 24, 2.66667 * 2),  # a SwiGLU whose fc1 holds both halves
}
PATCH_SIZES = (8, 14, 16, 32)
IMG_SIZES = (224, 384)

_CLIP = {  # name: num_classes of timm's default weights (an ImageNet fine-tune, or CLIP's embedding width)
    "vit_xsmall_patch16_clip_224": 512, "vit_medium_patch32_clip_224": 512, "vit_medium_patch16_clip_224": 512,
    "vit_betwixt_patch32_clip_224": 512, "vit_base_patch32_clip_224": 1000, "vit_base_patch32_clip_256": 512,
    "vit_base_patch32_clip_384": 1000, "vit_base_patch32_clip_448": 1000, "vit_base_patch16_clip_224": 1000,
    "vit_base_patch16_clip_384": 1000, "vit_base_patch16_plus_clip_240": 640, "vit_large_patch14_clip_224": 1000,
    "vit_large_patch14_clip_336": 1000, "vit_huge_patch14_clip_224": 1000, "vit_huge_patch14_clip_336": 1000,
    "vit_huge_patch14_clip_378": 1024, "vit_giant_patch14_clip_224": 1024, "vit_gigantic_patch14_clip_224": 1280,
    "vit_gigantic_patch14_clip_378": 1280,
    "vit_base_patch32_clip_quickgelu_224": 512, "vit_base_patch16_clip_quickgelu_224": 512,
    "vit_large_patch14_clip_quickgelu_224": 768, "vit_large_patch14_clip_quickgelu_336": 768,
    "vit_huge_patch14_clip_quickgelu_224": 1024, "vit_huge_patch14_clip_quickgelu_378": 1024,
    "vit_gigantic_patch14_clip_quickgelu_224": 1280,
}
_SIGLIP = [  # variant, patch, image sizes, activation: timm's newer definitions use the tanh GELU that big_vision
    # trained with, its first ports the exact GELU
    ("base", 32, (256,), "gelu_tanh"),
    ("base", 16, (224, 256, 384, 512), "gelu"),
    ("large", 16, (256, 384), "gelu"),
    ("large", 16, (512,), "gelu_tanh"),
    ("so400m", 14, (224, 378), "gelu"),
    ("so400m", 16, (256, 384, 512), "gelu_tanh"),
    ("giantopt", 16, (256, 384), "gelu_tanh"),
]
_BEIT = {"beit_base": 0.1, "beit_large": 1e-5, "beitv2_base": 1e-5, "beitv2_large": 1e-5}  # layer scale init

# The rotary families (timm's Eva models and its RoPE ViTs). A SwiGLU's mlp_ratio counts both halves of fc1:
# 2 x hidden / width (so DINOv3 S+'s hidden 1536 on width 384 is 8.0).
_DINOV3 = {  # variant: width, depth, heads, mlp_ratio, SwiGLU; (plain, qkvb) names timm defines
    "tiny": (192, 12, 3, 4.0, False, (False, True)), "small": (384, 12, 6, 4.0, False, (True, True)),
    "small_plus": (384, 12, 6, 8.0, True, (True, True)), "base": (768, 12, 12, 4.0, False, (True, True)),
    "large": (1024, 24, 16, 4.0, False, (True, True)), "huge_plus": (1280, 32, 20, 8.0, True, (True, True)),
    "7b": (4096, 40, 32, 4.0, True, (True, False)),
}
_DINOV3_COMMON = dict(img_size=256, patch_size=16, num_classes=0, reg_tokens=4, pos_embed="none",
                      layer_scale_init=1e-5, norm_eps=1e-5, dynamic_img_size=True, rope="dinov3",
                      rope_temperature=100.0, fc_norm=False)
_LINGBOT = {"small": (384, 12, 6, 4.0, False), "base": (768, 12, 12, 4.0, False),
            "large": (1024, 24, 16, 4.0, False), "giant": (1536, 40, 24, 2 * 4096 / 1536, True)}
_PE = {  # kind: [(variant, patch, img, num_classes)]; the rotary reference grid is the trained one
    "core": [("tiny", 16, 384, 512), ("small", 16, 384, 512), ("base", 16, 224, 1024), ("large", 14, 336, 1024),
             ("gigantic", 14, 448, 1280)],
    "lang": [("large", 14, 448, 0), ("gigantic", 14, 448, 0)],
    "spatial": [("tiny", 16, 512, 0), ("small", 16, 512, 0), ("base", 16, 512, 0), ("large", 14, 448, 0),
                ("gigantic", 14, 448, 0)],
}
_PE_GIGANTIC = dict(embed_dim=1536, depth=50, num_heads=16, mlp_ratio=8960 / 1536, class_token=False)
_EVA02 = {  # variant: width, depth, heads, SwiGLU mlp_ratio, sub-LN, image sizes (ImageNet heads past 224)
    "tiny": (192, 12, 3, 2 * 512 / 192, False, (224, 336)), "small": (384, 12, 6, 2 * 1024 / 384, False, (224, 336)),
    "base": (768, 12, 12, 2 * 2048 / 768, True, (224, 448)), "large": (1024, 24, 16, 2 * 2730 / 1024, True, (224, 448)),
}
_SBB = {"base": (768, 12, 12, 1, "qv"), "betwixt": (640, 12, 10, 4, "qv"), "medium": (512, 12, 8, 1, "qv"),
        "mediumd": (512, 20, 8, 1, False)}  # width, depth, heads, registers, qkv_bias
_AIMV2 = {"large": (1024, 8, 2816), "huge": (1536, 12, 4096), "1b": (2048, 16, 5632), "3b": (3072, 24, 8192)}
_TIPSV2 = {"base": (768, 12, 12, 4.0, False), "large": (1024, 24, 16, 4.0, False),
           "so400m": (1152, 27, 16, 4304 / 1152, False), "giant": (1536, 40, 24, 2 * 4096 / 1536, True)}


def _rotary_presets() -> dict[str, tuple[str, dict]]:
    """DINOv3 (and LingBot, trained as DINOv3 is), Perception Encoder, EVA-02 and EVA, Naver's RoPE-ViT, timm's
    SBB RoPE models, AIMv2 and TIPSv2, each as timm builds it. timm pools DINOv3 by the mean patch token; its
    original code and Hugging Face's pool [CLS] (load those files, or pass pool='cls')."""
    p = {}
    swiglu = dict(mlp="swiglu", act="silu")
    for variant, (dim, depth, heads, ratio, glu, (plain, qkvb)) in _DINOV3.items():
        shape = dict(_DINOV3_COMMON, embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=ratio, pool="mean",
                     **(swiglu if glu else {}))
        for bias, kept in ((False, plain), ("qv", qkvb)):
            if kept:
                p[f"vit_{variant}_patch16_dinov3{'_qkvb' if bias else ''}"] = ("dinov3", dict(shape, qkv_bias=bias))
    for variant, (dim, depth, heads, ratio, glu) in _LINGBOT.items():
        p[f"vit_{variant}_patch16_lingbot"] = ("lingbot", dict(
            _DINOV3_COMMON, img_size=512, embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=ratio,
            qkv_bias=False if glu else "qv", **(swiglu if glu else {})))
    for kind, models in _PE.items():
        for variant, patch, img, classes in models:
            shape = _shape(variant, patch, img) if variant != "gigantic" else dict(
                img_size=img, patch_size=patch, **_PE_GIGANTIC)
            cls = shape.get("class_token", True)
            pe = dict(shape, num_classes=classes, norm_pre=True, patch_bias=False, norm_eps=1e-5, rope="axial",
                      rope_temperature=10000.0, rope_grid_offset=1.0 if cls else 0.0, rope_grid_indexing="xy",
                      rope_ref_grid=(img // patch,) * 2 if kind == "core" else (32, 32))
            if kind == "core":  # CLIP's image tower: attention pooling (8 heads), then the projection
                pe.update(pool="map", fc_norm=False, attn_pool_heads=8, pool_include_prefix=cls,
                          attn_pool_mlp_ratio=4.0 if variant == "gigantic" else None)
            else:  # the features of the last block, unnormed
                pe.update(pool="mean", fc_norm=False, final_norm=False)
            if kind == "lang":
                pe.update(depth=23 if variant == "large" else 47, layer_scale_init=0.1)
            if kind == "spatial" and variant == "gigantic":
                pe.update(layer_scale_init=0.1)
            p[f"vit_pe_{kind}_{variant}_patch{patch}_{img}"] = ("pe", pe)
    for variant, (dim, depth, heads, ratio, sub_ln, sizes) in _EVA02.items():
        eva = dict(patch_size=14, embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=ratio, qkv_bias="qv",
                   rope="axial", rope_temperature=10000.0, rope_ref_grid=(16, 16), mlp_norm=sub_ln, **swiglu)
        for img in sizes:
            p[f"eva02_{variant}_patch14_{img}"] = ("eva02", dict(eva, img_size=img, pool="mean", fc_norm=True,
                                                                 num_classes=0 if img == 224 else 1000))
        if variant in ("base", "large"):  # the EVA-CLIP image towers: [CLS], a norm before each attention proj
            for img in (224,) if variant == "base" else (224, 336):
                patch = 16 if variant == "base" else 14
                p[f"eva02_{variant}_patch{patch}_clip_{img}"] = ("eva02", dict(
                    eva, img_size=img, patch_size=patch, num_classes=512 if variant == "base" else 768,
                    fc_norm=False, attn_norm=True))
    for img in (224, 336, 560):
        p[f"eva_giant_patch14_{img}"] = ("eva", _shape("giant", 14, img, qkv_bias="qv", pool="mean"))
    p["eva_giant_patch14_clip_224"] = ("eva", _shape("giant", 14, 224, qkv_bias="qv", num_classes=1024))
    for img in (196, 336):
        p[f"eva_large_patch14_{img}"] = ("eva", _shape("large", 14, img, pool="mean"))
    for variant in ("small", "base", "large"):
        for kind, rope, temperature in (("", "axial", 100.0), ("_mixed", "mixed", 10.0)):
            naver = _shape(variant, 16, 224, layer_scale_init=1e-5, rope=rope, rope_temperature=temperature,
                           rope_grid_indexing="xy")
            p[f"vit_{variant}_patch16_rope{kind}_224"] = ("rope_vit", dict(naver, pos_embed="none"))
            p[f"vit_{variant}_patch16_rope{kind}_ape_224"] = ("rope_vit", dict(naver, no_embed_class=True))
    for variant, (dim, depth, heads, reg, bias) in _SBB.items():
        p[f"vit_{variant}_patch16_rope_reg{reg}_gap_256"] = ("sbb", dict(
            img_size=256, patch_size=16, embed_dim=dim, depth=depth, num_heads=heads, qkv_bias=bias, pool="mean",
            class_token=False, reg_tokens=reg, pos_embed="none", layer_scale_init=1e-5, rope="axial",
            rope_temperature=10000.0, rope_ref_grid=(16, 16)))
    for variant, (dim, heads, hidden) in _AIMV2.items():
        for img in (224, 336, 448):
            p[f"aimv2_{variant}_patch14_{img}"] = ("aimv2", dict(
                img_size=img, patch_size=14, num_classes=0, embed_dim=dim, depth=24, num_heads=heads,
                mlp_ratio=2 * hidden / dim, qkv_bias=False, pool="mean", class_token=False, fc_norm=False,
                norm_eps=1e-5, norm_layer="rmsnorm", embed_norm=True, proj_bias=False, mlp_bias=False, **swiglu))
    for variant, (dim, depth, heads, ratio, glu) in _TIPSV2.items():
        p[f"vit_{variant}_patch14_reg1_tipsv2"] = ("tipsv2", dict(
            img_size=448, patch_size=14, num_classes=0, embed_dim=dim, depth=depth, num_heads=heads,
            mlp_ratio=ratio, reg_tokens=1, no_embed_class=True, layer_scale_init=1.0, **(swiglu if glu else {})))
    return p


def _shape(variant: str, patch: int, img: int, **kw) -> dict:
    dim, depth, heads, ratio = {**VARIANTS, **FAMILY_VARIANTS}[variant]
    return dict(img_size=img, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=ratio, **kw)


def _build_presets() -> dict[str, tuple[str, dict]]:
    """{name: (family, ViTConfig fields)}, each as timm's constructor of that name builds it."""
    presets = {}
    for variant in VARIANTS:
        for patch in PATCH_SIZES:
            for img in IMG_SIZES:
                if img % patch:  # e.g. patch 14 needs 224 or 518
                    continue
                presets[f"vit_{variant}_patch{patch}_{img}"] = ("vit", _shape(variant, patch, img))
    for name, classes in _CLIP.items():  # e.g. vit_base_patch16_plus_clip_240
        variant, patch, plus, img = re.fullmatch(r"vit_([a-z]+)_patch(\d+)(_plus)?_clip\w*_(\d+)", name).groups()
        presets[name] = ("clip", _shape(variant + (plus or ""), int(patch), int(img), num_classes=classes,
                                        norm_pre=True, patch_bias=False, norm_eps=1e-5,
                                        act="quick_gelu" if "_quickgelu_" in name else "gelu"))
    for variant, patch, sizes, act in _SIGLIP:
        for img in sizes:
            siglip = _shape(variant, patch, img, class_token=False, num_classes=0, act=act)
            presets[f"vit_{variant}_patch{patch}_siglip_{img}"] = ("siglip", dict(siglip, pool="map"))
            presets[f"vit_{variant}_patch{patch}_siglip_gap_{img}"] = ("siglip", dict(siglip, pool="mean",
                                                                                      fc_norm=False))
    for variant in ("small", "base", "large", "giant"):
        giant = dict(mlp="swiglu", act="silu") if variant == "giant" else {}
        dino = _shape(variant + ("_dinov2" if giant else ""), 14, 518, layer_scale_init=1e-5, num_classes=0, **giant)
        presets[f"vit_{variant}_patch14_dinov2"] = ("dinov2", dino)
        presets[f"vit_{variant}_patch14_reg4_dinov2"] = ("dinov2", dict(dino, reg_tokens=4, no_embed_class=True))
    for variant, img in (("tiny", 224), ("small", 224), ("base", 224), ("base", 384)):
        presets[f"deit_{variant}_patch16_{img}"] = ("deit", _shape(variant, 16, img))
        presets[f"deit_{variant}_distilled_patch16_{img}"] = ("deit", _shape(variant, 16, img, distilled=True))
    for prefix, init in _BEIT.items():
        for img in (224, 384, 512) if prefix == "beit_large" else (224, 384) if prefix == "beit_base" else (224,):
            presets[f"{prefix}_patch16_{img}"] = (prefix.partition("_")[0], _shape(
                prefix.partition("_")[2], 16, img, use_relative_position=True, pos_embed="none", pool="mean",
                qkv_bias="qv", layer_scale_init=init))
    return {**presets, **_rotary_presets()}


PRESET_FAMILIES: dict[str, str] = {}  # name: 'vit', 'clip', 'siglip', 'dinov2', 'deit', 'beit', 'dinov3', ...
PRESETS: dict[str, dict] = {}  # name: ViTConfig fields
for _name, (_family, _fields) in _build_presets().items():
    PRESET_FAMILIES[_name], PRESETS[_name] = _family, _fields


def list_models(pattern: str = "*") -> list[str]:
    """Preset names matching a shell-style pattern, e.g. ``list_models("vit_base_*")``."""
    import fnmatch
    return sorted(n for n in PRESETS if fnmatch.fnmatch(n, pattern))


def get_preset(name: str, **overrides) -> ViTConfig:
    """The ``ViTConfig`` of a named architecture, with any fields overridden."""
    if name not in PRESETS:
        import difflib
        close = difflib.get_close_matches(name, PRESETS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see vitkit.list_models()"
        raise ConfigError(f"unknown model name {name!r}{hint}")
    return ViTConfig.from_kwargs(**{**PRESETS[name], **overrides})


# --------------------------------------------------------------------------------------------------------------
# The weights each name loads by default: how their images were prepared is in vitkit.interop.preprocess
# (preprocessing_of), with what consumes it; their licence is here.

# The licence of the weights each name loads by default (timm's pretrained config says the same): a family's,
# else the name's own. The architectures themselves are all in permissively licensed code.
FAMILY_LICENCES = {"vit": "apache-2.0", "mae": "cc-by-nc-4.0", "clip": "apache-2.0", "siglip": "apache-2.0",
                   "dinov2": "apache-2.0", "deit": "apache-2.0", "beit": "apache-2.0", "beitv2": "apache-2.0",
                   "dinov3": "dinov3-license", "lingbot": "apache-2.0", "pe": "apache-2.0", "eva02": "mit",
                   "eva": "mit", "rope_vit": "apache-2.0", "sbb": "mit", "aimv2": "apple-ascl",
                   "tipsv2": "apache-2.0"}
_LICENCE_DIFFERS = {
    **dict.fromkeys(["vit_xsmall_patch16_clip_224", "vit_medium_patch32_clip_224", "vit_medium_patch16_clip_224",
                     "vit_betwixt_patch32_clip_224", "vit_base_patch16_plus_clip_240",
                     "vit_base_patch32_clip_quickgelu_224"], "mit"),
    **dict.fromkeys(["vit_huge_patch14_clip_378", "vit_large_patch14_clip_quickgelu_224",
                     "vit_huge_patch14_clip_quickgelu_224", "vit_huge_patch14_clip_quickgelu_378"], "apple-ascl"),
    **dict.fromkeys(["vit_gigantic_patch14_clip_378", "vit_base_patch16_clip_quickgelu_224",
                     "vit_gigantic_patch14_clip_quickgelu_224"], "cc-by-nc-4.0"),
    "vit_tiny_patch16_dinov3_qkvb": "fair-noncommercial-research-license",  # EUPE's distillation
}


def licence_of(name: str) -> str | None:
    """The licence of the weights a preset name loads by default (or of a family's: 'dinov3', 'pe' ...), as
    timm's pretrained config names it, e.g. ``"apache-2.0"``, ``"dinov3-license"``; None if unknown. Read it
    before you ship a model: several are not for commercial use."""
    if name in PRESET_FAMILIES:
        return _LICENCE_DIFFERS.get(name, FAMILY_LICENCES[PRESET_FAMILIES[name]])
    return FAMILY_LICENCES.get(name)
