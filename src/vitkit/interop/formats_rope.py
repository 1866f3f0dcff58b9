"""Key tables of the rotary-embedding backbones of 2025-26 outside timm: facebookresearch/dinov3's hub files,
Hugging Face's DINOv3ViTModel and Aimv2VisionModel, and Meta's Perception Encoder files
(facebookresearch/perception_models). One row per key; the rotary embedding itself is in no weights but DINOv3's
periods, so each table says (``facts``, ``defaults``) how its family rotates."""

from __future__ import annotations

import dataclasses
import math
import re

import torch

from ..errors import CheckpointError
from ..layers.rope import dinov3_periods
from . import preprocess as pp
from .formats_clip import OPEN_CLIP
from .rules import Assume, Format, Profile, Require, Rule, cat, heads_of, kv_of_qkv, pos, q_of_qkv, token, wb

Tensor = torch.Tensor

# --------------------------------------------------------------------------------------------------------------
# DINOv3 (facebookresearch/dinov3 hub .pth, the layout timm's eva.checkpoint_filter_fn reads)


def _masked(bias: Tensor, mask: Tensor) -> tuple[Tensor, bool]:
    """LinearKMaskedBias: the bias the layer adds is bias * bias_mask; whether its key third is zero."""
    b = bias * mask
    n = b.shape[0] // 3
    return b, not b[n:2 * n].any()


def masked_q(bias: Tensor, mask: Tensor) -> Tensor | None:
    """The query bias of a masked qkv bias whose key third is zero (vitkit's qkv_bias='qv'), else none."""
    b, k_zero = _masked(bias, mask)
    return b[: b.shape[0] // 3] if k_zero else None


def masked_v(bias: Tensor, mask: Tensor) -> Tensor | None:
    b, k_zero = _masked(bias, mask)
    return b[2 * b.shape[0] // 3:] if k_zero else None


def masked_qkv(bias: Tensor, mask: Tensor) -> Tensor | None:
    """The whole masked bias when the mask leaves a key bias (then it matters: the rotation follows it)."""
    b, k_zero = _masked(bias, mask)
    return None if k_zero else b


def dinov3_rope(state: dict) -> dict:
    """Heads and rotary settings from ``rope_embed.periods`` (d/4,): head width d = 4 x len(periods); the periods
    are T^(4k/d), computed in float32 or stored rounded to bfloat16 (the hub files), and the temperature T is
    read back from them. Periods that follow no such schedule (e.g. DINOv3's min/max-period form) are refused."""
    periods, proj = state.get("rope_embed.periods"), state.get("patch_embed.proj.weight")
    if not isinstance(periods, Tensor) or not isinstance(proj, Tensor):
        return {}  # not DINOv3's layout (source= forced it): the load check names what does not fit
    periods = periods.float().flatten()
    width, head = proj.shape[0], 4 * periods.numel()
    if width % head:
        raise CheckpointError(f"its {periods.numel()} rotary periods make {head}-wide heads, which do not divide "
                              f"the width {width}; it was not loaded")
    for temperature in _temperatures(periods):
        for bf16 in (False, True):
            if torch.allclose(periods, dinov3_periods(head, temperature, bf16), rtol=1e-6, atol=0):
                return {"num_heads": width // head, "rope": "dinov3", "rope_temperature": temperature,
                        "rope_bf16_periods": bf16}
    raise CheckpointError(f"its rotary periods ({', '.join(f'{v:.4g}' for v in periods[:4].tolist())}, ...) follow "
                          "no schedule T^(4k/d) that vitkit computes (DINOv3's min/max-period form, or edited "
                          "periods); it was not loaded")


def _temperatures(periods: Tensor) -> list[float]:
    """Temperatures to try for periods T^(4k/d): the least-squares T of the periods itself, and the integers
    within 1% of it (bfloat16 rounding moves it by up to 0.4%), round numbers (100, 1000 ...) first."""
    exponents = torch.arange(periods.numel(), dtype=torch.float64) / periods.numel()  # 4k/d
    if periods.numel() < 2 or (periods <= 0).any():
        return [100.0]
    guess = math.exp(float((exponents * periods.double().log()).sum() / (exponents ** 2).sum()))
    near = range(max(1, math.floor(guess * 0.99)), math.ceil(guess * 1.01) + 1) if guess < 1e5 else ()

    def zeros(t: int) -> int:
        return len(str(t)) - len(str(t).rstrip("0"))
    return [float(t) for t in sorted(near, key=lambda t: (-zeros(t), abs(t - guess)))] + [guess]


_DB = "blocks.{i}."
DINOV3 = Format(
    name="dinov3", markers=("rope_embed.periods", "patch_embed.proj.weight"), label="DINOv3 (facebookresearch)",
    rules=tuple([
        Rule("reg_token", ("storage_tokens",), token),  # (1, 4, D), between [CLS] and the patches
        # LinearKMaskedBias: the hub files' mask zeroes the key third, so q and v biases remain (qkv_bias='qv')
        Rule(_DB + "attn.q_bias", (_DB + "attn.qkv.bias", _DB + "attn.qkv.bias_mask"), masked_q),
        Rule(_DB + "attn.v_bias", (_DB + "attn.qkv.bias", _DB + "attn.qkv.bias_mask"), masked_v),
        Rule(_DB + "attn.qkv.bias", (_DB + "attn.qkv.bias", _DB + "attn.qkv.bias_mask"), masked_qkv),
        # SwiGLUFFN (S+, L+, H+, 7B): silu(w1 x) * w2 x -> w3, i.e. vitkit's packed fc1 = [gate; value]
        *wb(_DB + "mlp.fc1", _DB + "mlp.w1", _DB + "mlp.w2", fn=cat),
        *wb(_DB + "mlp.fc2", _DB + "mlp.w3"),
    ]),  # cls_token, patch_embed.proj, norm1/2, attn.qkv/proj, ls1/ls2.gamma, mlp.fc1/fc2, norm: vitkit's names
    prefixes=("module.", "teacher.backbone.", "student.backbone.", "backbone."), scoped_prefix=True,
    # masked-image modelling, the 7B's local-crop norm (training only), EUPE's distillation heads; the periods
    # are read by dinov3_rope; an untied cls_norm is refused below
    ignore=(r"^mask_token$", r"^local_cls_norm\.", r"^projectors\.", r"^rope_embed\.periods$", r"^cls_norm\."),
    facts=dinov3_rope,
    defaults={"norm_eps": 1e-5, "dynamic_img_size": True, "img_size": 224},  # "layernormbf16"; any image size
    require=(Require((), "its [CLS] and storage tokens have a final norm of their own (cls_norm: "
                     "untie_cls_and_patch_norms), and vitkit normalises every token with one norm",
                     lambda raw: "cls_norm.weight" in raw),),
    profiles=(Profile("DINOv3", preprocess=pp.DINOV3),),
    doc="heads (d = 4 x len(periods)), the temperature and bfloat16 rounding come from `rope_embed.periods`, and "
        "the rotation uses them as the original does (timm and transformers recompute them in float32); the mask "
        "token, `local_cls_norm` (7B, local crops in training) and `projectors.*` (EUPE) are dropped; pools [CLS] "
        "(`x_norm_clstoken`; timm's default is the mean); the coordinate augmentation (`rescale_coords`) acts in "
        "training only.")

# --------------------------------------------------------------------------------------------------------------
# Hugging Face DINOv3ViTModel / DINOv3ViTBackbone: transformers 5 nests the layers as model.layer.{i} (``{enc}``
# is "model."), the Hub's files of transformers 4.56 have layer.{i}; older conversions name q, k, v query/key/value


def _uneven_biases(raw: dict) -> bool:
    """q, k, v biases other than all three, q and v (key_bias=False), or none."""
    has = tuple(any(re.search(rf"layer\.0\.attention\.{n}\.bias$", k) for k in raw)
                for n in ("(q_proj|query)", "(k_proj|key)", "(v_proj|value)"))
    return has not in ((True, True, True), (True, False, True), (False, False, False))


_HE, _HL = "embeddings.", "{enc}layer.{i}."
_QKV_NAMES = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"))
HF_DINOV3 = Format(
    name="hf_dinov3", markers=("embeddings.register_tokens", "*layer.0.layer_scale1.lambda1"),
    label="Hugging Face DINOv3ViT", placeholders={"enc": r"^(.*?)layer\.0\.norm1\.weight$"},
    rules=tuple([
        *wb("patch_embed.proj", _HE + "patch_embeddings"),  # a bare Conv2d
        *wb("patch_embed.proj", _HE + "patch_embeddings.proj"),  # another converter's name
        Rule("cls_token", (_HE + "cls_token",)),
        Rule("reg_token", (_HE + "register_tokens",), token),  # (1, R, D); (1, 0, D) without registers: dropped
        *wb(_DB + "norm1", _HL + "norm1"),
        *(r for q, k, v in _QKV_NAMES for r in wb(_DB + "attn.qkv", *(_HL + f"attention.{n}" for n in (q, k, v)),
                                                  fn=cat)),
        *(r for q, k, v in _QKV_NAMES for r in (  # key_bias=False: q and v biases (qkv_bias='qv')
            Rule(_DB + "attn.q_bias", (_HL + f"attention.{q}.bias",), unless=(_HL + f"attention.{k}.bias",)),
            Rule(_DB + "attn.v_bias", (_HL + f"attention.{v}.bias",), unless=(_HL + f"attention.{k}.bias",)))),
        *wb(_DB + "attn.proj", _HL + "attention.o_proj"),
        Rule(_DB + "ls1.gamma", (_HL + "layer_scale1.lambda1",)),
        *wb(_DB + "norm2", _HL + "norm2"),
        *wb(_DB + "mlp.fc1", _HL + "mlp.gate_proj", _HL + "mlp.up_proj", fn=cat),  # use_gated_mlp
        *wb(_DB + "mlp.fc1", _HL + "mlp.up_proj"),
        *wb(_DB + "mlp.fc2", _HL + "mlp.down_proj"),
        Rule(_DB + "ls2.gamma", (_HL + "layer_scale2.lambda1",)),
    ]),  # norm: vitkit's name
    prefixes=("dinov3.", "model."),  # a model holding a DINOv3ViTModel
    ignore=(r"^embeddings\.mask_token$", r"rope_embeddings\.inv_freq$"),
    # every DINOv3ViT rotates q and k (rope_theta: config.json, else DINOv3's 100), pools [CLS], takes any size
    defaults={"norm_eps": 1e-5, "rope": "dinov3", "dynamic_img_size": True},
    assume=(Assume("num_heads", heads_of(64), "the number of heads is not in Hugging Face DINOv3 weights without "
                   "their config.json; assumed width // 64 (every DINOv3 but the 7B, whose heads are 128 wide); "
                   "pass num_heads="),),
    require=(Require((), "its attention has biases on some of q, k and v only (query_bias, key_bias, "
                     "value_bias), where vitkit has all three, q and v, or none", _uneven_biases),),
    profiles=(Profile("DINOv3", preprocess=pp.DINOV3),),
    doc="rope_theta, layer_norm_eps and the heads from config.json; pooler_output ([CLS]) is vitkit's pool; "
        "pos_embed_shift, _jitter and _rescale augment the coordinates in training mode only.")

# --------------------------------------------------------------------------------------------------------------
# Hugging Face Aimv2VisionModel (and the vision_model of Aimv2Model)

_AL = "encoder.layers.{i}."
HF_AIMV2 = Format(
    name="hf_aimv2", markers=("embeddings.rms_norm.weight", "encoder.layers.0.ffn.down_proj.weight"),
    label="Hugging Face AIMv2",
    rules=tuple([
        *wb("patch_embed.proj", "embeddings.patch_embed"),
        Rule("patch_embed.norm.weight", ("embeddings.rms_norm.weight",)),  # RMSNorm after the projection
        Rule("pos_embed", ("embeddings.position_embedding.weight",), pos),  # nn.Embedding (N, D), no class slot
        Rule(_DB + "norm1.weight", (_AL + "rms_norm1.weight",)),
        *wb(_DB + "attn.qkv", *(_AL + f"attention.{n}_proj" for n in "qkv"), fn=cat),  # biases: qkv_bias
        *wb(_DB + "attn.proj", _AL + "attention.out_proj"),
        Rule(_DB + "norm2.weight", (_AL + "rms_norm2.weight",)),
        *wb(_DB + "mlp.fc1", _AL + "ffn.gate_proj", _AL + "ffn.up_proj", fn=cat),  # SwiGLU
        *wb(_DB + "mlp.fc2", _AL + "ffn.down_proj"),
        Rule("norm.weight", ("rms_norm.weight",)),
    ]),
    prefixes=("vision_model.",), scoped_prefix=True,  # Aimv2Model: the text tower and projections stay out
    ignore=(r"position_ids$",),
    defaults={"norm_layer": "rmsnorm", "norm_eps": 1e-5, "act": "silu"},  # Aimv2VisionConfig's
    require=(Require((), "its attention-pooling head (head.*, use_head=True: a learned query without a "
                     "projection and no MLP) is not vitkit's MAP head; load the model without it (use_head=False) "
                     "for its tokens", lambda raw: any(k.startswith("head.") for k in raw)),
             Require((), "it has no position table: a native-resolution AIMv2 (is_native=True) adds a sin-cos "
                     "table in its own layout, which vitkit does not compute",
                     lambda raw: "embeddings.position_embedding.weight" not in raw)),
    profiles=(Profile("AIMv2", preprocess=pp.AIMV2),),
    doc="RMSNorm throughout (rms_norm_eps), after the patch projection too; no [CLS], so vitkit pools the mean "
        "of the normed tokens as timm's AIMv2 does; models with their attention-pooling head (use_head) or a "
        "native-resolution table (is_native) are refused.")

# --------------------------------------------------------------------------------------------------------------
# Perception Encoder (facebookresearch/perception_models core/vision_encoder/pe.py): open_clip's tower keys plus
# an attention pool; Rope2D (not a module, so in no file) rotates the patches by (column, row) index, counted
# from 1 when a [CLS] token leads (position 0, the identity)


def pe_rope(state: dict) -> dict:
    """The rotary settings of a PE file: xy indexing, offset 1 with a [CLS] token, and, as timm does, the native
    grid of its position table as the reference other grids are rescaled to. The MAP head reads every token."""
    cls = "class_embedding" in state
    facts = {"rope": "axial", "rope_grid_indexing": "xy", "rope_grid_offset": float(cls),
             "pool_include_prefix": cls and "attn_pool.probe" in state}
    table = state.get("positional_embedding")  # (cls + N, D)
    if isinstance(table, Tensor):
        side = math.isqrt(table.shape[0] - cls)
        if side * side != table.shape[0] - cls:
            raise CheckpointError(f"its {table.shape[0]}-row position table is no square grid (plus a [CLS] row); "
                                  "it was not loaded")
        facts["rope_ref_grid"] = (side, side)
    return facts


def _pe_heads(state: dict) -> int:
    width = state["patch_embed.proj.weight"].shape[0]
    return 16 if width == 1536 else max(1, width // 64)


_pe_heads.__name__ = "D // 64 (16 for D 1536)"
_PA = "attn_pool.attn."
PE = Format(
    name="pe", markers=("conv1.weight", "attn_pool.probe"), label="Perception Encoder (Meta)",
    rules=OPEN_CLIP.rules + tuple([  # the tower's keys are open_clip's (ls_1/ls_2 for the lang and spatial G)
        Rule("attn_pool.latent", ("attn_pool.probe",)),  # (1, 1, D)
        Rule("attn_pool.q.weight", (_PA + "in_proj_weight",), q_of_qkv),  # nn.MultiheadAttention, 8 heads
        Rule("attn_pool.q.bias", (_PA + "in_proj_bias",), q_of_qkv),
        Rule("attn_pool.kv.weight", (_PA + "in_proj_weight",), kv_of_qkv),
        Rule("attn_pool.kv.bias", (_PA + "in_proj_bias",), kv_of_qkv),
        *wb("attn_pool.proj", _PA + "out_proj"),
        *wb("attn_pool.norm", "attn_pool.layernorm"),
        *wb("attn_pool.mlp.fc1", "attn_pool.mlp.c_fc"),  # 4 x D, whatever the trunk's width (G: 5.83 x D)
        *wb("attn_pool.mlp.fc2", "attn_pool.mlp.c_proj"),
    ]),
    prefixes=("module.visual.", "visual.", "module."), scoped_prefix=True,  # CLIP files: visual.*, the text tower
    facts=pe_rope,
    defaults={"norm_eps": 1e-5, "act": "gelu"},
    assume=(Assume("num_heads", _pe_heads, "the number of heads is not in Perception Encoder files; assumed "
                   "width // 64 (PE T, S, B and L) and 16 for width 1536 (PE G, 96-wide heads); pass num_heads="),),
    profiles=(Profile("Perception Encoder", when=("attn_pool.latent",), defaults={"attn_pool_heads": 8},
                      preprocess=pp.PE),  # attn_pooler_heads of every PE config
              Profile("Perception Encoder", preprocess=pp.PE)),
    doc="the rotation (in no file) is PE's Rope2D: (column, row) patch indices, from 1 after a [CLS] token; other "
        "grids are rescaled to the file's native grid, as timm does; the attention pool (8 heads) reads every "
        "token, [CLS] included; the text tower of a CLIP file is dropped; PE-Spatial and PE-Lang pool nothing "
        "(vitkit's pooled output is their normed [CLS]).")
# PE lang and spatial towers: no attention pool, no ln_post, no projection (what no open_clip tower lacks)
PE_TOWER = dataclasses.replace(PE, name="pe_tower", markers=("conv1.weight", "transformer.resblocks.0.ln_1.weight"),
                               unless=("ln_post.weight", "attn_pool.probe"), label="Perception Encoder tower (Meta)",
                               doc="PE-Spatial and PE-Lang towers: as `pe`, without an attention pool or ln_post.")
