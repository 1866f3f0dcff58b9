"""Key tables of timm and the repositories written on its modules (DINOv2, BEiT, DeiT, MAE), Hugging Face's
ViT / DeiT / Dinov2, torchvision, and the JAX ``.npz`` files of google-research/vision_transformer and
big_vision (incl. SigLIP's MAP head). One row per key; see :mod:`vitkit.interop.rules` for the vocabulary."""

from __future__ import annotations

import dataclasses
import re

from . import preprocess as pp
from .rules import (Assume, Format, Profile, Require, Rule, add, cat, cls_plus_class_pos, heads_of, jax_conv, jax_heads_bias,
                    jax_heads_in, jax_heads_out, patch_pos, transpose, wb)


def _patch14(state: dict) -> bool:
    return state["patch_embed.proj.weight"].shape[-1] == 14


# What each model family written on timm's modules implies (the keys after conversion tell the family).
TIMM_PROFILES = (
    Profile("CLIP", when=("norm_pre.weight",), unless=("patch_embed.proj.bias",), defaults={"norm_eps": 1e-5},
            assume=(Assume("act", "gelu", "QuickGELU or GELU cannot be told from timm CLIP weights; assumed gelu "
                           "(timm's vit_*_clip_* models); pass act='quick_gelu' for vit_*_clip_quickgelu_* ones"),),
            preprocess=pp.CLIP),
    Profile("SigLIP", when=("attn_pool.latent",),
            assume=(Assume("act", "gelu", "GELU or tanh-GELU cannot be told from timm SigLIP weights; assumed "
                           "gelu (timm's base, large and so400m_patch14 SigLIP models); pass act='gelu_tanh' for "
                           "the newer ones (so400m_patch16, base_patch32_256, large_patch16_512, giantopt)"),),
            preprocess=pp.SIGLIP),
    Profile("DINOv2", when=("blocks.0.ls1.gamma",), test=_patch14, defaults={"num_heads": heads_of(64)},
            preprocess=pp.DINOV2),  # every released DINOv2 has 64-wide heads
    Profile("BEiT", when=("blocks.0.attn.relative_position_bias.relative_position_bias_table",),
            preprocess=pp.BEIT),
    Profile("DeiT", when=("dist_token",), preprocess=pp.DEIT),
)

_REL = "attn.relative_position_bias.relative_position_bias_table"  # vitkit's per-block table


def _relative_bias(raw: dict) -> bool:
    return any(k.endswith("relative_position_bias_table") for k in raw)


def _no_position(raw: dict) -> bool:
    return "pos_embed" not in raw and not _relative_bias(raw)


def _eva_layer_scale(raw: dict) -> bool:
    return any(re.fullmatch(r"blocks\.\d+\.gamma_1", k) for k in raw) and not _relative_bias(raw)


def _qv_bias_alone(raw: dict) -> bool:
    return any(re.fullmatch(r"blocks\.\d+\.attn\.q_bias", k) for k in raw) and not _relative_bias(raw)


def _pe_like(raw: dict) -> bool:  # CLIP's pre-norm with an attention pool, or without a final norm
    return "norm_pre.weight" in raw and ("attn_pool.latent" in raw or "norm.weight" not in raw)


_ROPE_MODELS = ("a rotary position embedding (RoPE), which their weights do not hold; name the architecture "
                "(from_pretrained(..., arch='vit_small_patch16_dinov3')) or say rope=")
# timm's RoPE models (Eva: DINOv3, EVA-02, PE, RoPE-ViT, the SBB ViTs) store nothing of their rotary embedding,
# so their state dicts look like plain ViTs; these key patterns are where the two meet.
TIMM_REQUIRE = (
    Require(("pos_embed", "rope"), "its weights hold no position embedding, as timm's RoPE models (DINOv3, "
            "RoPE-ViT, the SBB ViTs) store them: they rotate q and k with " + _ROPE_MODELS + "..., or "
            "pos_embed='none' for a model without position information", _no_position),
    Require(("rope",), "its layer scale is named gamma_1/gamma_2, as in DeiT III's original files and in timm's "
            "Eva models (RoPE-ViT, DINOv3, PE), which add " + _ROPE_MODELS + "'none' for a DeiT III file",
            _eva_layer_scale),
    Require(("rope",), "its q/v-only attention biases without a relative position bias are those of timm's "
            "EVA-02, DINOv3 (qkvb) and SBB ViTs, which add " + _ROPE_MODELS + "'none' for EVA-1", _qv_bias_alone),
    Require(("rope",), "its pre-norm with an attention pool (or no final norm) is Meta's Perception Encoder in "
            "timm's keys, which adds " + _ROPE_MODELS + "'none' for a model without one", _pe_like),
    Require(("norm_layer",), "its norms have a scale and no bias, as both RMSNorm (AIMv2) and bias-free "
            "LayerNorms have; name the architecture (arch=) or say norm_layer='rmsnorm' (vitkit has no bias-free "
            "LayerNorm)", lambda keys: "blocks.0.norm1.weight" in keys and "blocks.0.norm1.bias" not in keys),
)
TIMM = Format(
    name="timm", markers=("patch_embed.proj.weight",), label="timm",
    rules=(
        # DINOv2 (facebookresearch): registers without a position embedding -> timm's no_embed_class layout
        Rule("reg_token", ("register_tokens",)),
        Rule("cls_token", ("cls_token", "pos_embed", "register_tokens"), cls_plus_class_pos),
        Rule("pos_embed", ("pos_embed", "register_tokens"), patch_pos),
        *wb("blocks.{i}.mlp.fc1", "blocks.{i}.mlp.w12"),  # DINOv2 giant's packed SwiGLU: [gate; up]
        # timm's Eva: separate q, k, v (EVA-02: no k bias -> q/v biases) and a split SwiGLU, stacked as vitkit's
        *wb("blocks.{i}.attn.qkv", *(f"blocks.{{i}}.attn.{n}_proj" for n in "qkv"), fn=cat),
        Rule("blocks.{i}.attn.q_bias", ("blocks.{i}.attn.q_proj.bias",), unless=("blocks.{i}.attn.k_proj.bias",)),
        Rule("blocks.{i}.attn.v_bias", ("blocks.{i}.attn.v_proj.bias",), unless=("blocks.{i}.attn.k_proj.bias",)),
        *wb("blocks.{i}.mlp.fc1", "blocks.{i}.mlp.fc1_g", "blocks.{i}.mlp.fc1_x", fn=cat),
        *wb("blocks.{i}.mlp.fc2", "blocks.{i}.mlp.w3"),
        # BEiT (unilm, timm): per-block tables, or one shared table added in every block
        Rule(f"blocks.{{i}}.{_REL}", ("blocks.{i}.attn.relative_position_bias_table",
                                       "rel_pos_bias.relative_position_bias_table"), add),
        Rule(f"blocks.{{i}}.{_REL}", ("blocks.{i}.attn.relative_position_bias_table",)),
        Rule(f"blocks.{{i}}.{_REL}", ("rel_pos_bias.relative_position_bias_table",)),
    ),
    renames=(
        (r"^blocks\.\d+\.(\d+)\.", r"blocks.\1."),  # DINOv2 training files: blocks.<chunk>.<i>.
        (r"^blocks\.(\d+)\.gamma_([12])$", r"blocks.\1.ls\2.gamma"),  # DeiT III, BEiT layer scale
    ),
    prefixes=("module.", "teacher.backbone.", "backbone."), scoped_prefix=True, pre_logits="pre_logits.",
    # masked-image-modelling parts (DINOv2, BEiT, MAE decoders) and buffers derived from the grid
    ignore=(r"^mask_token$", r"^decoder_", r"^lm_head\.", r"\.relative_position_index$"),
    require=TIMM_REQUIRE, profiles=TIMM_PROFILES)

_HF_V4 = "encoder.layer.{i}."  # files on the Hub (transformers 4 names)
_HF_V5 = "layers.{i}."  # live models of transformers >= 5
HF = Format(
    name="hf", markers=("embeddings.patch_embeddings.projection.weight",), label="Hugging Face ViT",
    rules=tuple([
        *wb("patch_embed.proj", "embeddings.patch_embeddings.projection"),
        Rule("cls_token", ("embeddings.cls_token",)),
        Rule("dist_token", ("embeddings.distillation_token",)),  # DeiT
        Rule("pos_embed", ("embeddings.position_embeddings",)),
        *wb("blocks.{i}.norm1", _HF_V4 + "layernorm_before"),
        *wb("blocks.{i}.attn.qkv", *(_HF_V4 + f"attention.attention.{n}" for n in ("query", "key", "value")),
            fn=cat),
        *wb("blocks.{i}.attn.proj", _HF_V4 + "attention.output.dense"),
        *wb("blocks.{i}.norm2", _HF_V4 + "layernorm_after"),
        *wb("blocks.{i}.mlp.fc1", _HF_V4 + "intermediate.dense"),
        *wb("blocks.{i}.mlp.fc2", _HF_V4 + "output.dense"),
        *wb("blocks.{i}.norm1", _HF_V5 + "layernorm_before"),
        *wb("blocks.{i}.attn.qkv", *(_HF_V5 + f"attention.{n}_proj" for n in "qkv"), fn=cat),
        *wb("blocks.{i}.attn.proj", _HF_V5 + "attention.o_proj"),
        *wb("blocks.{i}.norm2", _HF_V5 + "layernorm_after"),
        *wb("blocks.{i}.mlp.fc1", _HF_V5 + "mlp.fc1"),
        *wb("blocks.{i}.mlp.fc2", _HF_V5 + "mlp.fc2"),
        *wb("norm", "layernorm"),
        *wb("head", "classifier"),
        *wb("head", "cls_classifier"),  # DeiT with teacher: the two heads' logits are averaged
        *wb("head_dist", "distillation_classifier"),
    ]),
    prefixes=("vit.", "deit."),
    # ViTModel's tanh pooler feeds no logits (the classifier reads the normed [CLS]); the mask token is for
    # masked image modelling only.
    ignore=(r"^pooler\.", r"^embeddings\.mask_token$"),
    defaults={"norm_eps": 1e-12},  # HF's default layer_norm_eps
    profiles=(Profile("DeiT (DeiTImageProcessor's defaults)", when=("dist_token",), preprocess=pp.HF_DEIT),
              Profile("ViT (ViTImageProcessor's defaults)", preprocess=pp.HF_VIT)))

_DL = "encoder.layer.{i}."
_DE = "embeddings."
HF_DINOV2 = Format(
    name="hf_dinov2", markers=("encoder.layer.0.layer_scale1.lambda1",), label="Hugging Face Dinov2",
    rules=tuple([
        *wb("patch_embed.proj", _DE + "patch_embeddings.projection"),
        Rule("reg_token", (_DE + "register_tokens",)),
        Rule("cls_token", (_DE + "cls_token", _DE + "position_embeddings", _DE + "register_tokens"),
             cls_plus_class_pos),
        Rule("cls_token", (_DE + "cls_token",)),
        Rule("pos_embed", (_DE + "position_embeddings", _DE + "register_tokens"), patch_pos),
        Rule("pos_embed", (_DE + "position_embeddings",)),
        *wb("blocks.{i}.norm1", _DL + "norm1"),
        *wb("blocks.{i}.attn.qkv", *(_DL + f"attention.attention.{n}" for n in ("query", "key", "value")), fn=cat),
        *wb("blocks.{i}.attn.qkv", *(_DL + f"attention.{n}_proj" for n in "qkv"), fn=cat),
        *wb("blocks.{i}.attn.proj", _DL + "attention.output.dense"),
        *wb("blocks.{i}.attn.proj", _DL + "attention.o_proj"),
        Rule("blocks.{i}.ls1.gamma", (_DL + "layer_scale1.lambda1",)),
        Rule("blocks.{i}.ls2.gamma", (_DL + "layer_scale2.lambda1",)),
        *wb("blocks.{i}.norm2", _DL + "norm2"),
        *wb("blocks.{i}.mlp.fc1", _DL + "mlp.fc1"),
        *wb("blocks.{i}.mlp.fc2", _DL + "mlp.fc2"),
        *wb("blocks.{i}.mlp.fc1", _DL + "mlp.weights_in"),  # SwiGLU (giant), Hub names: [gate; up]
        *wb("blocks.{i}.mlp.fc2", _DL + "mlp.weights_out"),
        *wb("blocks.{i}.mlp.fc1", _DL + "mlp.gate_proj", _DL + "mlp.up_proj", fn=cat),  # transformers 5
        *wb("blocks.{i}.mlp.fc2", _DL + "mlp.down_proj"),
        *wb("norm", "layernorm"),
    ]),
    prefixes=("dinov2.", "dinov2_with_registers."),
    ignore=(r"^embeddings\.mask_token$",),
    foreign_head="classifier.",  # Dinov2ForImageClassification: [CLS] and the mean patch token side by side
    defaults={"norm_eps": 1e-6, "num_heads": heads_of(64)},
    profiles=(Profile("DINOv2", preprocess=pp.DINOV2),))

_TV = "encoder.layers.encoder_layer_{i}."
TORCHVISION = Format(
    name="torchvision", markers=("conv_proj.weight",), label="torchvision",
    rules=tuple([
        *wb("patch_embed.proj", "conv_proj"),
        Rule("cls_token", ("class_token",)),
        Rule("pos_embed", ("encoder.pos_embedding",)),
        *wb("blocks.{i}.norm1", _TV + "ln_1"),
        Rule("blocks.{i}.attn.qkv.weight", (_TV + "self_attention.in_proj_weight",)),  # q, k, v rows like timm
        Rule("blocks.{i}.attn.qkv.bias", (_TV + "self_attention.in_proj_bias",)),
        *wb("blocks.{i}.attn.proj", _TV + "self_attention.out_proj"),
        *wb("blocks.{i}.norm2", _TV + "ln_2"),
        *wb("blocks.{i}.mlp.fc1", _TV + "mlp.0"),
        *wb("blocks.{i}.mlp.fc2", _TV + "mlp.3"),
        *wb("blocks.{i}.mlp.fc1", _TV + "mlp.linear_1"),  # checkpoints older than torchvision 0.13
        *wb("blocks.{i}.mlp.fc2", _TV + "mlp.linear_2"),
        *wb("norm", "encoder.ln"),
        *wb("head", "heads.head"),
    ]),
    prefixes=("module.",), scoped_prefix=True, pre_logits="heads.pre_logits.",
    # ViT_B_16_Weights.IMAGENET1K_V1: resize 256, crop 224, bilinear, ImageNet statistics
    profiles=(Profile("ViT (torchvision)", preprocess={**pp.DEIT, "crop_pct": 0.875, "interpolation": "bilinear"}),))

# JAX: {mha}, {ln2}, {mlp} are the sub-module numbers of an encoder block, (1, 2, 3) in
# google-research/vision_transformer and (0, 1, 0) in big_vision (timm's _load_weights has the same pair).
_JB = "Transformer/encoderblock_{i}/"
_JA = _JB + "MultiHeadDotProductAttention_{mha}/"
_MAP = "MAPHead_0/"
_MA = _MAP + "MultiHeadDotProductAttention_0/"
_QKV = ("query", "key", "value")
JAX = Format(
    name="jax", markers=("embedding/kernel",), label="JAX (.npz)",
    rules=(
        Rule("patch_embed.proj.weight", ("embedding/kernel",), jax_conv),
        Rule("patch_embed.proj.bias", ("embedding/bias",)),
        Rule("cls_token", ("cls",)),  # (1, 1, D)
        Rule("pos_embed", ("Transformer/posembed_input/pos_embedding",)),  # (1, 1 + N, D), with a CLS slot
        Rule("pos_embed", ("pos_embedding",)),  # big_vision: (1, N, D), added before the CLS is prepended
        Rule("blocks.{i}.norm1.weight", (_JB + "LayerNorm_0/scale",)),
        Rule("blocks.{i}.norm1.bias", (_JB + "LayerNorm_0/bias",)),
        Rule("blocks.{i}.attn.qkv.weight", tuple(_JA + f"{n}/kernel" for n in _QKV), jax_heads_in),
        Rule("blocks.{i}.attn.qkv.bias", tuple(_JA + f"{n}/bias" for n in _QKV), jax_heads_bias),
        Rule("blocks.{i}.attn.proj.weight", (_JA + "out/kernel",), jax_heads_out),
        Rule("blocks.{i}.attn.proj.bias", (_JA + "out/bias",)),
        Rule("blocks.{i}.norm2.weight", (_JB + "LayerNorm_{ln2}/scale",)),
        Rule("blocks.{i}.norm2.bias", (_JB + "LayerNorm_{ln2}/bias",)),
        Rule("blocks.{i}.mlp.fc1.weight", (_JB + "MlpBlock_{mlp}/Dense_0/kernel",), transpose),
        Rule("blocks.{i}.mlp.fc1.bias", (_JB + "MlpBlock_{mlp}/Dense_0/bias",)),
        Rule("blocks.{i}.mlp.fc2.weight", (_JB + "MlpBlock_{mlp}/Dense_1/kernel",), transpose),
        Rule("blocks.{i}.mlp.fc2.bias", (_JB + "MlpBlock_{mlp}/Dense_1/bias",)),
        Rule("norm.weight", ("Transformer/encoder_norm/scale",)),
        Rule("norm.bias", ("Transformer/encoder_norm/bias",)),
        # big_vision's MAP head (SigLIP): a learned probe attends to the tokens, then a residual MLP
        Rule("attn_pool.latent", (_MAP + "probe",)),  # (1, 1, D)
        Rule("attn_pool.q.weight", (_MA + "query/kernel",), jax_heads_in),
        Rule("attn_pool.q.bias", (_MA + "query/bias",), jax_heads_bias),
        Rule("attn_pool.kv.weight", (_MA + "key/kernel", _MA + "value/kernel"), jax_heads_in),
        Rule("attn_pool.kv.bias", (_MA + "key/bias", _MA + "value/bias"), jax_heads_bias),
        Rule("attn_pool.proj.weight", (_MA + "out/kernel",), jax_heads_out),
        Rule("attn_pool.proj.bias", (_MA + "out/bias",)),
        Rule("attn_pool.norm.weight", (_MAP + "LayerNorm_0/scale",)),
        Rule("attn_pool.norm.bias", (_MAP + "LayerNorm_0/bias",)),
        Rule("attn_pool.mlp.fc1.weight", (_MAP + "MlpBlock_0/Dense_0/kernel",), transpose),
        Rule("attn_pool.mlp.fc1.bias", (_MAP + "MlpBlock_0/Dense_0/bias",)),
        Rule("attn_pool.mlp.fc2.weight", (_MAP + "MlpBlock_0/Dense_1/kernel",), transpose),
        Rule("attn_pool.mlp.fc2.bias", (_MAP + "MlpBlock_0/Dense_1/bias",)),
        Rule("head.weight", ("head/kernel",), transpose),
        Rule("head.bias", ("head/bias",)),
    ),
    placeholders={"mha": r"^Transformer/encoderblock_0/MultiHeadDotProductAttention_(\d+)/",
                  "ln2": r"^Transformer/encoderblock_0/LayerNorm_([1-9])/",
                  "mlp": r"^Transformer/encoderblock_0/MlpBlock_(\d+)/"},
    # opt/target/: google-research/vision_transformer; params/: big_vision; params/img/: SigLIP's image tower
    prefixes=("opt/target/", "params/img/", "params/"), scoped_prefix=True, pre_logits="pre_logits/", scan=True,
    defaults={"act": "gelu_tanh"},  # flax's nn.gelu is the tanh approximation
    profiles=(Profile("SigLIP", when=("attn_pool.latent",), preprocess=pp.SIGLIP),
              Profile("ViT (google)", preprocess=pp.VIT_GOOGLE)))

VITKIT = dataclasses.replace(TIMM, name="vitkit", label="vitkit", profiles=(), require=())
