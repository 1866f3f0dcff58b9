"""Key tables of ViTs written by hand: lucidrains' vit-pytorch (``ViT`` and ``SimpleViT``, every layout since
0.0.1) and models built on PyTorch's own ``nn.TransformerEncoder`` with a patch embedding, [CLS] token and
position embedding of common names. One row per key."""

from __future__ import annotations

from .rules import Assume, Format, Rule, patch_norm, patches, pos, token, wb, zeros

# vit-pytorch. Since 1.0 the patch embedding is LayerNorm(P*P*C), Linear, LayerNorm(D) (Sequential
# indices 1, 2, 3; 0 is the einops Rearrange); before, index 1 is the Linear (0.7 - 0.9), and before 0.7 it is
# a Linear named patch_to_embedding. Before 1.4 each block branch is PreNorm(fn=...) (keys .0.fn.to_qkv,
# .1.norm, .1.fn.net.*), before 0.10 Residual(PreNorm(fn=...)) (.0.fn.norm, .0.fn.fn.to_qkv); since 1.4 the
# norm sits inside (.1.net.0). Before 0.3 there is no dropout (to_out is the Linear, fc2 is net.2).
_VL = "transformer.layers.{i}."
_VIT_PYTORCH_RULES = tuple([
    *wb("patch_embed.pre_norm", "to_patch_embedding.1", fn=patch_norm, when=("to_patch_embedding.2.weight",)),
    Rule("patch_embed.proj.weight", ("to_patch_embedding.2.weight",), patches),
    Rule("patch_embed.proj.bias", ("to_patch_embedding.2.bias",)),
    Rule("patch_embed.proj.weight", ("to_patch_embedding.1.weight",), patches),  # before 1.0
    Rule("patch_embed.proj.bias", ("to_patch_embedding.1.bias",)),
    *wb("patch_embed.norm", "to_patch_embedding.3"),
    Rule("cls_token", ("cls_token",), token),  # (1, 1, D); (1, D) since 1.16.1; (0, D) for pool='mean'
    Rule("pos_embed", ("pos_embedding",), pos),  # (1, T, D); (T, D) since 1.16.1
    *wb("blocks.{i}.norm1", _VL + "0.norm"),
    Rule("blocks.{i}.attn.qkv.weight", (_VL + "0.to_qkv.weight",)),  # no bias
    Rule("blocks.{i}.attn.qkv.weight", (_VL + "0.fn.to_qkv.weight",)),
    *wb("blocks.{i}.attn.proj", _VL + "0.to_out.0"),
    *wb("blocks.{i}.attn.proj", _VL + "0.fn.to_out.0"),
    Rule("blocks.{i}.attn.proj.weight", (_VL + "0.to_out.weight",)),  # SimpleViT: a Linear without bias
    Rule("blocks.{i}.attn.proj.bias", (_VL + "0.to_out.weight",), zeros),
    *wb("blocks.{i}.norm2", _VL + "1.net.0"),
    *wb("blocks.{i}.norm2", _VL + "1.norm"),
    *wb("blocks.{i}.mlp.fc1", _VL + "1.net.1"),
    *wb("blocks.{i}.mlp.fc1", _VL + "1.fn.net.0"),
    *wb("blocks.{i}.mlp.fc2", _VL + "1.net.4"),  # ViT: LayerNorm, Linear, GELU, Dropout, Linear, Dropout
    *wb("blocks.{i}.mlp.fc2", _VL + "1.net.3"),  # SimpleViT: LayerNorm, Linear, GELU, Linear
    *wb("blocks.{i}.mlp.fc2", _VL + "1.fn.net.3"),
    *wb("blocks.{i}.norm1", _VL + "0.fn.norm"),  # Residual(PreNorm(...)), before 0.10
    Rule("blocks.{i}.attn.qkv.weight", (_VL + "0.fn.fn.to_qkv.weight",)),
    *wb("blocks.{i}.attn.proj", _VL + "0.fn.fn.to_out.0"),
    *wb("blocks.{i}.attn.proj", _VL + "0.fn.fn.to_out"),  # before 0.3: a Linear
    *wb("blocks.{i}.norm2", _VL + "1.fn.norm"),
    *wb("blocks.{i}.mlp.fc1", _VL + "1.fn.fn.net.0"),
    *wb("blocks.{i}.mlp.fc2", _VL + "1.fn.fn.net.3"),
    *wb("blocks.{i}.mlp.fc2", _VL + "1.fn.fn.net.2"),  # before 0.3: Linear, GELU, Linear
    *wb("norm", "transformer.norm"),  # since 1.4
    *wb("norm", "mlp_head.0", when=("mlp_head.1.weight",)),  # before 1.4: LayerNorm(cls) == final norm, cls
    *wb("head", "mlp_head.1"),
    *wb("head", "mlp_head"),
    *wb("fc_norm", "linear_head.0", when=("linear_head.1.weight",)),  # SimpleViT before 1.4: norm of the mean
    *wb("head", "linear_head.1"),
    *wb("head", "linear_head"),
])


def _heads_of_64(state: dict) -> int:
    """num_heads = (heads x dim_head) / 64: the width of q in to_qkv (3 heads dim_head rows) over dim_head=64."""
    return max(1, state["blocks.0.attn.qkv.weight"].shape[0] // 3 // 64)


_heads_of_64.__name__ = "attn width // 64"
_HEADS = Assume("num_heads", _heads_of_64, "the number of heads is not in vit-pytorch weights (to_qkv holds heads "
                "x dim_head rows); assumed dim_head=64, vit-pytorch's default, i.e. num_heads = (heads x dim_head) "
                "/ 64; pass num_heads= if the model set heads and dim_head otherwise")


def _cls_3d(state: dict) -> bool:
    return getattr(state.get("cls_token"), "ndim", 0) == 3


VIT_PYTORCH = Format(
    name="vit_pytorch", markers=("to_patch_embedding.1.weight", "transformer.layers.0.*to_qkv.weight", "pos_embedding"),
    label="vit-pytorch ViT", rules=_VIT_PYTORCH_RULES,
    defaults={"norm_eps": 1e-5},  # nn.LayerNorm's default
    assume=(_HEADS, Assume("pool", "cls", "vit-pytorch before 1.16 does not store whether the model pooled its "
                           "[CLS] token or the mean of all tokens (which vitkit cannot reproduce); assumed "
                           "pool='cls', its default", test=_cls_3d)))

VIT_PYTORCH_SIMPLE = Format(
    name="vit_pytorch_simple", markers=("to_patch_embedding.1.weight", "transformer.layers.0.*to_qkv.weight",
                                        "linear_head*"),
    label="vit-pytorch SimpleViT", rules=_VIT_PYTORCH_RULES,
    defaults={"norm_eps": 1e-5, "pos_embed": "sincos2d", "class_token": False, "pool": "mean"},
    assume=(_HEADS, Assume("img_size", 224, "SimpleViT stores no position table, so its weights do not tell the "
                           "image size; assumed 224; pass img_size=")))

# vit-pytorch before 0.7: patch_to_embedding, Residual(PreNorm(...)) blocks, and heads of their own (0.0.1 -
# 0.1.0: Linear, GELU, Linear on the raw [CLS] token; 0.2.x: LayerNorm, Linear, GELU, Linear; from 0.3:
# LayerNorm, Linear). Releases up to 0.6.5 scaled attention by dim ** -0.5 (the model's width), 0.6.7 and 0.6.8
# by dim_head ** -0.5 (commit 85314cf); the weights of 0.3 - 0.6.8 cannot tell which, so dim's is assumed.
_OLD_HEAD = (
    *wb("pre_logits.fc", "mlp_head.0", when=("mlp_head.2.weight",)),  # 0.0.1 - 0.1.0
    *wb("head", "mlp_head.2"),
    *wb("pre_logits.fc", "mlp_head.1", when=("mlp_head.3.weight",)),  # 0.2.x, after mlp_head.0's LayerNorm
    *wb("head", "mlp_head.3"),
)
_MLP_HEAD = ("mlp_head.2.weight", "mlp_head.3.weight")
_OLD_OUT = "transformer.layers.0.0.fn.fn.to_out.weight"  # before 0.3


def _scale_by_dim(state: dict) -> float:
    return float(state["patch_embed.proj.weight"].shape[0]) ** -0.5


_scale_by_dim.__name__ = "dim ** -0.5"


def _old_facts(raw: dict) -> dict:
    """What the keys of a release before 0.3 prove: an MLP head with GELU, attention scaled by dim ** -0.5."""
    facts = {"head_act": "gelu"} if any(k in raw for k in _MLP_HEAD) else {}
    if facts or _OLD_OUT in raw:
        facts["attn_scale"] = float(raw["patch_to_embedding.weight"].shape[0]) ** -0.5
    return facts


VIT_PYTORCH_0 = Format(
    name="vit_pytorch_0", markers=("patch_to_embedding.weight", "transformer.layers.0.*to_qkv.weight",
                                   "pos_embedding"),
    label="vit-pytorch 0.x ViT",
    rules=(Rule("patch_embed.proj.weight", ("patch_to_embedding.weight",), patches),
           Rule("patch_embed.proj.bias", ("patch_to_embedding.bias",)), *_OLD_HEAD, *_VIT_PYTORCH_RULES),
    facts=_old_facts, defaults={"norm_eps": 1e-5},
    assume=(_HEADS, Assume("attn_scale", _scale_by_dim, "vit-pytorch 0.3 - 0.6.8 weights do not tell the attention "
                           "scale: releases up to 0.6.5 multiplied q k^T by dim ** -0.5, 0.6.7 and 0.6.8 by "
                           "dim_head ** -0.5; assumed dim ** -0.5; pass attn_scale=None for 0.6.7 or 0.6.8"),
            Assume("pool", "cls", "vit-pytorch 0.5 - 0.6.8 does not store whether the model pooled its [CLS] token or "
                   "the mean of all tokens (which vitkit cannot reproduce); assumed pool='cls', its default",
                   test=lambda raw: not any(k in raw for k in _MLP_HEAD) and _OLD_OUT not in raw)),
    doc="the attention scale and the MLP head's GELU follow the release the keys prove (before 0.3: dim ** -0.5, "
        "Linear-GELU-Linear heads); 0.3 - 0.6.8 assume dim ** -0.5 with a warning")

# PyTorch's nn.TransformerEncoder(Layer) under any attribute ({enc}), with common names around it.
_TL = "{enc}layers.{i}."
_PATCH = ("patch_embed", "patch_embedding", "patch_embeddings", "patch_embed.conv", "conv_proj", "conv1", "stem",
          "to_patch_embedding", "patchify", "embedding")
_CLS = ("cls_token", "class_token", "cls_embedding", "class_embedding", "cls")
_POS = ("pos_embed", "pos_embedding", "position_embedding", "position_embeddings", "positional_embedding",
        "pos_emb")
_NORM = ("{enc}norm", "norm", "ln", "layer_norm", "layernorm", "final_norm", "ln_f", "ln_post")
_HEAD = ("head", "fc", "classifier", "mlp_head", "linear_head", "heads.head", "out")
# Heads in an nn.Sequential named mlp_head: LayerNorm + Linear (0, 1), Linear-act-Linear (0, 2), Linear-act-
# Dropout-Linear (0, 3), LayerNorm + Linear-act-Linear (0, 1, 3). A LayerNorm is vitkit's head_norm (after the
# final norm), the first of two Linears its pre_logits.fc; the activation is code, so it is assumed (GELU).
_LN_HEAD = (
    *wb("head_norm", "mlp_head.0", when=("mlp_head.1.weight", "mlp_head.3.weight")),
    *wb("pre_logits.fc", "mlp_head.1", when=("mlp_head.3.weight",)),
    *wb("pre_logits.fc", "mlp_head.0", when=("mlp_head.2.weight",), unless=("mlp_head.1.weight",)),
    *wb("pre_logits.fc", "mlp_head.0", when=("mlp_head.3.weight",), unless=("mlp_head.1.weight",)),
    *wb("head", "mlp_head.3"),
    *wb("head", "mlp_head.2", unless=("mlp_head.1.weight",)),
    *wb("head_norm", "mlp_head.0", when=("mlp_head.1.weight",), unless=("mlp_head.2.weight",)),
    *wb("head", "mlp_head.1", unless=("mlp_head.2.weight",)))


def _mlp_head(raw: dict) -> bool:
    return any(k.startswith(("mlp_head.2.", "mlp_head.3.")) for k in raw)


_HEAD_ACT = Assume("head_act", "gelu", "the activation between the head's two Linears (mlp_head) is not in the "
                   "weights; assumed head_act='gelu'; pass head_act='relu', 'tanh' ... if it was another",
                   test=_mlp_head)
TORCH_NN = Format(
    name="torch_nn", markers=("*layers.0.self_attn.in_proj_weight",), label="nn.TransformerEncoder",
    placeholders={"enc": r"^(.*?)layers\.0\.self_attn\.in_proj_weight$"},
    rules=tuple([
        Rule("blocks.{i}.attn.qkv.weight", (_TL + "self_attn.in_proj_weight",)),  # q, k, v rows like timm
        Rule("blocks.{i}.attn.qkv.bias", (_TL + "self_attn.in_proj_bias",)),
        *wb("blocks.{i}.attn.proj", _TL + "self_attn.out_proj"),
        Rule("blocks.{i}.attn.proj.bias", (_TL + "self_attn.out_proj.weight",), zeros),  # bias=False
        *wb("blocks.{i}.norm1", _TL + "norm1"),
        *wb("blocks.{i}.mlp.fc1", _TL + "linear1"),
        *wb("blocks.{i}.mlp.fc2", _TL + "linear2"),
        *wb("blocks.{i}.norm2", _TL + "norm2"),
        *(r for name in _PATCH for r in wb("patch_embed.proj", name)),  # a Conv2d (D, C, P, P)
        *(Rule("cls_token", (name,), token) for name in _CLS),
        *(Rule("pos_embed", (name,), pos) for name in _POS),
        *(r for name in _NORM for r in wb("norm", name)),
        *_LN_HEAD,
        *(r for name in _HEAD for r in wb("head", name)),
    ]),
    defaults={"norm_eps": 1e-5},  # layer_norm_eps's default
    assume=(Assume("norm_style", "post", "nn.TransformerEncoderLayer's norm_first is not in its weights; assumed "
                   "norm_style='post' (norm_first=False, PyTorch's default); pass norm_style='pre' for "
                   "norm_first=True"),
            Assume("act", "relu", "its activation is not in the weights either; assumed act='relu' (PyTorch's "
                   "default); pass act='gelu' for activation='gelu'"), _HEAD_ACT))

# Pre-norm blocks written by hand around nn.MultiheadAttention ({stk}{i}.{attn}.in_proj_weight), as tutorials write
# them (e.g. the UvA deep-learning course's AttentionBlock: layer_norm_1, attn, layer_norm_2, linear = Linear,
# GELU, Dropout, Linear, Dropout), with the common names of the norms and the MLP's linears.
_MB = "{stk}{i}."
_NORM1 = ("norm1", "ln1", "ln_1", "layer_norm_1", "layernorm1", "norm_1", "attn_norm", "ln_attn", "norm_attn")
_NORM2 = ("norm2", "ln2", "ln_2", "layer_norm_2", "layernorm2", "norm_2", "mlp_norm", "ffn_norm", "ff_norm",
          "ln_mlp", "norm_mlp")
_MLPS = ("mlp", "linear", "ff", "ffn", "feed_forward", "feedforward", "mlp_block")
_FC = (("0", "3"), ("0", "2"), ("fc1", "fc2"), ("linear1", "linear2"), ("dense1", "dense2"), ("lin1", "lin2"))
MHA_PRENORM = Format(
    name="mha_prenorm", markers=("*0.*.in_proj_weight",), unless=("*0.linear1.weight",),  # torch's encoder layer has linear1
    label="nn.MultiheadAttention blocks",
    placeholders={"stk": r"^(.*?)0\.\w+\.in_proj_weight$", "attn": r"^.*?0\.(\w+)\.in_proj_weight$"},
    rules=tuple([
        Rule("blocks.{i}.attn.qkv.weight", (_MB + "{attn}.in_proj_weight",)),
        Rule("blocks.{i}.attn.qkv.bias", (_MB + "{attn}.in_proj_bias",)),
        *wb("blocks.{i}.attn.proj", _MB + "{attn}.out_proj"),
        Rule("blocks.{i}.attn.proj.bias", (_MB + "{attn}.out_proj.weight",), zeros),  # bias=False
        *(r for name in _NORM1 for r in wb("blocks.{i}.norm1", _MB + name)),
        *(r for name in _NORM2 for r in wb("blocks.{i}.norm2", _MB + name)),
        *(r for mlp in _MLPS for a, b in _FC for r in (*wb("blocks.{i}.mlp.fc1", f"{_MB}{mlp}.{a}",
                                                            when=(f"{_MB}{mlp}.{b}.weight",)),
                                                         *wb("blocks.{i}.mlp.fc2", f"{_MB}{mlp}.{b}"))),
        *(r for name in _PATCH for r in wb("patch_embed.proj", name)),  # a Conv2d (D, C, P, P)
        *(Rule("cls_token", (name,), token) for name in _CLS),
        *(Rule("pos_embed", (name,), pos) for name in _POS),
        *(r for name in _NORM if "{" not in name for r in wb("norm", name)),
        *_LN_HEAD,
        *(r for name in _HEAD for r in wb("head", name)),
    ]),
    defaults={"norm_eps": 1e-5},  # nn.LayerNorm's default
    assume=(Assume("norm_style", "pre", "blocks around nn.MultiheadAttention do not store where their norms sit; "
                   "assumed norm_style='pre' (x + attn(norm1(x))); pass norm_style='post' for x = norm1(x + attn(x))"),
            Assume("act", "gelu", "nor their MLP's activation; assumed act='gelu'; pass act='relu' (or another) if "
                   "it was not"), _HEAD_ACT),
    doc="the blocks' norms and MLP are found under common names (norm1 / ln_1 / layer_norm_1 ..., mlp / ff / "
        "linear with indices 0 and 3 or 2, or fc1 / fc2); a Linear patch embedding needs a rule (its patch order "
        "is not in the weights)")
