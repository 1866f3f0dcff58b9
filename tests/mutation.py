"""Mutation checks for the parity tests: switch off one piece of a loaded vitkit model and check that the
comparison with the reference library then fails by a clear margin. A parity test that still passes with the
piece it covers switched off proves nothing about that piece (weights too weak, attention too flat, norm gains
near 0, only tiny logits compared).

    switch_off(model, piece)         the piece off, in place (an error if the model has no such piece)
    switched_off(model, piece)       the same on a deep copy
    pieces_of(config)                the pieces a ViTConfig has beyond a plain ViT
    output_of(module, run)           what a reference's submodule returns while run() runs (its tokens before
                                     the head, where the reference has no forward_features)
    assert_pieces_matter(model, x, tokens, logits, pieces)
                                     each piece off must move the tokens before the head (forward_features) and
                                     the logits by more than MARGIN away from the reference's ``tokens`` /
                                     ``logits``; a piece that acts after the tokens (pooling, fc_norm, heads)
                                     must leave the tokens as they are and move the logits. A swap of exact
                                     and tanh GELU, which differ by 5e-4 at most, gets GELU_TANH_MARGIN

Pieces (``PIECES``; "act:<name>" replaces every MLP activation by vitkit's ``<name>``):

    norm_pre         model.norm_pre -> Identity (CLIP's ln_pre)
    final_norm       model.norm -> Identity
    fc_norm          model.fc_norm -> Identity (after pooling: BEiT, MAE, CLIPA, timm's avg pool)
    layer_scale      blocks[i].ls1 / ls2 -> Identity (DINOv2, DeiT III, BEiT, open_clip ls_init_value)
    qv_bias          blocks[i].attn.q_bias and v_bias zeroed (BEiT)
    q_bias           blocks[i].attn.q_bias zeroed: changes only the attention weights (a sharpness probe)
    rel_pos_bias     blocks[i].attn.relative_position_bias -> None (BEiT)
    head_layout      the (heads, head_dim) split of q, k, v and proj regrouped as (head_dim, heads): a wrong
                     head layout or count; changes the output only where attention is not flat
    attn_scale       blocks[i].attn.scale = False: no 1/sqrt(head_dim) (vit-pytorch's dim_head scale)
    swiglu           the two halves of a gated MLP's fc1 swapped (DINOv2's w12 read up/gate instead of gate/up)
    registers        model.reg_token zeroed
    dist_token       model.dist_token zeroed (DeiT distilled)
    dist_head        model.head_dist -> model.head: the [CLS] head read for both tokens
    map              model.attn_pool -> mean of the patch tokens (SigLIP's MAP head)
    mean_pool        the head reads token 0 instead of the mean of the patch tokens
    patch_norm       model.patch_embed.norm -> Identity (vit-pytorch's LayerNorm after the projection)
    patch_pre_norm   model.patch_embed.pre_norm -> None (vit-pytorch's LayerNorm on each flattened patch)
    norm_order       every block pre-norm <-> post-norm (nn.TransformerEncoderLayer's norm_first)
    sincos_axes      the x and y halves of the fixed 2-d sin-cos table swapped (SimpleViT)
    pos_embed        model.pos_embed zeroed
    norm_eps         every LayerNorm's eps set to 1e-6 (Hugging Face ViT's 1e-12)
    rope             model.rope -> None: the blocks get no rotary embedding (DINOv3, EVA-02, PE, RoPE-ViT)
    rope_layout      the rotation's channel pairing flipped: DINOv3's half layout (m, m + d/2) <-> the
                     interleaved one (2j, 2j + 1) of EVA-02 / PE / RoPE-ViT
    rope_axes        the rotary embedding's rows and columns swapped ('ij' <-> 'xy' indexing)
    k_bias           blocks[i].attn.qkv's key bias zeroed: changes the output only under a rotary embedding
                     (a shift of every key by one vector leaves softmax alone, a rotated one does not)
    attn_norm        blocks[i].attn.norm -> Identity (EVA-CLIP's inner attention norm)
    mlp_norm         blocks[i].mlp.norm -> Identity (EVA-02's sub-LN on the hidden activations)
    embed_norm       model.patch_embed.norm -> Identity (AIMv2's RMSNorm after the patch embedding)
    rmsnorm          every RMSNorm -> a LayerNorm of the same gain, no bias (AIMv2)
    attn_pool_heads  the MAP head's attention split into the trunk's head count (or twice its own) instead
                     of its own (the Perception Encoder pools with 8 heads)
    pool_prefix      the MAP head (or mean) reads the patch tokens only, not [CLS] and the registers too (PE)
    attn_dim         an attention wider or narrower than the model scaled by the head width the model's width
                     implies (embed_dim / heads) instead of its own (attn_dim / heads)
    custom_scale     an attention scale other than head_width ** -0.5 (attn_scale) -> the default
    head_mlp         the activation of the head's hidden layer (pre_logits.act: tanh, GELU) -> Identity
    head_norm        model.head_norm (the LayerNorm of an LN + Linear head) -> Identity
    act:<name>       every MLP activation (blocks and MAP head) replaced by <name>
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from vitkit.config import ViTConfig
from vitkit.layers import ACTIVATIONS, GluMlp, LayerScale, PostNormBlock, TransformerBlock

MARGIN = 1e-3  # 100x the parity tolerance (1e-5)
# tanh-GELU vs GELU differ by 5e-4 at most per activation: a swap moves normed tokens by 3-5e-4 and a mean
# over the patch tokens (GAP) by 1-2e-4, out of MARGIN's reach; 5x the tolerance still fails the comparison
GELU_TANH_MARGIN = 5e-5


class _MeanOfTokens(nn.Module):
    """Stands in for the MAP head: (B, N, D) -> (B, D), the mean."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


def _need(ok: bool, model, piece: str, what: str) -> None:
    if not ok:
        raise ValueError(f"cannot switch off {piece!r}: the model has no {what} ({type(model).__name__}, "
                         f"config {model.config})")


def _is_norm(m) -> bool:
    return isinstance(m, (nn.LayerNorm, nn.RMSNorm))


def _norm_pre(model):
    _need(_is_norm(model.norm_pre), model, "norm_pre", "norm_pre norm")
    model.norm_pre = nn.Identity()


def _final_norm(model):
    _need(_is_norm(model.norm), model, "final_norm", "final norm (model.norm)")
    model.norm = nn.Identity()


def _fc_norm(model):
    _need(_is_norm(model.fc_norm), model, "fc_norm", "fc_norm norm")
    model.fc_norm = nn.Identity()


def _layer_scale(model):
    for blk in model.blocks:
        _need(isinstance(blk.ls1, LayerScale) and isinstance(blk.ls2, LayerScale), model, "layer_scale",
              "layer scale (blocks[i].ls1/ls2)")
        blk.ls1, blk.ls2 = nn.Identity(), nn.Identity()


@torch.no_grad()
def _qv_bias(model, names=("q_bias", "v_bias"), piece="qv_bias"):
    for blk in model.blocks:
        _need(blk.attn.q_bias is not None, model, piece, "query/value biases (attn.q_bias/v_bias)")
        for name in names:
            getattr(blk.attn, name).zero_()


def _rel_pos_bias(model):
    for blk in model.blocks:
        _need(blk.attn.relative_position_bias is not None, model, "rel_pos_bias", "relative position bias")
        blk.attn.relative_position_bias = None


@torch.no_grad()
def _head_layout(model):
    for blk in model.blocks:
        attn = blk.attn
        h, hd = attn.num_heads, attn.head_dim
        _need(h > 1 and hd > 1, model, "head_layout", "several heads of several channels")
        perm = torch.arange(h * hd).reshape(h, hd).T.flatten()  # channel c of head i -> head c's channel i
        w = attn.qkv.weight  # (3C, D)
        attn.qkv.weight.copy_(w.reshape(3, h * hd, -1)[:, perm].reshape_as(w))
        if attn.qkv.bias is not None:
            attn.qkv.bias.copy_(attn.qkv.bias.reshape(3, h * hd)[:, perm].flatten())
        for bias in (attn.q_bias, attn.v_bias):
            if bias is not None:
                bias.copy_(bias[perm])
        attn.proj.weight.copy_(attn.proj.weight[:, perm])


def _attn_scale(model):
    for blk in model.blocks:
        _need(blk.attn.scale, model, "attn_scale", "attention scale")
        blk.attn.scale = False
        blk.attn.attention.scale = False


@torch.no_grad()
def _swiglu(model):
    for blk in model.blocks:
        _need(isinstance(blk.mlp, GluMlp), model, "swiglu", "gated MLP")
        fc1 = blk.mlp.fc1
        half = fc1.out_features // 2
        for p in (fc1.weight, fc1.bias):
            if p is not None:
                p.copy_(torch.cat([p[half:], p[:half]]))


def _zero_param(attr: str, what: str):
    @torch.no_grad()
    def fn(model):
        p = getattr(model, attr, None)
        _need(p is not None, model, attr, what)
        p.zero_()
    return fn


def _dist_head(model):
    _need(model.dist_token is not None, model, "dist_head", "distillation head")
    model.head_dist = model.head


def _map(model):
    _need(model.attn_pool is not None, model, "map", "attention pool (attn_pool)")
    model.attn_pool = _MeanOfTokens()


def _mean_pool(model):
    _need(model.attn_pool is None and model.config.pool == "mean", model, "mean_pool", "mean pooling")
    model.pool = lambda x: x[:, 0]  # an instance attribute shadows VisionTransformer.pool


def _patch_norm(model):
    _need(isinstance(model.patch_embed.norm, nn.LayerNorm), model, "patch_norm", "patch_embed.norm")
    model.patch_embed.norm = nn.Identity()


def _patch_pre_norm(model):
    _need(model.patch_embed.pre_norm is not None, model, "patch_pre_norm", "patch_embed.pre_norm")
    model.patch_embed.pre_norm = None


def _norm_order(model):
    for blk in model.blocks:
        blk.__class__ = TransformerBlock if isinstance(blk, PostNormBlock) else PostNormBlock


@torch.no_grad()
def _sincos_axes(model):
    pos = getattr(model, "fixed_pos_embed", None)
    _need(pos is not None, model, "sincos_axes", "fixed sin-cos position table")
    half = pos.shape[-1] // 2
    model.fixed_pos_embed = torch.cat([pos[..., half:], pos[..., :half]], dim=-1)


def _norm_eps(model, eps: float = 1e-6):
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    _need(any(m.eps != eps for m in norms), model, "norm_eps", f"LayerNorm whose eps is not {eps}")
    for m in norms:
        m.eps = eps


def _rope(model):
    _need(getattr(model, "rope", None) is not None, model, "rope", "rotary embedding (model.rope)")
    model.rope = None


def _rope_layout(model):
    _need(getattr(model, "rope", None) is not None, model, "rope_layout", "rotary embedding (model.rope)")
    for blk in model.blocks:
        blk.attn.rope_half = not blk.attn.rope_half


def _rope_axes(model):
    _need(getattr(model, "rope", None) is not None, model, "rope_axes", "rotary embedding (model.rope)")
    model.rope.indexing = {"ij": "xy", "xy": "ij"}[model.rope.indexing]
    model.rope._cache.clear()  # the fixed flavours' angles were computed for the other order


@torch.no_grad()
def _k_bias(model):
    for blk in model.blocks:
        bias = blk.attn.qkv.bias
        _need(bias is not None, model, "k_bias", "key bias (attn.qkv.bias)")
        bias[blk.attn.attn_dim:2 * blk.attn.attn_dim].zero_()


def _attn_norm(model):
    for blk in model.blocks:
        _need(_is_norm(blk.attn.norm), model, "attn_norm", "inner attention norm (attn.norm)")
        blk.attn.norm = nn.Identity()


def _mlp_norm(model):
    for blk in model.blocks:
        _need(_is_norm(getattr(blk.mlp, "norm", None)), model, "mlp_norm", "MLP norm (mlp.norm)")
        blk.mlp.norm = nn.Identity()


def _embed_norm(model):
    pe = model.patch_embed
    _need(_is_norm(pe.norm) and pe.pre_norm is None, model, "embed_norm", "norm after the patch embedding")
    pe.norm = nn.Identity()


@torch.no_grad()
def _rmsnorm(model):
    found = [(parent, name, m) for parent in model.modules() for name, m in parent.named_children()
             if isinstance(m, nn.RMSNorm)]
    _need(bool(found), model, "rmsnorm", "RMSNorm")
    for parent, name, m in found:
        ln = nn.LayerNorm(m.normalized_shape, eps=m.eps, elementwise_affine=True)
        ln.weight.copy_(m.weight)
        ln.bias.zero_()
        setattr(parent, name, ln)


def _attn_pool_heads(model):
    pool = model.attn_pool
    _need(pool is not None and hasattr(pool, "num_heads"), model, "attn_pool_heads", "attention pool")
    dim = pool.latent.shape[-1]
    heads = model.config.num_heads if model.config.num_heads != pool.num_heads else 2 * pool.num_heads
    _need(dim % heads == 0, model, "attn_pool_heads", f"pool width divisible by {heads} heads")
    pool.num_heads, pool.head_dim = heads, dim // heads


def _pool_prefix(model):
    _need(model.config.pool != "cls" and model.config.pool_include_prefix, model, "pool_prefix",
          "pool that reads the prefix tokens")
    model.config.pool_include_prefix = False


def _attn_dim(model):
    cfg = model.config
    _need(cfg.attn_dim not in (None, cfg.embed_dim) and cfg.attn_scale is None, model, "attn_dim",
          "attention wider or narrower than the model, scaled by its head width")
    for blk in model.blocks:
        blk.attn.scale = blk.attn.attention.scale = (cfg.embed_dim / cfg.num_heads) ** -0.5


def _custom_scale(model):
    _need(model.config.attn_scale is not None, model, "custom_scale", "attention scale of its own (attn_scale)")
    for blk in model.blocks:
        blk.attn.scale = blk.attn.attention.scale = True


def _head_mlp(model):
    _need(isinstance(model.pre_logits, nn.Sequential), model, "head_mlp", "hidden layer in the head (pre_logits)")
    model.pre_logits.act = nn.Identity()


def _head_norm(model):
    _need(_is_norm(model.head_norm), model, "head_norm", "norm before the head (head_norm)")
    model.head_norm = nn.Identity()


def _act(name: str):
    def fn(model):
        mlps = [blk.mlp for blk in model.blocks] + ([model.attn_pool.mlp] if model.attn_pool is not None else [])
        new = ACTIVATIONS[name]()
        for mlp in mlps:
            old = mlp.act
            same = type(old) is type(new) and getattr(old, "approximate", None) == getattr(new, "approximate", None)
            _need(not same, model, f"act:{name}", f"activation other than {name}")
            mlp.act = ACTIVATIONS[name]()
    return fn


# name: (switch it off in place, where it acts: "tokens" (before forward_features' output) or "head" (after))
PIECES = {
    "norm_pre": (_norm_pre, "tokens"),
    "final_norm": (_final_norm, "tokens"),
    "fc_norm": (_fc_norm, "head"),
    "layer_scale": (_layer_scale, "tokens"),
    "qv_bias": (_qv_bias, "tokens"),
    "q_bias": (lambda m: _qv_bias(m, ("q_bias",), "q_bias"), "tokens"),
    "rel_pos_bias": (_rel_pos_bias, "tokens"),
    "head_layout": (_head_layout, "tokens"),
    "attn_scale": (_attn_scale, "tokens"),
    "swiglu": (_swiglu, "tokens"),
    "registers": (_zero_param("reg_token", "register tokens"), "tokens"),
    "dist_token": (_zero_param("dist_token", "distillation token"), "tokens"),
    "dist_head": (_dist_head, "head"),
    "map": (_map, "head"),
    "mean_pool": (_mean_pool, "head"),
    "patch_norm": (_patch_norm, "tokens"),
    "patch_pre_norm": (_patch_pre_norm, "tokens"),
    "norm_order": (_norm_order, "tokens"),
    "sincos_axes": (_sincos_axes, "tokens"),
    "pos_embed": (_zero_param("pos_embed", "learned position embedding"), "tokens"),
    "norm_eps": (_norm_eps, "tokens"),
    "rope": (_rope, "tokens"),
    "rope_layout": (_rope_layout, "tokens"),
    "rope_axes": (_rope_axes, "tokens"),
    "k_bias": (_k_bias, "tokens"),
    "attn_norm": (_attn_norm, "tokens"),
    "mlp_norm": (_mlp_norm, "tokens"),
    "embed_norm": (_embed_norm, "tokens"),
    "rmsnorm": (_rmsnorm, "tokens"),
    "attn_pool_heads": (_attn_pool_heads, "head"),
    "pool_prefix": (_pool_prefix, "head"),
    "attn_dim": (_attn_dim, "tokens"),
    "custom_scale": (_custom_scale, "tokens"),
    "head_mlp": (_head_mlp, "head"),
    "head_norm": (_head_norm, "head"),
    **{f"act:{name}": (_act(name), "tokens") for name in ACTIVATIONS},
}


def switch_off(model: nn.Module, piece: str) -> nn.Module:
    """Switch ``piece`` off in ``model`` (in place) and return the model."""
    if piece not in PIECES:
        raise KeyError(f"unknown piece {piece!r}; known: {sorted(PIECES)}")
    PIECES[piece][0](model)
    return model


def switched_off(model: nn.Module, piece: str) -> nn.Module:
    """A deep copy of ``model`` with ``piece`` switched off."""
    return switch_off(copy.deepcopy(model), piece)


def pieces_of(config: ViTConfig) -> list[str]:
    """The pieces a config has beyond a plain ViT (the ones a preset or option test must show matter)."""
    act = {"quick_gelu": "act:gelu", "gelu_tanh": "act:gelu", "silu": "act:gelu", "relu": "act:gelu"}
    out = ["head_layout"]
    out += ["norm_pre"] * config.norm_pre
    out += ["layer_scale"] * (config.layer_scale_init is not None)
    out += ["qv_bias"] * (config.qkv_bias == "qv")
    out += ["rel_pos_bias"] * config.use_relative_position
    out += ["registers"] * (config.reg_tokens > 0)
    out += ["dist_token", "dist_head"] * config.distilled
    out += ["map"] * (config.pool == "map")
    out += ["mean_pool"] * (config.pool == "mean")
    out += ["fc_norm"] * (config.final_norm and config.use_fc_norm)
    out += ["swiglu"] * (config.mlp == "swiglu")
    out += ["patch_pre_norm", "patch_norm"] * config.patch_norm
    out += ["norm_order"] * (config.norm_style == "post")
    out += ["sincos_axes"] * (config.pos_embed == "sincos2d")
    out += [act[config.act]] if config.act in act else []
    rope = config.rope != "none"
    out += ["rope", "rope_layout", "rope_axes"] * rope
    out += ["k_bias"] * (rope and config.qkv_bias is True)  # a key bias matters only once rotated
    out += ["attn_norm"] * config.attn_norm
    out += ["mlp_norm"] * config.mlp_norm
    out += ["embed_norm"] * config.embed_norm
    out += ["rmsnorm"] * (config.norm_layer == "rmsnorm")
    out += ["attn_pool_heads"] * (config.pool == "map" and config.attn_pool_heads not in (None, config.num_heads))
    out += ["pool_prefix"] * (config.pool_include_prefix and config.num_prefix_tokens > 0)
    out += ["attn_dim"] * (config.attn_dim not in (None, config.embed_dim) and config.attn_scale is None)
    out += ["custom_scale"] * (config.attn_scale is not None)
    out += ["head_mlp"] * (config.head_hidden_dim is not None)
    out += ["head_norm"] * config.head_norm
    return out


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@torch.no_grad()
def output_of(module: nn.Module, run):
    """What ``module`` returned (its last call) while ``run()`` ran, e.g. a reference's token sequence."""
    seen = []
    handle = module.register_forward_hook(lambda m, args, out: seen.append(out))
    try:
        run()
    finally:
        handle.remove()
    assert seen, f"{type(module).__name__} was not called"
    return seen[-1]


def _margin(model: nn.Module, piece: str) -> float:
    """MARGIN, or GELU_TANH_MARGIN for a swap between the exact and the tanh GELU, which differ by 5e-4 at most."""
    gelus = {"act:gelu": "tanh", "act:gelu_tanh": "none"}  # the swap, and the approximation it replaces
    acts = [blk.mlp.act for blk in model.blocks]
    if piece in gelus and all(getattr(a, "approximate", None) == gelus[piece] for a in acts):
        return GELU_TANH_MARGIN
    return MARGIN


@torch.no_grad()
def assert_pieces_matter(model: nn.Module, x: torch.Tensor, tokens: torch.Tensor, logits: torch.Tensor,
                         pieces) -> dict[str, tuple[float, float]]:
    """With each piece switched off (on a copy), the model's tokens before the head (``forward_features``) and its
    output (``forward``) must differ from the reference's ``tokens`` and ``logits`` by more than MARGIN
    (GELU_TANH_MARGIN for a swap of exact and tanh GELU); a piece that acts after the tokens must leave them
    unchanged. One error names every piece that did not matter. Returns {piece: (tokens moved, logits moved)}."""
    assert pieces, "no pieces to check"
    own = model.forward_features(x)
    found, weak = {}, []
    for piece in pieces:
        margin = _margin(model, piece)
        mutant = switched_off(model, piece)  # in the model's own mode (train or eval)
        t = mutant.forward_features(x)
        d_tokens, d_logits = _diff(t, tokens), _diff(mutant.forward_head(t), logits)
        found[piece] = (d_tokens, d_logits)
        if PIECES[piece][1] == "head":
            if not torch.equal(t, own):
                weak.append(f"{piece} (acts after the tokens, yet changed them)")
            if d_logits <= margin:
                weak.append(f"{piece} (logits moved {d_logits:.2e} <= {margin:g})")
        elif d_tokens <= margin or d_logits <= margin:
            weak.append(f"{piece} (tokens moved {d_tokens:.2e}, logits {d_logits:.2e}; margin {margin:g})")
    assert not weak, f"the comparison still passes with these pieces switched off: {', '.join(weak)}"
    return found
