"""The model families timm names (CLIP, SigLIP, DINOv2, DeiT distilled, BEiT) and vit-pytorch's current ViT:
each option against the reference implementation with random weights (test_interop.randomize), tokens and
logits, every preset against timm's model of the same name, and each preset's preprocessing against timm's
pretrained config. Each comparison must fail with any of its pieces switched off (tests/mutation.py)."""

import re
from functools import partial

import pytest
import timm
import torch
from timm.models.beit import Beit
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer as TimmViT

from mutation import assert_pieces_matter, output_of, pieces_of
from test_interop import randomize
from vitkit import VisionTransformer, create_model
from vitkit.interop.preprocess import preprocessing_of
from vitkit.presets import PRESET_FAMILIES, PRESETS, get_preset, licence_of
from vitkit.interop import load_pretrained

SIZE = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)
LN5 = partial(torch.nn.LayerNorm, eps=1e-5)


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


# Options that timm's VisionTransformer (or its DeiT subclass) has: our kwargs, timm's class and kwargs.
OPTIONS = {
    "clip": (dict(norm_pre=True, patch_bias=False, norm_eps=1e-5), TimmViT, dict(pre_norm=True, norm_layer=LN5)),
    "clip_quickgelu": (dict(norm_pre=True, patch_bias=False, norm_eps=1e-5, act="quick_gelu"), TimmViT,
                       dict(pre_norm=True, norm_layer=LN5, act_layer="quick_gelu")),
    "siglip_map": (dict(class_token=False, pool="map", act="gelu_tanh"), TimmViT,
                   dict(class_token=False, global_pool="map", act_layer="gelu_tanh")),
    "siglip_gap": (dict(class_token=False, pool="mean", fc_norm=False), TimmViT,
                   dict(class_token=False, global_pool="avg", fc_norm=False)),
    "map_after_cls_and_registers": (dict(pool="map", reg_tokens=2), TimmViT, dict(global_pool="map", reg_tokens=2)),
    "map_with_fc_norm": (dict(pool="map", fc_norm=True, class_token=False), TimmViT,
                         dict(global_pool="map", fc_norm=True, class_token=False)),
    "dinov2_giant_swiglu": (dict(mlp="swiglu", act="silu", mlp_ratio=2.66667 * 2, layer_scale_init=1e-5,
                                 reg_tokens=4, no_embed_class=True), TimmViT,
                            dict(mlp_layer=timm.layers.SwiGLUPacked, act_layer=torch.nn.SiLU, mlp_ratio=2.66667 * 2,
                                 init_values=1e-5, reg_tokens=4, no_embed_class=True)),
    "deit_distilled": (dict(distilled=True), VisionTransformerDistilled, {}),
}
# Besides pieces_of(config): the final norm, position table, and the exact GELU where the confusion is QuickGELU
# (CLIP) or tanh-GELU (timm's SigLIP GAP)
EXTRA_PIECES = {"clip": ["act:quick_gelu", "final_norm"], "siglip_gap": ["final_norm", "act:gelu_tanh"],
                "map_after_cls_and_registers": ["final_norm"], "dinov2_giant_swiglu": ["final_norm"],
                "deit_distilled": ["final_norm", "pos_embed"]}


@pytest.mark.parametrize("option", OPTIONS)
def test_option_equals_timm(option):
    ours_kw, cls, timm_kw = OPTIONS[option]
    ref = cls(**SIZE, **timm_kw).eval()
    model = VisionTransformer(**SIZE, **ours_kw).eval()
    assert list(model.state_dict()) == list(ref.state_dict())  # same names, same order
    randomize(ref)  # no parameter left at a special value (zero biases, unit norms), each piece mattering
    model.load_state_dict(ref.state_dict())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        features = ref.forward_features(x)
        assert max_diff(model.forward_features(x), features) <= 1e-6
        assert max_diff(model.forward_head(features, pre_logits=True), ref.forward_head(features, pre_logits=True)) \
            <= 1e-6
        want = ref(x)
        assert max_diff(model(x), want) <= 1e-6
    assert_pieces_matter(model, x, features, want, pieces_of(model.config) + EXTRA_PIECES.get(option, []))


def test_distilled_logits_average_both_heads_in_training_too():
    """timm returns the average unless asked for distillation training (then a tuple, which vitkit leaves to the
    caller: the two heads are ``head`` and ``head_dist``)."""
    ref = randomize(VisionTransformerDistilled(**SIZE)).train()  # not timm's init: heads and token that matter
    with torch.no_grad():  # logits ~1, so that the float rounding of training mode's patch matmul (vitkit's, on
        for head in (ref.head, ref.head_dist):  # a CPU) against timm's convolution stays well under 1e-6
            head.weight.mul_(0.25)
    model = VisionTransformer(**SIZE, distilled=True).train()
    model.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert max_diff(model(x), ref(x)) <= 1e-6
    with torch.no_grad():
        assert_pieces_matter(model, x, ref.forward_features(x), ref(x), ["dist_head", "dist_token"])
    tokens = model.forward_features(x)
    torch.testing.assert_close(model.forward_head(tokens), (ref.head(tokens[:, 0]) + ref.head_dist(tokens[:, 1])) / 2)
    assert model.num_prefix_tokens == 2 and model.pos_embed.shape == (1, 2 + 16, 48)


def test_head_without_bias_equals_timm_with_a_zero_bias():
    ref = TimmViT(**SIZE).eval()
    model = VisionTransformer(**SIZE, head_bias=False).eval()
    assert "head.bias" not in model.state_dict()
    state = ref.state_dict()
    torch.nn.init.normal_(ref.head.weight)
    with torch.no_grad():
        ref.head.bias.zero_()
    model.load_state_dict({k: v for k, v in state.items() if k != "head.bias"})
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), ref(x))


def beit_key(key: str) -> str:
    """timm's BEiT keys in vitkit's names (the layer scale and each block's relative position table)."""
    key = re.sub(r"\.gamma_([12])$", r".ls\1.gamma", key)
    return key.replace("attn.relative_position_bias_table", "attn.relative_position_bias.relative_position_bias_table")


BEIT = dict(use_relative_position=True, pos_embed="none", pool="mean", fc_norm=True, layer_scale_init=0.1,
            qkv_bias="qv")


def test_beit_config_equals_timm_beit():
    """A 2-d relative position bias with BEiT's three prefix entries, no absolute position embedding, mean pool
    with fc_norm, layer scale and query/value biases compute timm's Beit."""
    ref = randomize(Beit(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10,
                         use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=0.1))
    model = VisionTransformer(**SIZE, **BEIT).eval()
    state = {beit_key(k): v for k, v in ref.state_dict().items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in state.items()}
    model.load_state_dict(state)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        features, want = ref.forward_features(x), ref(x)
        assert max_diff(model.forward_features(x), features) <= 1e-6
        assert max_diff(model(x), want) <= 1e-6
    assert_pieces_matter(model, x, features, want, pieces_of(model.config) + ["q_bias"])


def vit_pytorch_to_vitkit(sd: dict, depth: int, patch: int, channels: int) -> dict:
    """vit-pytorch's current ViT keys in vitkit's names; its patch vectors are (p1 p2 c), vitkit's (c p1 p2)."""
    d = sd["to_patch_embedding.2.weight"].shape[0]
    perm = torch.arange(patch * patch * channels).reshape(patch, patch, channels).permute(2, 0, 1).flatten()
    out = {"patch_embed.pre_norm.weight": sd["to_patch_embedding.1.weight"][perm],
           "patch_embed.pre_norm.bias": sd["to_patch_embedding.1.bias"][perm],
           "patch_embed.proj.weight": sd["to_patch_embedding.2.weight"].reshape(d, patch, patch, channels)
           .permute(0, 3, 1, 2), "patch_embed.proj.bias": sd["to_patch_embedding.2.bias"],
           "patch_embed.norm.weight": sd["to_patch_embedding.3.weight"],
           "patch_embed.norm.bias": sd["to_patch_embedding.3.bias"],
           "pos_embed": sd["pos_embedding"][None], "norm.weight": sd["transformer.norm.weight"],
           "norm.bias": sd["transformer.norm.bias"], "head.weight": sd["mlp_head.weight"],
           "head.bias": sd["mlp_head.bias"]}
    if sd["cls_token"].numel():
        out["cls_token"] = sd["cls_token"][None]  # (1, D) -> (1, 1, D)
    for i in range(depth):
        a, f, b = f"transformer.layers.{i}.0.", f"transformer.layers.{i}.1.net.", f"blocks.{i}."
        out.update({b + "norm1.weight": sd[a + "norm.weight"], b + "norm1.bias": sd[a + "norm.bias"],
                    b + "attn.qkv.weight": sd[a + "to_qkv.weight"], b + "attn.proj.weight": sd[a + "to_out.0.weight"],
                    b + "attn.proj.bias": sd[a + "to_out.0.bias"], b + "norm2.weight": sd[f + "0.weight"],
                    b + "norm2.bias": sd[f + "0.bias"], b + "mlp.fc1.weight": sd[f + "1.weight"],
                    b + "mlp.fc1.bias": sd[f + "1.bias"], b + "mlp.fc2.weight": sd[f + "4.weight"],
                    b + "mlp.fc2.bias": sd[f + "4.bias"]})
    return out


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_patch_norm_model_equals_vit_pytorch(pool):
    from vit_pytorch import ViT as LucidViT
    ref = randomize(LucidViT(image_size=(16, 24), patch_size=4, num_classes=5, dim=32, depth=2, heads=4, dim_head=8,
                             mlp_dim=64, pool=pool))
    model = VisionTransformer(img_size=(16, 24), patch_size=4, num_classes=5, embed_dim=32, depth=2, num_heads=4,
                              mlp_ratio=2.0, patch_norm=True, qkv_bias=False, norm_eps=1e-5, class_token=pool == "cls",
                              pool=pool, fc_norm=False).eval()
    state = vit_pytorch_to_vitkit(ref.state_dict(), 2, 4, 3)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in state.items()}
    model.load_state_dict(state)
    x = torch.randn(3, 3, 16, 24)
    with torch.no_grad():
        want, tokens = ref(x), output_of(ref.transformer, lambda: ref(x))  # vit-pytorch's normed tokens
        assert max_diff(model(x), want) <= 1e-5  # logits and tokens up to ~4: a few float32 ulp apart
        assert max_diff(model.forward_features(x), tokens) <= 1e-5
    assert_pieces_matter(model, x, tokens, want, pieces_of(model.config) + ["attn_scale", "final_norm"])


# --------------------------------------------------------------------------------------------------------------
# Every preset of the families against timm's model of the same name

FAMILY_PRESETS = [n for n, family in PRESET_FAMILIES.items() if family != "vit"]
SIZES = ("embed_dim", "depth", "num_heads", "mlp_ratio", "mlp", "patch_size")
# The tiny copies check each preset's options; its sizes are checked at full size once per family and shape.
FULL_SIZE = list({(PRESET_FAMILIES[n], *(PRESETS[n].get(k) for k in SIZES)): n for n in reversed(FAMILY_PRESETS)}
                 .values())


# What each family's presets have beyond a plain ViT (pieces_of(config) must list them, and each must matter).
FAMILY_PIECES = {"clip": ["norm_pre"], "siglip": [], "dinov2": ["layer_scale"], "deit": [],
                 "beit": ["rel_pos_bias", "qv_bias", "layer_scale", "mean_pool", "fc_norm"],
                 "beitv2": ["rel_pos_bias", "qv_bias", "layer_scale", "mean_pool", "fc_norm"],
                 "dinov3": ["rope", "layer_scale", "registers"], "lingbot": ["rope", "layer_scale", "registers"],
                 "pe": ["rope", "norm_pre"], "eva02": ["rope", "swiglu"], "eva": [],
                 "rope_vit": ["rope", "layer_scale"], "sbb": ["rope", "layer_scale", "registers", "mean_pool"],
                 "aimv2": ["rmsnorm", "embed_norm", "swiglu"], "tipsv2": ["layer_scale", "registers"]}


def _timm_state(model) -> dict:
    """timm's state dict in vitkit's keys: BEiT's renamed here, the rest (Eva's q/k/v, gamma_1, the split SwiGLU's
    fc1_g/fc1_x ...) by the loader's timm format."""
    if isinstance(model, Beit):
        return {beit_key(k): v for k, v in model.state_dict().items()}
    return load_pretrained(model, source="timm").state


@pytest.mark.parametrize("name", FAMILY_PRESETS)
def test_preset_equals_timm(name):
    """Same image size and head as timm's default weights; a tiny-fied copy (one block, width 128, a 2x2 patch
    grid, the family's options kept) computes timm's logits with shared weights."""
    cfg = timm.models.get_pretrained_cfg(name)
    model_cfg = get_preset(name)
    assert (model_cfg.img_size, model_cfg.img_size, model_cfg.num_classes) == (*cfg.input_size[1:], cfg.num_classes)
    # width 128: timm's Eva rounds a SwiGLU's hidden width per half, int(128 * ratio / 2) * 2 == int(128 * ratio)
    # (LingBot's giant aligns it to 8: 192 comes out even)
    tiny = dict(depth=1, embed_dim=192 if "giant_patch16_lingbot" in name else 128, num_heads=4,
                img_size=2 * model_cfg.patch_size)
    ref = randomize(timm.create_model(name, **tiny))
    model = create_model(name, **tiny).eval()
    state = _timm_state(ref)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in state.items()}
    model.load_state_dict(state)
    x = torch.randn(2, 3, tiny["img_size"], tiny["img_size"])
    with torch.no_grad():
        want, features = ref(x), ref.forward_features(x)
        assert max_diff(model(x), want) <= 1e-6
        assert max_diff(model.forward_features(x), features) <= 1e-6
    pieces = pieces_of(model.config)
    assert set(FAMILY_PIECES[PRESET_FAMILIES[name]]) <= set(pieces), pieces
    assert_pieces_matter(model, x, features, want, pieces)


@pytest.mark.parametrize("name", FULL_SIZE)
def test_preset_architecture_equals_timm_at_full_size(name):
    with torch.device("meta"):
        ref, model = timm.create_model(name), create_model(name)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in _timm_state(ref).items()}
    theirs, ours = ref.blocks[0], model.blocks[0]
    assert ours.attn.num_heads == theirs.attn.num_heads and ours.norm1.eps == theirs.norm1.eps
    probe = torch.linspace(-4, 4, 101)
    assert torch.equal(ours.mlp.act(probe), theirs.mlp.act(probe))


@pytest.mark.parametrize("name", [n for n in PRESETS if timm.models.get_pretrained_cfg(n) is not None])
def test_preprocessing_equals_timm_pretrained_config(name):
    cfg = timm.models.get_pretrained_cfg(name)
    assert preprocessing_of(name) == dict(mean=tuple(cfg.mean), std=tuple(cfg.std), interpolation=cfg.interpolation,
                                          crop_pct=cfg.crop_pct, crop_mode=cfg.crop_mode)
    assert licence_of(name) == cfg.license


def test_licence_of_families_and_unknown_names():
    assert licence_of("dinov3") == "dinov3-license" and licence_of("vit_small_patch16_dinov3") == "dinov3-license"
    assert licence_of("vit_tiny_patch16_dinov3_qkvb") == "fair-noncommercial-research-license"
    assert licence_of("aimv2_large_patch14_224") == "apple-ascl" and licence_of("no_such_model") is None


def test_preprocessing_of_families_and_unknown_names():
    assert preprocessing_of("clip")["mean"] == (0.48145466, 0.4578275, 0.40821073)
    assert preprocessing_of("dinov2") == dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                                              interpolation="bicubic", crop_pct=1.0)
    assert preprocessing_of("no_such_model") is None
    preprocessing_of("siglip")["crop_pct"] = 0.0  # a copy: the table stays as it was
    assert preprocessing_of("siglip")["crop_pct"] == 0.9


def test_export_of_the_new_options():
    """torch.export of a model with every new option computes the eager logits."""
    model = VisionTransformer(**SIZE, norm_pre=True, patch_bias=False, patch_norm=True, head_bias=False,
                              act="quick_gelu", mlp="swiglu", pool="map", qkv_bias="qv", reg_tokens=1).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.export(model, (x,)).module()(x), model(x), rtol=0, atol=1e-6)
        distilled = VisionTransformer(**SIZE, distilled=True).eval()
        torch.testing.assert_close(torch.export.export(distilled, (x,)).module()(x), distilled(x), rtol=0, atol=1e-6)
