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
    # patch dropout acts in training only: the computation at inference is unchanged
    unknown += _patch_embed(m.patch_embed)
    norms = [x for x in m.modules() if _is_norm(x)]
    eps, kinds = {x.eps for x in norms}, {_NORMS.get(type(x).__name__) for x in norms}
    for x in norms:
        unknown += _norm(x)
    block = m.blocks[0]
    for b in m.blocks:
        unknown += _block(b, m.num_prefix_tokens)
    heads = block.attn.num_heads
    rope = _rope(m, block.attn, unknown) if getattr(m, "rope", None) is not None else {}
    pool_heads = None
    if getattr(m, "attn_pool", None) is not None:
        unknown += _attn_pool(m.attn_pool)
        if act_name(m.attn_pool.mlp.act) != act_name(block.mlp.act):
            unknown.append("an attention pool whose activation differs from the blocks'")
        pool_heads = m.attn_pool.num_heads
    if not isinstance(getattr(m, "head", nn.Identity()), (nn.Linear, nn.Identity)):
        unknown.append(f"a {type(m.head).__name__} head")
    if len(eps) > 1:
        unknown.append(f"norms with different eps ({', '.join(map(str, sorted(eps)))})")
    if len(kinds) > 1:
        unknown.append("norms of different kinds")
    unknown = list(dict.fromkeys(unknown))  # once each, in order
    if unknown:
        raise CheckpointError(f"{model_name(m)} has {'; '.join(unknown)}, which vitkit does not compute; it was "
                              "not loaded")
    hints = {"num_heads": heads, "pool": _POOLS[pool], "no_embed_class": bool(getattr(m, "no_embed_class", False)),
             "norm_eps": block.norm1.eps, "act": act_name(block.mlp.act), "norm_layer": kinds.pop(),
             "dynamic_img_size": bool(getattr(m, "dynamic_img_size", False)), "rope": "none", **rope}
    # timm's Eva MAP head attends over every token, its ViT's pool over the patches unless pool_include_prefix
    if m.num_prefix_tokens and pool != "token" and (getattr(m, "pool_include_prefix", False) or
                                                     (cls == "Eva" and pool_heads is not None)):
        hints["pool_include_prefix"] = True
    if pool_heads is not None and pool_heads != heads:
        hints["attn_pool_heads"] = pool_heads
    img_size = getattr(m.patch_embed, "img_size", None)
    if img_size is not None:
        hints["img_size"] = tuple(img_size)
    if getattr(m, "pos_embed", None) is None:
        hints["pos_embed"] = "none"
    return hints


_NORMS = {"LayerNorm": "layernorm", "RmsNorm": "rmsnorm", "RMSNorm": "rmsnorm"}
# timm's rotary embeddings: class -> vitkit's flavour, and whether attention rotates in the half layout
_ROPES = {"RotaryEmbeddingDinoV3": ("dinov3", True), "RotaryEmbeddingCat": ("axial", False),
          "RotaryEmbeddingMixed": ("mixed", False)}


def _is_norm(x: nn.Module) -> bool:
    return isinstance(x, nn.LayerNorm) or ("Norm" in type(x).__name__ and hasattr(x, "eps"))


def _norm(x: nn.Module) -> list[str]:
    name = type(x).__name__
    if isinstance(x, nn.LayerNorm) and name not in _NORMS:
        name = "LayerNorm"  # timm's LayerNorm subclasses PyTorch's
    if name not in _NORMS:
        return [f"{name} norms"]
    if not getattr(x, "elementwise_affine", True) or getattr(x, "weight", None) is None:
        return ["norms without a learned scale"]
    if name == "LayerNorm" and getattr(x, "bias", None) is None:
        return ["LayerNorms without a bias"]
    return []


def _rope(m: nn.Module, attn: nn.Module, unknown: list[str]) -> dict:
    """The rope_* fields of a timm rotary embedding (RoPE-Mixed's frequencies are weights: its key holds them)."""
    r = m.rope
    kind, half = _ROPES.get(type(r).__name__, (None, None))
    if kind is None:
        unknown.append(f"a rotary position embedding of kind {type(r).__name__}")
        return {}
    if bool(getattr(r, "rotate_half", half)) != half or bool(getattr(attn, "rotate_half", half)) != half:
        unknown.append(f"a {type(r).__name__} applied in the {'half' if not half else 'interleaved'} layout")
    if getattr(m, "rope_mixed", False) != (kind == "mixed"):
        unknown.append("a rotary embedding used other than its kind")
    out = {"rope": kind, "rope_temperature": float(r.temperature), "rope_grid_indexing": r.grid_indexing}
    if kind == "dinov3":
        if r.min_period is not None or r.max_period is not None:
            unknown.append("a DINOv3 rotary embedding parametrised by min/max periods")
        out.update(rope_normalize=r.normalize_coords, rope_grid_offset=float(r.grid_offset))
    elif kind == "axial":
        if r.in_pixels or r.grid_type != "index":
            unknown.append("a rotary embedding over pixel coordinates (in_pixels)")
        out["rope_grid_offset"] = float(r.grid_offset)
        if r.ref_feat_shape is not None:
            out["rope_ref_grid"] = tuple(int(v) for v in r.ref_feat_shape)
    return out


def _patch_embed(pe: nn.Module) -> list[str]:
    out = []
    if type(pe).__name__ != "PatchEmbed":
        out.append(f"a {type(pe).__name__} patch embedding")
    if getattr(pe, "dynamic_img_pad", False):
        out.append("a patch embedding that pads images (dynamic_img_pad)")
    return out


def _block(b: nn.Module, prefix: int) -> list[str]:
    cls = type(b).__name__
    if cls not in ("Block", "EvaBlock"):
        return [f"{cls} blocks"]
    out = _attention(b.attn, prefix)
    if cls == "EvaBlock" and (b.gamma_1 is None) != (b.gamma_2 is None):
        out.append("a layer scale on one branch only")
    out += _mlp(b.mlp)
    return out


def _attention(a: nn.Module, prefix: int) -> list[str]:
    out = []
    cls = type(a).__name__
    if cls not in ("Attention", "EvaAttention", "AttentionRope"):
        out.append(f"{cls} attention")
    if not isinstance(getattr(a, "q_norm", nn.Identity()), nn.Identity):
        out.append("q/k norms")
    if getattr(a, "gate", None) is not None:
        out.append("a gated attention")
    if getattr(a, "num_kv_heads", a.num_heads) != a.num_heads:
        out.append("grouped-query attention")
    # q, k, v wider or narrower than the model (attn_head_dim): vitkit's attn_dim, inferred from the shapes, when
    # the heads split it evenly (timm's Attention keeps attn_dim, Eva's head_dim, BEiT's Attention neither)
    width = getattr(a, "attn_dim", None) or a.num_heads * getattr(a, "head_dim", a.proj.in_features // a.num_heads)
    if width != a.proj.in_features or a.proj.in_features % a.num_heads:
        out.append("an attention whose heads do not split its width evenly")
    if getattr(a, "num_prefix_tokens", prefix) != prefix:
        out.append("a rotary embedding that skips another number of tokens than the prefix")
    return out


def _mlp(mlp: nn.Module) -> list[str]:
    cls = type(mlp).__name__
    out = []
    if cls not in ("Mlp", "GluMlp", "SwiGLUPacked", "SwiGLU"):
        return [f"a {cls} MLP"]
    if act_name(mlp.act) is None:
        out.append(f"the activation {type(mlp.act).__name__}")
    if cls in ("GluMlp", "SwiGLUPacked") and (getattr(mlp, "gate_last", False) or getattr(mlp, "chunk_dim", -1) != -1):
        out.append("a gated MLP gating with its second half")
    first = mlp.fc1_g if cls == "SwiGLU" else mlp.fc1
    if (first.bias is None) != (mlp.fc2.bias is None):
        out.append("an MLP with a bias on one of its linears only")
    return out


def _attn_pool(p: nn.Module) -> list[str]:
    out = []
    if type(p).__name__ != "AttentionPoolLatent":
        return [f"a {type(p).__name__} pool"]
    if p.latent_len != 1 or getattr(p, "pos_embed", None) is not None or getattr(p, "pool", "token") != "token":
        out.append("an attention pool with several latents or its own position embedding")
    if not isinstance(getattr(p, "q_norm", nn.Identity()), nn.Identity):
        out.append("q/k norms in the attention pool")
    if isinstance(getattr(p, "q", None), nn.Identity) or p.kv.bias is None:
        out.append("an attention pool without a query projection or biases")
    return out
