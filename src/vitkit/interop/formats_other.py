"""Key tables of ViTs written by hand: lucidrains' vit-pytorch (``ViT`` and ``SimpleViT``, every layout since
0.7) and models built on PyTorch's own ``nn.TransformerEncoder`` with a patch embedding, [CLS] token and
position embedding of common names. One row per key."""

from __future__ import annotations

from .rules import Assume, Format, Rule, heads_of, patch_norm, patches, pos, token, wb, zeros

# vit-pytorch. Since 1.0 the patch embedding is LayerNorm(P*P*C), Linear, LayerNorm(D) (Sequential
# indices 1, 2, 3; 0 is the einops Rearrange); before, index 1 is the Linear. Before 1.4 each block branch
# is PreNorm(fn=...) (keys .0.fn.to_qkv, .1.norm, .1.fn.net.*); since 1.4 the norm sits inside (.1.net.0).
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
    *wb("norm", "transformer.norm"),  # since 1.4
    *wb("norm", "mlp_head.0", when=("mlp_head.1.weight",)),  # before 1.4: LayerNorm(cls) == final norm, cls
    *wb("head", "mlp_head.1"),
    *wb("head", "mlp_head"),
    *wb("fc_norm", "linear_head.0", when=("linear_head.1.weight",)),  # SimpleViT before 1.4: norm of the mean
    *wb("head", "linear_head.1"),
    *wb("head", "linear_head"),
])
_HEADS = Assume("num_heads", heads_of(64), "the number of heads is not in vit-pytorch weights (to_qkv holds heads "
                "x dim_head rows); assumed dim_head=64, vit-pytorch's default, i.e. num_heads = dim / 64; pass "
                "num_heads= if the model set heads and dim_head otherwise")


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

# PyTorch's nn.TransformerEncoder(Layer) under any attribute ({enc}), with common names around it.
_TL = "{enc}layers.{i}."
_PATCH = ("patch_embed", "patch_embedding", "patch_embeddings", "patch_embed.conv", "conv_proj", "conv1", "stem",
          "to_patch_embedding", "patchify", "embedding")
_CLS = ("cls_token", "class_token", "cls_embedding", "class_embedding", "cls")
_POS = ("pos_embed", "pos_embedding", "position_embedding", "position_embeddings", "positional_embedding",
        "pos_emb")
_NORM = ("{enc}norm", "norm", "ln", "layer_norm", "layernorm", "final_norm", "ln_f", "ln_post")
_HEAD = ("head", "fc", "classifier", "mlp_head", "linear_head", "heads.head", "out")
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
        *(r for name in _HEAD for r in wb("head", name)),
    ]),
    defaults={"norm_eps": 1e-5},  # layer_norm_eps's default
    assume=(Assume("norm_style", "post", "nn.TransformerEncoderLayer's norm_first is not in its weights; assumed "
                   "norm_style='post' (norm_first=False, PyTorch's default); pass norm_style='pre' for "
                   "norm_first=True"),
            Assume("act", "relu", "its activation is not in the weights either; assumed act='relu' (PyTorch's "
                   "default); pass act='gelu' for activation='gelu'")))
