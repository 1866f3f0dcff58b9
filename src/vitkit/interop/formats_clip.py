"""Key tables of CLIP and SigLIP image towers: OpenAI's TorchScript files and open_clip (its own towers and
timm trunks), Hugging Face's CLIP and SigLIP vision models. One row per key."""

from __future__ import annotations

from . import preprocess as pp
from .formats import TIMM_PROFILES, TIMM_REQUIRE
from .rules import Assume, Format, Profile, Require, Rule, cat, heads_of, kv_of_qkv, pos, q_of_qkv, token, transpose, wb

_RB = "transformer.resblocks.{i}."
OPEN_CLIP = Format(
    name="open_clip", markers=("class_embedding", "conv1.weight"), label="open_clip / OpenAI CLIP",
    rules=tuple([
        Rule("patch_embed.proj.weight", ("conv1.weight",)),  # no bias
        Rule("cls_token", ("class_embedding",), token),  # (D,)
        Rule("pos_embed", ("positional_embedding",), pos),  # (1 + N, D), row 0 for the class token
        *wb("norm_pre", "ln_pre"),
        *wb("blocks.{i}.norm1", _RB + "ln_1"),
        Rule("blocks.{i}.attn.qkv.weight", (_RB + "attn.in_proj_weight",)),  # nn.MultiheadAttention: q, k, v rows
        Rule("blocks.{i}.attn.qkv.bias", (_RB + "attn.in_proj_bias",)),
        *wb("blocks.{i}.attn.proj", _RB + "attn.out_proj"),
        Rule("blocks.{i}.ls1.gamma", (_RB + "ls_1.gamma",)),  # towers built with ls_init_value
        Rule("blocks.{i}.ls2.gamma", (_RB + "ls_2.gamma",)),
        *wb("blocks.{i}.norm2", _RB + "ln_2"),
        *wb("blocks.{i}.mlp.fc1", _RB + "mlp.c_fc"),
        *wb("blocks.{i}.mlp.fc2", _RB + "mlp.c_proj"),
        *wb("norm", "ln_post", when=("ln_pre.weight",)),
        *wb("fc_norm", "ln_post", unless=("ln_pre.weight",)),  # CLIPA: no ln_pre; ln_post after the mean
        Rule("head.weight", ("proj",), transpose),  # (D, E) -> (E, D); no bias
    ]),
    # the text tower shares names (transformer.resblocks, positional_embedding): keep visual.* only
    prefixes=("module.visual.", "visual."), scoped_prefix=True,
    defaults={"norm_eps": 1e-5},
    assume=(Assume("act", "quick_gelu", "QuickGELU or GELU cannot be told from open_clip weights; assumed "
                   "quick_gelu (OpenAI); pass act='gelu' for LAION-trained towers"),
            Assume("num_heads", heads_of(64), "the number of heads cannot be told from open_clip weights; assumed "
                   "width // 64 (open_clip's default head_width; ViT-H, g and bigG use 80, 88 and 104): pass "
                   "num_heads= or read the model's folder with its open_clip_config.json")),
    # Meta's Perception Encoder ships open_clip's keys; it rotates q and k (RoPE, not in the file) and its
    # spatial / language towers have no ln_post
    require=(Require(("rope",), "it is an open_clip-layout tower without ln_post, as Meta's Perception Encoder "
                     "(spatial, lang) ships them: those rotate q and k with a rotary position embedding (RoPE) "
                     "their files do not hold; say rope=", lambda raw: "ln_post.weight" not in raw),),
    profiles=(Profile("CLIP", preprocess=pp.CLIP),))

def _trunk(raw: dict) -> dict:
    return {k[len("trunk."):]: v for k, v in raw.items() if k.startswith("trunk.")}


OPEN_CLIP_TIMM = Format(
    name="open_clip_timm", markers=("trunk.patch_embed.proj.weight",), label="open_clip (timm trunk)",
    rules=(Rule("head.weight", ("head.proj.weight",)),  # timm_proj='linear'
           Rule("head.bias", ("head.proj.bias",))),
    renames=((r"^trunk\.", ""),),  # the trunk is a timm model
    prefixes=("module.visual.", "visual."), scoped_prefix=True,
    require=tuple(Require(r.fields, r.why, lambda raw, test=r.test: test(_trunk(raw))) for r in TIMM_REQUIRE),
    profiles=TIMM_PROFILES)

_HL = "encoder.layers.{i}."
_HF_CLIP_RULES = tuple([
    *wb("patch_embed.proj", "embeddings.patch_embedding"),  # CLIP: no bias; SigLIP: a bias
    Rule("cls_token", ("embeddings.class_embedding",), token),
    Rule("pos_embed", ("embeddings.position_embedding.weight",), pos),  # an nn.Embedding (T, D)
    *wb("norm_pre", "pre_layrnorm"),
    *wb("blocks.{i}.norm1", _HL + "layer_norm1"),
    *wb("blocks.{i}.attn.qkv", *(_HL + f"self_attn.{n}_proj" for n in "qkv"), fn=cat),
    *wb("blocks.{i}.attn.proj", _HL + "self_attn.out_proj"),
    *wb("blocks.{i}.norm2", _HL + "layer_norm2"),
    *wb("blocks.{i}.mlp.fc1", _HL + "mlp.fc1"),
    *wb("blocks.{i}.mlp.fc2", _HL + "mlp.fc2"),
    *wb("norm", "post_layernorm"),
    Rule("head.weight", ("visual_projection.weight",)),  # CLIP's image projection, no bias
    # SigLIP's MAP head: an nn.MultiheadAttention whose in-projection splits into timm's q and kv
    Rule("attn_pool.latent", ("head.probe",)),
    Rule("attn_pool.q.weight", ("head.attention.in_proj_weight",), q_of_qkv),
    Rule("attn_pool.q.bias", ("head.attention.in_proj_bias",), q_of_qkv),
    Rule("attn_pool.kv.weight", ("head.attention.in_proj_weight",), kv_of_qkv),
    Rule("attn_pool.kv.bias", ("head.attention.in_proj_bias",), kv_of_qkv),
    *wb("attn_pool.proj", "head.attention.out_proj"),
    *wb("attn_pool.norm", "head.layernorm"),
    *wb("attn_pool.mlp.fc1", "head.mlp.fc1"),
    *wb("attn_pool.mlp.fc2", "head.mlp.fc2"),
])
_HF_TEXT = (r"^text_model\.", r"^text_projection\.", r"^logit_(scale|bias)$", r"position_ids$")

HF_CLIP = Format(
    name="hf_clip", markers=("embeddings.class_embedding", "encoder.layers.0.self_attn.q_proj.weight"),
    label="Hugging Face CLIP", rules=_HF_CLIP_RULES, prefixes=("vision_model.",), ignore=_HF_TEXT,
    foreign_head="classifier.",  # CLIPForImageClassification: the mean of the un-normed patch tokens
    defaults={"norm_eps": 1e-5},
    assume=(Assume("act", "quick_gelu", "QuickGELU or GELU cannot be told from Hugging Face CLIP weights "
                   "without their config.json; assumed quick_gelu (CLIPVisionConfig's default, OpenAI's models); "
                   "pass act='gelu' for LAION-trained ones"),),
    profiles=(Profile("CLIP", preprocess=pp.CLIP),))

HF_SIGLIP = Format(
    name="hf_siglip", markers=("embeddings.position_embedding.weight", "encoder.layers.0.self_attn.q_proj.weight"),
    label="Hugging Face SigLIP", rules=_HF_CLIP_RULES, prefixes=("vision_model.",), ignore=_HF_TEXT,
    foreign_head="classifier.",  # SiglipForImageClassification: the mean of all tokens, not the MAP head
    defaults={"norm_eps": 1e-6, "act": "gelu_tanh"},  # SiglipVisionConfig: gelu_pytorch_tanh, as in big_vision
    profiles=(Profile("SigLIP (SiglipImageProcessor's defaults)", preprocess=pp.HF_SIGLIP),))
