"""The new sources of the 2025-26 backbones load exactly or are refused with one sentence: facebookresearch/dinov3
hub files (checked against timm reading the same file with its own checkpoint_filter_fn), Hugging Face
DINOv3ViTModel (both key generations, live and saved) and Aimv2VisionModel, and Meta's Perception Encoder files
(against timm's reader of them). Weights are drawn so that every piece matters (test_interop.randomize, RMSNorm
gains near 1 too); each comparison fails with the family's pieces switched off, its rotary embedding among them."""

import copy
import json
import re
import warnings

import pytest
import timm
import torch
from timm.models.eva import checkpoint_filter_fn

from mutation import MARGIN, assert_pieces_matter
from test_interop import TOL, max_diff, randomize
from test_interop_clip import assumed_preprocessing, logits, silent, tokens
from vitkit import from_pretrained
from vitkit.errors import CheckpointError
from vitkit.interop import load_pretrained
from vitkit.interop.preprocess import AIMV2, DINOV3, PE


def strong(model: torch.nn.Module) -> torch.nn.Module:
    """randomize, with the gains of RMSNorms (which are no nn.LayerNorm) near 1 as well."""
    randomize(model)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if re.search(r"rms_?norm", type(m).__name__, re.I) and getattr(m, "weight", None) is not None:
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
    return model


def images(n: int, h: int, w: int | None = None) -> torch.Tensor:
    return torch.randn(n, 3, h, w or h, generator=torch.Generator().manual_seed(1))


def rope_matters(model, x, their_tokens, their_out) -> None:
    """Without its rotation, or with its two axes swapped (x is non-square), vitkit's tokens and output are far
    from the reference's (mutation.py has no rope piece: the mutants are made here)."""
    off = copy.deepcopy(model)
    off.rope = None
    swapped = copy.deepcopy(model)
    swapped.rope.indexing = "xy" if model.rope.indexing == "ij" else "ij"
    swapped.rope._cache.clear()
    for what, mutant in (("off", off), ("axes swapped", swapped)):
        with torch.no_grad():
            t = mutant.forward_features(x)
            d_tokens, d_out = max_diff(t, their_tokens), max_diff(mutant.forward_head(t), their_out)
        assert d_tokens > MARGIN and d_out > MARGIN, f"rope {what}: tokens moved {d_tokens:.2e}, output {d_out:.2e}"


def refused(fn, *args, match: str = "", **kwargs) -> str:
    """fn(...) raises one CheckpointError of one sentence (no traceback, no newline), or, for tensors no rule
    places, one sentence on its first line with the tensors and a rule table on the next."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError) as e:
            fn(*args, **kwargs)
    message = getattr(e.value, "sentence", str(e.value))
    assert "\n" not in message and str(e.value).startswith(message) and re.search(match, message), message
    return message


# ------------------------------------------------------------------------------------------------------------
# facebookresearch/dinov3 hub files

D3 = 128  # two 64-wide heads, as every DINOv3 but the 7B; 16 periods


def timm_dinov3(name: str, **kw):
    return strong(timm.create_model(name, depth=2, embed_dim=D3, num_heads=D3 // 64, num_classes=0,
                                    global_pool="token", **kw))


def dinov3_original(model) -> dict:
    """The facebookresearch layout of a timm DINOv3 model, timm's checkpoint_filter_fn read backwards: storage
    tokens, ls1/ls2.gamma, a full qkv bias with its mask (a random key third, masked out), SwiGLU as w1/w2/w3, and
    the persistent periods, mask token, local-crop norm and EUPE projector that loading ignores."""
    out = {"mask_token": torch.randn(1, D3), "rope_embed.periods": model.rope.periods.clone(),
           "local_cls_norm.weight": torch.randn(D3), "local_cls_norm.bias": torch.randn(D3),
           "projectors.0.weight": torch.randn(8, D3)}
    sd = dict(model.state_dict())
    swiglu = any("mlp.fc1_g" in k for k in sd)
    for k, v in sd.items():
        if k.endswith("attn.q_bias"):
            b = k[: -len("q_bias")]
            out[b + "qkv.bias"] = torch.cat([v, torch.randn(D3), sd[b + "v_bias"]])
            out[b + "qkv.bias_mask"] = torch.cat([torch.ones(D3), torch.zeros(D3), torch.ones(D3)])
            continue
        if k.endswith("attn.v_bias"):
            continue
        k = k.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        k = k.replace("mlp.fc1_g", "mlp.w1").replace("mlp.fc1_x", "mlp.w2")
        if swiglu:
            k = k.replace("mlp.fc2", "mlp.w3")
        out[k] = v
    return out


def dinov3_pieces(swiglu: bool) -> list[str]:
    return ["layer_scale", "qv_bias", "registers", "head_layout", "final_norm", *(["swiglu", "act:gelu"] * swiglu)]


@pytest.mark.parametrize("name", ["vit_small_patch16_dinov3_qkvb", "vit_small_plus_patch16_dinov3_qkvb"])
def test_dinov3_original_hub_file(tmp_path, name):
    ref = timm_dinov3(name)
    original = dinov3_original(ref)
    pinned = checkpoint_filter_fn(dict(original), ref)  # timm's own reader of the original files
    assert pinned.keys() == ref.state_dict().keys()
    assert all(torch.equal(pinned[k], v) for k, v in ref.state_dict().items())
    torch.save({"model": original}, tmp_path / "dinov3_vits16_pretrain_lvd1689m.pth")
    found = silent(load_pretrained, tmp_path / "dinov3_vits16_pretrain_lvd1689m.pth")
    cfg, swiglu = found.config, "plus" in name
    assert (cfg.num_heads, cfg.reg_tokens, cfg.qkv_bias, cfg.pool, cfg.norm_eps, cfg.img_size) == \
        (2, 4, "qv", "cls", 1e-5, 224)
    assert (cfg.rope, cfg.rope_temperature, cfg.rope_bf16_periods, cfg.dynamic_img_size) == ("dinov3", 100.0, False,
                                                                                            True)
    assert cfg.mlp == ("swiglu" if swiglu else "mlp") and cfg.mlp_dim == (1024 if swiglu else 512)
    assert found.preprocess == DINOV3
    ours = silent(from_pretrained, tmp_path / "dinov3_vits16_pretrain_lvd1689m.pth")
    for h, w in ((224, 224), (96, 160)):  # the model's size, and a non-square one
        x = images(2, h, w)
        their_tokens, want = tokens(ref, x), logits(ref, x)  # timm's pooled [CLS]: x_norm_clstoken
        assert max_diff(tokens(ours, x), their_tokens) <= TOL
        assert max_diff(logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, their_tokens, want, dinov3_pieces(swiglu))
    rope_matters(ours, x, their_tokens, want)
    # the explicit path (attention maps) rotates too
    explicit = silent(from_pretrained, tmp_path / "dinov3_vits16_pretrain_lvd1689m.pth", attn_impl="explicit")
    assert max_diff(tokens(explicit, x), their_tokens) <= TOL


def test_dinov3_original_bf16_periods_other_temperature_and_a_key_bias(tmp_path):
    """The hub files store the periods rounded to bfloat16, and DINOv3's own code computes with those (timm
    recomputes them in float32): vitkit follows the file. The temperature is read back from the periods; a
    mask that keeps a key bias keeps the whole bias (it matters: the rotation turns it)."""
    ref = timm_dinov3("vit_small_patch16_dinov3_qkvb", rope_temperature=1000)
    original = dinov3_original(ref)
    original["rope_embed.periods"] = ref.rope.periods.to(torch.bfloat16)
    ref.rope.periods.copy_(ref.rope.periods.to(torch.bfloat16).float())  # timm computing as the original does
    torch.save(original, tmp_path / "bf16.pth")
    cfg = silent(load_pretrained, tmp_path / "bf16.pth").config
    assert (cfg.rope_temperature, cfg.rope_bf16_periods) == (1000.0, True)
    ours = silent(from_pretrained, tmp_path / "bf16.pth")
    x = images(2, 64, 112)
    assert max_diff(tokens(ours, x), tokens(ref, x)) <= TOL
    assert max_diff(logits(ours, x), logits(ref, x)) <= TOL
    fp32 = silent(from_pretrained, tmp_path / "bf16.pth", rope_bf16_periods=False)
    assert max_diff(tokens(fp32, x), tokens(ref, x)) > TOL  # the rounding shows with these weights

    mask = {k: v for k, v in original.items() if k.endswith("bias_mask")}
    keep = {**original, **{k: torch.ones_like(v) for k, v in mask.items()}}  # the key bias is added
    kept = silent(from_pretrained, keep)
    assert kept.config.qkv_bias is True
    qkv = {k: v for k, v in keep.items() if k.endswith("qkv.bias")}
    assert all(torch.equal(kept.state_dict()[k], v) for k, v in qkv.items())
    assert max_diff(tokens(kept, x), tokens(ours, x)) > MARGIN  # the rotated key bias is no softmax shift


def test_dinov3_original_refusals(tmp_path):
    ref = timm_dinov3("vit_small_patch16_dinov3_qkvb")
    original = dinov3_original(ref)
    refused(load_pretrained, {**original, "rope_embed.periods": torch.rand(16) + 1},
            match="follow no schedule T\\^\\(4k/d\\) that vitkit computes")
    refused(load_pretrained, {**original, "cls_norm.weight": torch.ones(D3), "cls_norm.bias": torch.zeros(D3)},
            match="cannot be loaded as it is: .*cls_norm")
    refused(load_pretrained, {**original, "rope_embed.periods": torch.ones(24)}, match="do not divide the width")
    torch.save(original, tmp_path / "whole.pth")
    data = (tmp_path / "whole.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    refused(load_pretrained, tmp_path / "truncated.pth", match="is truncated or not a PyTorch checkpoint")
    aimv2 = hf_aimv2(use_head=False).state_dict()
    refused(load_pretrained, aimv2, source="dinov3", match="no vitkit key fits")  # another family's keys


# ------------------------------------------------------------------------------------------------------------
# Hugging Face DINOv3ViTModel


def hf_dinov3(gated: bool = False, **kw):
    from transformers import DINOv3ViTConfig, DINOv3ViTModel
    cfg = DINOv3ViTConfig(hidden_size=D3, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                          image_size=64, patch_size=16, num_register_tokens=4, use_gated_mlp=gated,
                          hidden_act="silu" if gated else "gelu", rope_theta=50.0, **kw)
    return strong(DINOv3ViTModel(cfg))


def hf_out(model, x):
    with torch.no_grad():
        out = model(pixel_values=x)
    return out.last_hidden_state, out.pooler_output  # after the final norm; [CLS]


def older_names(state: dict) -> dict:
    """The other key generations: the Hub's layer.{i} of transformers 4.56 with the older converter's
    attention.query/key/value, under a model's dinov3. attribute."""
    renamed = {}
    for k, v in state.items():
        k = k.replace("model.layer.", "layer.")
        k = re.sub(r"attention\.([qkv])_proj", lambda m: "attention." + {"q": "query", "k": "key", "v": "value"}[
            m.group(1)], k)
        renamed["dinov3." + k] = v
    return renamed


@pytest.mark.parametrize("gated", [False, True])
def test_hf_dinov3(tmp_path, gated):
    ref = hf_dinov3(gated)
    ours = silent(from_pretrained, ref)  # live: model.layer.{i}.attention.q_proj
    cfg = ours.config
    assert (cfg.rope, cfg.rope_temperature, cfg.num_heads, cfg.reg_tokens, cfg.qkv_bias, cfg.norm_eps) == \
        ("dinov3", 50.0, 2, 4, "qv", 1e-5)
    assert cfg.mlp == ("swiglu" if gated else "mlp") and cfg.act == ("silu" if gated else "gelu")
    from transformers import DINOv3ViTBackbone
    backbone = DINOv3ViTBackbone(ref.config)
    backbone.load_state_dict(ref.state_dict())  # the same keys
    assert silent(from_pretrained, backbone).config == cfg
    ref.save_pretrained(tmp_path / "dinov3")
    found = assumed_preprocessing(load_pretrained, tmp_path / "dinov3")
    assert found.config.rope_temperature == 50.0 and found.preprocess == DINOV3
    folder = assumed_preprocessing(from_pretrained, tmp_path / "dinov3")
    older = silent(from_pretrained, older_names(ref.state_dict()), num_heads=2, rope_temperature=50.0)
    explicit = silent(from_pretrained, ref, attn_impl="explicit")
    for h, w in ((64, 64), (48, 112)):  # the config's size, and a non-square one
        x = images(2, h, w)
        their_tokens, want = hf_out(ref, x)
        for model in (ours, folder, older, explicit):
            assert max_diff(tokens(model, x), their_tokens) <= TOL
            assert max_diff(logits(model, x), want) <= TOL
    assert_pieces_matter(ours, x, their_tokens, want, dinov3_pieces(gated))
    rope_matters(ours, x, their_tokens, want)


def test_hf_dinov3_state_dict_without_config_assumes_64_wide_heads_and_full_biases_load():
    ref = hf_dinov3(key_bias=True)  # q, k and v biases: one full qkv bias
    with pytest.warns(UserWarning, match="assumed width // 64"):
        ours = from_pretrained(ref.state_dict(), rope_temperature=50.0)
    assert ours.config.qkv_bias is True
    x = images(2, 64)
    their_tokens, want = hf_out(ref, x)
    assert max_diff(tokens(ours, x), their_tokens) <= TOL and max_diff(logits(ours, x), want) <= TOL
    odd = hf_dinov3(value_bias=False)  # a query bias without a value bias
    refused(from_pretrained, odd, match="biases on some of q, k and v only")


# ------------------------------------------------------------------------------------------------------------
# Hugging Face Aimv2VisionModel

DA = 128


def hf_aimv2(use_head: bool = False, **kw):
    from transformers import Aimv2VisionConfig, Aimv2VisionModel
    cfg = Aimv2VisionConfig(hidden_size=DA, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4,
                            image_size=56, patch_size=14, use_head=use_head, rms_norm_eps=1e-5, **kw)
    return strong(Aimv2VisionModel(cfg))


def test_hf_aimv2_vision_model(tmp_path):
    ref = hf_aimv2()
    ours = silent(from_pretrained, ref)
    cfg = ours.config
    assert (cfg.norm_layer, cfg.embed_norm, cfg.class_token, cfg.pool, cfg.act, cfg.mlp, cfg.num_heads) == \
        ("rmsnorm", True, False, "mean", "silu", "swiglu", 4)
    assert (cfg.qkv_bias, cfg.proj_bias, cfg.mlp_bias, cfg.norm_eps, cfg.mlp_dim) == (False, False, False, 1e-5, 704)
    ref.save_pretrained(tmp_path / "aimv2")
    found = assumed_preprocessing(load_pretrained, tmp_path / "aimv2")
    assert found.preprocess == AIMV2
    folder = assumed_preprocessing(from_pretrained, tmp_path / "aimv2")
    x = images(2, 56)  # Hugging Face computes its own grid only (position_ids of the config's size)
    with torch.no_grad():
        their_tokens = ref(pixel_values=x).last_hidden_state  # after the final RMSNorm
    want = their_tokens.mean(dim=1)  # timm's AIMv2 pools the mean; vitkit's pool='mean' of the normed tokens
    for model in (ours, folder):
        assert max_diff(tokens(model, x), their_tokens) <= TOL
        assert max_diff(logits(model, x), want) <= TOL
    assert_pieces_matter(ours, x, their_tokens, want, ["head_layout", "swiglu", "act:gelu", "pos_embed"])
    no_embed_norm = copy.deepcopy(ours)
    no_embed_norm.patch_embed.norm = torch.nn.Identity()
    assert max_diff(tokens(no_embed_norm, x), their_tokens) > MARGIN
    biased = hf_aimv2(qkv_bias=True, mlp_bias=True)  # every projection with a bias
    ours = silent(from_pretrained, biased)
    assert (ours.config.qkv_bias, ours.config.proj_bias, ours.config.mlp_bias) == (True, True, True)
    with torch.no_grad():
        assert max_diff(tokens(ours, x), biased(pixel_values=x).last_hidden_state) <= TOL


def test_hf_aimv2_at_a_non_square_size_equals_timms_aimv2():
    """Hugging Face computes its own grid only; at another (non-square) one vitkit resamples the position table
    as timm's AIMv2 does with the same weights (timm's keys written from Hugging Face's by hand)."""
    ref = hf_aimv2()
    hf, out = ref.state_dict(), {}
    for k, v in hf.items():
        m = re.match(r"encoder\.layers\.(\d+)\.(.*)", k)
        if m is None:
            continue
        i, rest = m.groups()
        names = {"rms_norm1.weight": "norm1.weight", "rms_norm2.weight": "norm2.weight",
                 "attention.out_proj.weight": "attn.proj.weight", "ffn.gate_proj.weight": "mlp.fc1_g.weight",
                 "ffn.up_proj.weight": "mlp.fc1_x.weight", "ffn.down_proj.weight": "mlp.fc2.weight"}
        if rest in names:
            out[f"blocks.{i}.{names[rest]}"] = v
    for i in range(2):
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([hf[f"encoder.layers.{i}.attention.{n}_proj.weight"]
                                                        for n in "qkv"])
    out.update({"patch_embed.proj.weight": hf["embeddings.patch_embed.weight"],
                "patch_embed.proj.bias": hf["embeddings.patch_embed.bias"],
                "patch_embed.norm.weight": hf["embeddings.rms_norm.weight"],
                "pos_embed": hf["embeddings.position_embedding.weight"][None], "norm.weight": hf["rms_norm.weight"]})
    theirs = timm.create_model("aimv2_large_patch14_224", depth=2, embed_dim=DA, num_heads=4, img_size=56,
                               num_classes=0, dynamic_img_size=True).eval()
    theirs.load_state_dict(out)
    ours = silent(from_pretrained, ref, dynamic_img_size=True)
    for h, w in ((56, 56), (42, 70)):
        x = images(2, h, w)
        assert max_diff(tokens(ours, x), tokens(theirs, x)) <= TOL
        assert max_diff(logits(ours, x), logits(theirs, x)) <= TOL


def test_hf_aimv2_head_and_native_models_are_refused(tmp_path):
    from transformers import Aimv2Config, Aimv2Model
    refused(from_pretrained, hf_aimv2(use_head=True), match="attention-pooling head .* not loaded")
    refused(from_pretrained, hf_aimv2(use_head=True).state_dict(), match="cannot be loaded as it is: its attention")
    refused(from_pretrained, hf_aimv2(is_native=True), match="native-resolution .* not loaded")
    full = Aimv2Model(Aimv2Config(vision_config=hf_aimv2(use_head=True).config.to_dict(), text_config=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=100,
        max_position_embeddings=8)))
    full.save_pretrained(tmp_path / "aimv2_lit")  # AIMv2's CLIP-style model: its image embedding needs the head
    refused(from_pretrained, tmp_path / "aimv2_lit", match="attention-pooling head")


# ------------------------------------------------------------------------------------------------------------
# Perception Encoder files as Meta ships them


def timm_pe(name: str, **kw):
    model = strong(timm.create_model(name, depth=2, **kw))
    if getattr(model, "head", None) is not None and isinstance(model.head, torch.nn.Linear):
        torch.nn.init.zeros_(model.head.bias)  # PE's proj has no bias (timm's reader fills zeros)
    return model


def pe_original(model) -> dict:
    """perception_models' layout of a timm PE model (timm's _convert_pe read backwards), inside a CLIP file:
    visual.* beside the text tower's keys."""
    swaps = [("patch_embed.proj", "conv1"), ("norm_pre", "ln_pre"), ("blocks.", "transformer.resblocks."),
             ("norm1", "ln_1"), ("norm2", "ln_2"), ("gamma_1", "ls_1.gamma"), ("gamma_2", "ls_2.gamma"),
             ("attn.qkv.", "attn.in_proj_"), ("attn.proj", "attn.out_proj"), ("mlp.fc1", "mlp.c_fc"),
             ("mlp.fc2", "mlp.c_proj")]
    sd, out = dict(model.state_dict()), {}
    for k, v in sd.items():
        if k.startswith("attn_pool."):
            continue
        if k == "cls_token":
            k, v = "class_embedding", v.reshape(-1)
        elif k == "pos_embed":
            k, v = "positional_embedding", v[0]
        elif k == "head.weight":
            k, v = "proj", v.T
        elif k == "head.bias":
            continue
        elif k.startswith("norm."):
            k = "ln_post." + k[len("norm."):]
        for a, b in swaps:
            k = k.replace(a, b)
        out["visual." + k] = v
    if "attn_pool.latent" in sd:
        p = "visual.attn_pool."
        out.update({p + "probe": sd["attn_pool.latent"],
                    p + "attn.in_proj_weight": torch.cat([sd["attn_pool.q.weight"], sd["attn_pool.kv.weight"]]),
                    p + "attn.in_proj_bias": torch.cat([sd["attn_pool.q.bias"], sd["attn_pool.kv.bias"]])})
        for a, b in (("proj", "attn.out_proj"), ("norm", "layernorm"), ("mlp.fc1", "mlp.c_fc"),
                     ("mlp.fc2", "mlp.c_proj")):
            out[p + b + ".weight"], out[p + b + ".bias"] = sd[f"attn_pool.{a}.weight"], sd[f"attn_pool.{a}.bias"]
    out.update({"transformer.resblocks.0.attn.in_proj_weight": torch.randn(96, 32), "logit_scale": torch.ones(())})
    return out


def timm_reads(model, original: dict):
    """timm's own reader of the file (eva.checkpoint_filter_fn -> _convert_pe) reproduces the model's weights."""
    pinned = checkpoint_filter_fn(dict(original), model)
    assert pinned.keys() == model.state_dict().keys()
    assert all(torch.equal(pinned[k], v) for k, v in model.state_dict().items())


# timm name, arguments: a 4 x 4 grid, which is then the reference grid of the rotation (timm's ref_feat_shape is
# the native grid of each PE: 384 / 16 = 24 for the tiny core model), and heads as vitkit assumes from the width
_GRID4 = dict(ref_feat_shape=(4, 4))
PE_KINDS = {
    "core": ("vit_pe_core_tiny_patch16_384", dict(img_size=64, num_classes=96, **_GRID4)),
    "core_g": ("vit_pe_core_gigantic_patch14_448", dict(img_size=56, embed_dim=192, num_heads=3, num_classes=96,
                                                         **_GRID4)),
    "spatial": ("vit_pe_spatial_tiny_patch16_512", dict(img_size=64, num_classes=0, **_GRID4)),
}


@pytest.mark.parametrize("kind", PE_KINDS)
def test_perception_encoder_original_file(tmp_path, kind):
    name, kw = PE_KINDS[kind]
    ref = timm_pe(name, **kw)
    original = pe_original(ref)
    timm_reads(ref, original)
    torch.save({"weights": original} if kind == "spatial" else original, tmp_path / "PE.pt")
    with pytest.warns(UserWarning, match="assumed width // 64"):
        found = load_pretrained(tmp_path / "PE.pt")
    cfg, cls = found.config, kind != "core_g"
    assert (cfg.rope, cfg.rope_grid_indexing, cfg.rope_grid_offset, cfg.rope_ref_grid) == ("axial", "xy", float(cls),
                                                                                          (4, 4))
    assert (cfg.num_heads, cfg.norm_pre, cfg.norm_eps, cfg.act, cfg.class_token) == (3, True, 1e-5, "gelu", cls)
    assert found.preprocess == PE
    if kind.startswith("core"):
        assert (cfg.pool, cfg.attn_pool_heads, cfg.pool_include_prefix, cfg.head_bias) == ("map", 8, cls, False)
    else:
        assert (cfg.final_norm, cfg.num_classes) == (False, 0)
    ours = silent(from_pretrained, tmp_path / "PE.pt", num_heads=3)
    explicit = silent(from_pretrained, tmp_path / "PE.pt", num_heads=3, attn_impl="explicit")
    x = images(2, *ref.patch_embed.img_size)
    their_tokens, want = tokens(ref, x), logits(ref, x)
    if kind == "spatial":  # the tower pools nothing (pool_type 'none'; timm averages): vitkit's [CLS] of its tokens
        want = their_tokens[:, 0]
    for model in (ours, explicit):
        assert max_diff(tokens(model, x), their_tokens) <= TOL
        assert max_diff(logits(model, x), want) <= TOL
    pieces = ["norm_pre", "head_layout", "pos_embed"] + (["map", "final_norm"] if kind.startswith("core") else [])
    assert_pieces_matter(ours, x, their_tokens, want, pieces)
    rope_matters(ours, x, their_tokens, want)
    if cls and kind == "core":  # the MAP head reads [CLS] too
        patches_only = copy.deepcopy(ours)
        patches_only.config = patches_only.config.replace(pool_include_prefix=False)
        assert max_diff(logits(patches_only, x), want) > MARGIN
    # another (non-square) size: positions resampled and rotations rescaled to the native grid, as timm does
    dyn = timm_pe(name, **kw, dynamic_img_size=True)
    dyn.load_state_dict(ref.state_dict())
    ours = silent(from_pretrained, tmp_path / "PE.pt", num_heads=3, dynamic_img_size=True)
    p = ref.patch_embed.patch_size[0]
    x = images(2, 3 * p, 5 * p)
    assert max_diff(tokens(ours, x), tokens(dyn, x)) <= TOL
    if kind != "spatial":
        assert max_diff(logits(ours, x), logits(dyn, x)) <= TOL


def test_perception_encoder_lang_layer_scale_and_bad_files(tmp_path):
    ref = timm_pe("vit_pe_lang_large_patch14_448", img_size=56, embed_dim=128, num_heads=2, num_classes=0, **_GRID4)
    original = pe_original(ref)
    assert "visual.transformer.resblocks.0.ls_1.gamma" in original
    timm_reads(ref, original)
    ours = silent(from_pretrained, original, num_heads=2)
    x = images(2, 56)
    assert max_diff(tokens(ours, x), tokens(ref, x)) <= TOL
    assert_pieces_matter(ours, x, tokens(ref, x), logits(ref, x), ["layer_scale", "norm_pre", "head_layout"])
    bad = {**original, "visual.positional_embedding": original["visual.positional_embedding"][:-3]}
    refused(load_pretrained, bad, num_heads=2, match="no square grid")


# ------------------------------------------------------------------------------------------------------------
# Pools over every token, and the distilled DINOv3s' zero biases


@pytest.mark.parametrize("name, kw", [("vit_pe_core_tiny_patch16_384", dict(img_size=64)),
                                      ("test_vit3", dict(img_size=64, global_pool="map")),
                                      ("test_vit3", dict(img_size=64, global_pool="avg"))])
def test_timm_pools_that_read_the_prefix_tokens(name, kw):
    """timm's Eva MAP head (PE) attends over [CLS] and the patches; its ViT pools the registers too with
    pool_include_prefix. The pooled output, not only the tokens, is timm's."""
    ref = strong(timm.create_model(name, depth=2, **kw))
    ours = silent(from_pretrained, ref)
    assert ours.config.pool_include_prefix
    x = images(2, 64)
    assert max_diff(tokens(ours, x), tokens(ref, x)) <= TOL
    assert max_diff(logits(ours, x), logits(ref, x)) <= TOL
    patches_only = copy.deepcopy(ours)
    patches_only.config = patches_only.config.replace(pool_include_prefix=False)
    assert max_diff(logits(patches_only, x), logits(ref, x)) > MARGIN


def test_dinov3_original_distilled_zero_biases(tmp_path):
    """The distilled ViT-S/B/L hub files hold a zero qkv bias (timm's vit_*_dinov3 have none): q/v biases of
    zeros compute the same."""
    ref = timm_dinov3("vit_small_patch16_dinov3")
    original = dinov3_original(ref)
    for i in range(2):
        original[f"blocks.{i}.attn.qkv.bias"] = torch.zeros(3 * D3)
        original[f"blocks.{i}.attn.qkv.bias_mask"] = torch.cat([torch.ones(D3), torch.zeros(D3), torch.ones(D3)])
    pinned = checkpoint_filter_fn(dict(original), ref)
    assert pinned.keys() == ref.state_dict().keys()
    ours = silent(from_pretrained, original)
    assert ours.config.qkv_bias == "qv"
    x = images(2, 64, 96)
    assert max_diff(tokens(ours, x), tokens(ref, x)) <= TOL
    assert max_diff(logits(ours, x), logits(ref, x)) <= TOL


def test_full_size_heads_and_rotation_from_the_files():
    """What the released files' shapes give (on the meta device, no memory): DINOv3's heads from its periods
    (ViT-L 16 of 64, 7B 32 of 128), PE's reference grid and offset, and its assumed heads (G: 16 of 96)."""
    from vitkit.interop.formats_rope import _pe_heads, dinov3_rope, pe_rope
    from vitkit.layers.rope import dinov3_periods
    for width, head, heads in ((1024, 64, 16), (4096, 128, 32)):
        facts = dinov3_rope({"rope_embed.periods": dinov3_periods(head, 100.0, bf16=True),
                             "patch_embed.proj.weight": torch.empty(width, 3, 16, 16, device="meta")})
        assert facts == {"num_heads": heads, "rope": "dinov3", "rope_temperature": 100.0, "rope_bf16_periods": True}
    g = {"positional_embedding": torch.empty(32 * 32, 1536, device="meta"), "attn_pool.probe": None}
    assert pe_rope(g) == {"rope": "axial", "rope_grid_indexing": "xy", "rope_grid_offset": 0.0,
                          "pool_include_prefix": False, "rope_ref_grid": (32, 32)}
    core_l = {"class_embedding": None, "attn_pool.probe": None,
              "positional_embedding": torch.empty(1 + 24 * 24, 1024, device="meta")}
    assert pe_rope(core_l)["rope_ref_grid"] == (24, 24) and pe_rope(core_l)["rope_grid_offset"] == 1.0
    assert [_pe_heads({"patch_embed.proj.weight": torch.empty(w, 3, 14, 14, device="meta")})
            for w in (192, 384, 768, 1024, 1536)] == [3, 6, 12, 16, 16]
