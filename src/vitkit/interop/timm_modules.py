"""What a live timm model computes, in :class:`~vitkit.config.ViTConfig`'s field names, read off its modules.

A timm model loads only when every piece of it is one vitkit computes: the model class, its pooling, the
patch embedding, each block's norms, attention and MLP, the attention pool and the head. Anything else (a
rotary position embedding, q/k norms, a gated or grouped-query attention, post-norm blocks ...) is refused with
one sentence naming all of it, before any weight is used, so that a model never "loads" computing something
else. The same reading serves timm models built on the meta device from a Hub folder's ``config.json``.
"""

from __future__ import annotations

from torch import nn

from ..errors import CheckpointError

_MODELS = ("VisionTransformer", "VisionTransformerDistilled", "Eva", "Beit")
_POOLS = {"token": "cls", "avg": "mean", "map": "map"}
_ACTS = {"GELU": None, "GELUTanh": "gelu_tanh", "GELU_tanh": "gelu_tanh", "ReLU": "relu", "QuickGELU": "quick_gelu",
         "SiLU": "silu", "Swish": "silu"}


def act_name(act: nn.Module) -> str | None:
    """vitkit's name of an activation module, or None when vitkit has no such activation."""
    name = type(act).__name__
    if name == "GELU":
        return "gelu_tanh" if getattr(act, "approximate", "none") == "tanh" else "gelu"
    return _ACTS.get(name)


def model_name(m: nn.Module) -> str:
    """How messages name a timm model: its architecture name when it has one, else its class."""
    cfg = getattr(m, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture") if isinstance(cfg, dict) else getattr(cfg, "architecture", None)
    return f"timm's {arch}" if arch else f"timm's {type(m).__name__}"


def timm_architecture(m: nn.Module) -> dict:
    """The ViTConfig fields a timm model's modules prove (heads, pooling, eps, activation, image size ...).

    Raises one CheckpointError listing every piece vitkit does not compute."""
    unknown: list[str] = []
    cls = type(m).__name__
    if cls not in _MODELS:
        raise CheckpointError(f"{model_name(m)} is a timm {cls}, which is not a model vitkit computes (vitkit reads "
                              f"timm's {', '.join(_MODELS)}); it was not loaded")
    pool = getattr(m, "global_pool", "token")
    if pool not in _POOLS:
        unknown.append(f"global_pool={pool!r} (vitkit pools 'token', 'avg' or 'map')")
    if getattr(m, "pool_include_prefix", False):
        unknown.append("pooling that includes the prefix tokens (pool_include_prefix)")
    if getattr(m, "rope", None) is not None:
        unknown.append(f"a rotary position embedding ({type(m.rope).__name__})")
    if getattr(m, "patch_drop", None) is not None and not isinstance(m.patch_drop, nn.Identity):
        pass  # patch dropout acts in training only: the computation at inference is unchanged
    unknown += _patch_embed(m.patch_embed)
    norms = [x for x in m.modules() if _is_norm(x)]
    eps = {x.eps for x in norms}
    for x in norms:
        unknown += _norm(x)
    block = m.blocks[0]
    for b in m.blocks:
        unknown += _block(b)
    heads = block.attn.num_heads
    pool_mlp = None
    if getattr(m, "attn_pool", None) is not None:
        unknown += _attn_pool(m.attn_pool, heads)
        pool_mlp = m.attn_pool.mlp.fc1.out_features
        if pool_mlp != _mlp_hidden(block.mlp):
            unknown.append(f"an attention pool whose MLP ({pool_mlp} wide) differs from the blocks'")
    if not isinstance(getattr(m, "head", nn.Identity()), (nn.Linear, nn.Identity)):
        unknown.append(f"a {type(m.head).__name__} head")
    if len(eps) > 1:
        unknown.append(f"norms with different eps ({', '.join(map(str, sorted(eps)))})")
    unknown = list(dict.fromkeys(unknown))  # once each, in order
    if unknown:
        raise CheckpointError(f"{model_name(m)} has {'; '.join(unknown)}, which vitkit does not compute; it was "
                              "not loaded")
    hints = {"num_heads": heads, "pool": _POOLS[pool], "no_embed_class": bool(getattr(m, "no_embed_class", False)),
             "norm_eps": block.norm1.eps, "act": act_name(block.mlp.act),
             "dynamic_img_size": bool(getattr(m, "dynamic_img_size", False))}
    img_size = getattr(m.patch_embed, "img_size", None)
    if img_size is not None:
        hints["img_size"] = tuple(img_size)
    if getattr(m, "pos_embed", None) is None:
        hints["pos_embed"] = "none"
    return hints


def _is_norm(x: nn.Module) -> bool:
    return isinstance(x, nn.LayerNorm) or ("Norm" in type(x).__name__ and hasattr(x, "eps"))


def _norm(x: nn.Module) -> list[str]:
    if not isinstance(x, nn.LayerNorm):
        return [f"{type(x).__name__} norms"]
    if not x.elementwise_affine or getattr(x, "bias", None) is None:
        return ["LayerNorms without a learned scale or bias"]
    return []


def _patch_embed(pe: nn.Module) -> list[str]:
    out = []
    if type(pe).__name__ != "PatchEmbed":
        out.append(f"a {type(pe).__name__} patch embedding")
    if getattr(pe, "dynamic_img_pad", False):
        out.append("a patch embedding that pads images (dynamic_img_pad)")
    if not isinstance(getattr(pe, "norm", nn.Identity()), nn.Identity):
        out.append("a norm after the patch embedding")
    return out


def _block(b: nn.Module) -> list[str]:
    cls = type(b).__name__
    if cls not in ("Block", "EvaBlock"):
        return [f"{cls} blocks"]
    out = _attention(b.attn)
    if cls == "EvaBlock" and (b.gamma_1 is None) != (b.gamma_2 is None):
        out.append("a layer scale on one branch only")
    out += _mlp(b.mlp)
    return out


def _attention(a: nn.Module) -> list[str]:
    out = []
    cls = type(a).__name__
    if cls not in ("Attention", "EvaAttention"):
        out.append(f"{cls} attention")
    for name, what in (("q_norm", "q/k norms"), ("norm", "a norm inside the attention (scale_norm)")):
        if not isinstance(getattr(a, name, nn.Identity()), nn.Identity):
            out.append(what)
    if getattr(a, "gate", None) is not None:
        out.append("a gated attention")
    if getattr(a, "num_kv_heads", a.num_heads) != a.num_heads:
        out.append("grouped-query attention")
    if getattr(a, "qkv", None) is None:
        out.append("separate q, k and v projections")
    elif a.qkv.out_features != 3 * a.qkv.in_features:
        out.append("an attention wider or narrower than the model")
    if a.proj.bias is None:
        out.append("an attention projection without bias")
    if getattr(a, "qkv_bias_separate", False):
        pass  # adding the bias after the matmul changes rounding only
    return out


def _mlp(mlp: nn.Module) -> list[str]:
    cls = type(mlp).__name__
    out = []
    if cls not in ("Mlp", "GluMlp", "SwiGLUPacked"):
        return [f"a {cls} MLP"]
    if act_name(mlp.act) is None:
        out.append(f"the activation {type(mlp.act).__name__}")
    if cls != "Mlp" and getattr(mlp, "gate_last", False):
        out.append("a gated MLP gating with its second half")
    if not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity):
        out.append("a norm inside the MLP")
    if mlp.fc1.bias is None or mlp.fc2.bias is None:
        out.append("an MLP without biases")
    return out


def _mlp_hidden(mlp: nn.Module) -> int:
    return mlp.fc1.out_features


def _attn_pool(p: nn.Module, heads: int) -> list[str]:
    out = []
    if type(p).__name__ != "AttentionPoolLatent":
        return [f"a {type(p).__name__} pool"]
    if p.latent_len != 1 or getattr(p, "pos_embed", None) is not None or getattr(p, "pool", "token") != "token":
        out.append("an attention pool with several latents or its own position embedding")
    if not isinstance(getattr(p, "q_norm", nn.Identity()), nn.Identity):
        out.append("q/k norms in the attention pool")
    if p.num_heads != heads:
        out.append(f"an attention pool with {p.num_heads} heads on a {heads}-head trunk")
    return out
