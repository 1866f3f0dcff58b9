"""The VisionTransformer: timm parity, parameter counts, invariances, attention on request, compile/export,
image-size changes and config validation."""

import pytest
import timm
import torch

import vitkit
from mutation import assert_pieces_matter, pieces_of
from test_interop import randomize
from vitkit import ConfigError, ViT, ViTConfig, VisionTransformer, count_parameters, create_model

TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)


def tiny(**kw):
    return VisionTransformer(**{**TINY, **kw})


# Variants that exist in both libraries: our kwargs, timm's kwargs.
TIMM_VARIANTS = {
    "cls": ({}, {}),
    "gap_no_cls": (dict(class_token=False, pool="mean"), dict(class_token=False, global_pool="avg")),
    "registers": (dict(reg_tokens=4, no_embed_class=True), dict(reg_tokens=4, no_embed_class=True)),
    "layer_scale": (dict(layer_scale_init=0.1), dict(init_values=0.1)),
    "no_qkv_bias": (dict(qkv_bias=False), dict(qkv_bias=False)),
    "gap_with_cls": (dict(pool="mean"), dict(global_pool="avg")),
}


@pytest.mark.parametrize("variant", TIMM_VARIANTS)
def test_same_logits_and_keys_as_timm(variant):
    ours_kw, timm_kw = TIMM_VARIANTS[variant]
    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10, **timm_kw).eval()
    model = tiny(**ours_kw).eval()
    assert list(model.state_dict()) == list(ref.state_dict())  # same names, same order
    randomize(ref)  # not timm's init (zero biases, layer scale 0.1, a tiny head): each piece must matter
    model.load_state_dict(ref.state_dict())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want, tokens = ref(x), ref.forward_features(x)
    assert (model(x) - want).abs().max() <= 1e-6
    torch.testing.assert_close(model.forward_features(x), tokens, rtol=0, atol=1e-6)
    final = "fc_norm" if model.config.use_fc_norm else "final_norm"
    assert_pieces_matter(model, x, tokens, want, list(dict.fromkeys(pieces_of(model.config) + ["pos_embed", final])))


@pytest.mark.parametrize("name, expected", [
    ("vit_tiny_patch16_224", 5_717_416),
    ("vit_small_patch16_224", 22_050_664),
    ("vit_base_patch16_224", 86_567_656),   # 86.6M, the paper's ViT-B/16
    ("vit_large_patch16_224", 304_326_632),  # 304.3M
    ("vit_huge_patch14_224", 632_045_800),   # 632M with a 1000-class head
])
def test_parameter_counts(name, expected):
    with torch.device("meta"):
        assert count_parameters(create_model(name)) == expected


def test_preset_matches_timm_architecture():
    with torch.device("meta"):
        ours = create_model("vit_small_patch16_224", num_classes=10, img_size=32)
        ref = timm.create_model("vit_small_patch16_224", num_classes=10, img_size=32)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


def test_aliases_of_the_seeds():
    # seed 004 says n_heads, seed 001 says dropout, timm says in_chans: all name the same fields.
    model = tiny(n_heads=3, dropout=0.1, in_chans=1)
    assert (model.config.num_heads, model.config.drop_rate, model.config.in_channels) == (3, 0.1, 1)
    assert ViT is VisionTransformer


def test_seed_001_example_relative_position():
    model = VisionTransformer(img_size=224, patch_size=16, in_channels=3, num_classes=1000, embed_dim=768, depth=1,
                              num_heads=12, use_relative_position=True,
                              rpb_kwargs={"num_heads": 12, "window_size": (14, 14), "bias_type": "2d"})
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    rpb = model.blocks[0].attn.relative_position_bias
    assert rpb.relative_position_bias_table.shape == (27 * 27 + 3, 12)  # BEiT's 3 extra entries for [CLS]
    assert rpb().shape == (12, 197, 197)
    # seed 001's MultiHeadAttention example
    attn = vitkit.MultiHeadAttention(embed_dim=96, num_heads=4, use_relative_position=True,
                                     rpb_kwargs={"num_heads": 4, "window_size": (7, 7), "bias_type": "2d"})
    assert attn(torch.randn(2, 49, 96)).shape == (2, 49, 96)


def test_seed_003_config_and_cls_representation():
    cfg = ViTConfig(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=0)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (48, 2, 3, 192)
    model = VisionTransformer(cfg).eval()
    x = torch.randn(2, 3, 32, 32)
    rep = model(x)
    assert rep.shape == (2, 48)
    torch.testing.assert_close(rep, model.forward_features(x)[:, 0])
    assert VisionTransformer.from_config(cfg).config == cfg


def test_hf_config_mapping():
    from transformers import ViTConfig as HFConfig
    hf = HFConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96,
                  image_size=32, patch_size=8, num_labels=7)
    cfg = ViTConfig.from_hf(hf)
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_dim, cfg.num_classes, cfg.norm_eps) == \
        (48, 2, 3, 96, 7, 1e-12)


def test_batch_permutation_invariance():
    model = tiny(use_relative_position=True).eval()
    x = torch.randn(5, 3, 32, 32)
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(model.forward_features(x)[perm], model.forward_features(x[perm]), rtol=0, atol=1e-6)


def test_gradients_reach_every_parameter():
    model = tiny(use_relative_position=True, reg_tokens=2, layer_scale_init=1e-2).train()
    model(torch.randn(2, 3, 32, 32)).logsumexp(-1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("relative", [False, True])
def test_explicit_attention_trains_like_fused(relative):
    """attn_impl='explicit' is the same model: same keys, same logits and gradients up to float64 rounding,
    with attention dropout off (the two draw different dropout masks)."""
    torch.manual_seed(0)
    fused = tiny(use_relative_position=relative, reg_tokens=1).double().train()
    explicit = tiny(use_relative_position=relative, reg_tokens=1, attn_impl="explicit").double().train()
    explicit.load_state_dict(fused.state_dict())
    assert all(not b.attn.fused for b in explicit.blocks) and all(b.attn.fused for b in fused.blocks)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    for model in (fused, explicit):
        model(x).logsumexp(-1).sum().backward()
    torch.testing.assert_close(explicit(x), fused(x), rtol=0, atol=1e-12)
    grads = dict(fused.named_parameters())
    for name, p in explicit.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=0, atol=1e-12, msg=name)


def test_attention_maps_only_for_requested_layers(monkeypatch):
    model = tiny(depth=4).eval()
    calls = []
    original = vitkit.ScaledDotProductAttention.forward
    monkeypatch.setattr(vitkit.ScaledDotProductAttention, "forward",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    x = torch.randn(2, 3, 32, 32)
    maps = model.get_attention_maps(x, layers=[1, -1])
    assert sorted(maps) == [1, 3] and len(calls) == 2
    assert maps[3].shape == (2, 3, 17, 17)
    # Layer 0's map, recomputed by hand from its input.
    tokens = model._pos_embed(model.patch_embed(x), model.patch_embed.grid_size)
    blk = model.blocks[0]
    q, k, _ = blk.attn.qkv(blk.norm1(tokens)).reshape(2, 17, 3, 3, 16).permute(2, 0, 3, 1, 4)
    expected = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1)
    torch.testing.assert_close(model.get_attention_maps(x, layers=[0])[0], expected)
    logits, maps = model.forward_with_attention(x)  # one pass: logits and every layer's map
    assert sorted(maps) == [0, 1, 2, 3] and torch.allclose(logits, model(x), atol=1e-6)
    torch.testing.assert_close(maps[0], expected)
    with pytest.raises(ValueError, match="layer 4 does not exist"):
        model.get_attention_maps(x, layers=[4])


def test_dynamic_img_size_equals_timm():
    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10, dynamic_img_size=True).eval()
    model = tiny(dynamic_img_size=True).eval()
    model.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 48, 64)  # non-square, larger grid
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="expected 32x32 images, got 48x64"):
        tiny()(x)


def test_set_img_size_resamples_pos_embed():
    from timm.layers import resample_abs_pos_embed
    model = tiny()
    pos = model.pos_embed.detach().clone()
    model.set_img_size(64)
    assert model.pos_embed.shape == (1, 1 + 64, 48)
    torch.testing.assert_close(model.pos_embed.detach(), resample_abs_pos_embed(pos, (8, 8), (4, 4)))
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_sincos_and_no_pos_embed_variants():
    model = tiny(pos_embed="sincos2d").eval()
    assert "pos_embed" not in dict(model.named_parameters()) and "fixed_pos_embed" not in model.state_dict()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert tiny(pos_embed="none", pool="mean")(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_compile_and_export_match_eager():
    model = tiny(depth=1).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        eager = model(x)
        torch.testing.assert_close(torch.export.export(model, (x,)).module()(x), eager, rtol=0, atol=1e-6)
        torch.testing.assert_close(torch.compile(model)(x), eager, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(embed_dim=50, num_heads=3), r"embed_dim \(50\) must be divisible by num_heads \(3\)"),
    (dict(img_size=30), r"img_size 30 must be divisible by patch_size 8"),
    (dict(pool="max"), r"pool must be one of 'cls', 'mean', 'map', 'cls_mean', got 'max'"),
    (dict(use_relative_position=True, rpb_kwargs={"window_size": (7, 7)}),
     r"window_size \(7, 7\) must match the patch grid \(4, 4\)"),
    (dict(num_heads=3, n_heads=4), r"n_heads=4 contradicts num_heads=3"),
    (dict(pool="cls", class_token=False), r"pool='cls' needs class_token=True"),
    (dict(attn_impl="flash"), r"attn_impl must be one of 'fused', 'explicit', got 'flash'"),
    (dict(qkv_bias="kv"), r"qkv_bias must be true, false or 'qv' \(query and value only\), got 'kv'"),
    (dict(distilled=True, class_token=False, pool="mean"), r"distilled=True reads the \[CLS\] and distillation"),
    (dict(distilled=True, pool="mean"), r"needs class_token=True, pool='cls' and no fc_norm"),
    (dict(distilled=True, fc_norm=True), r"needs class_token=True, pool='cls' and no fc_norm"),
    (dict(mlp="swiglu", mlp_ratio=1.0 + 1 / 48), r"mlp='swiglu' splits .* so it must be even, got 49"),
    (dict(mlp="geglu"), r"mlp must be one of 'mlp', 'swiglu', got 'geglu'"),
    (dict(act="swish"), r"act must be one of 'gelu', 'gelu_tanh', 'quick_gelu', 'silu', 'relu', got 'swish'"),
])
def test_invalid_configs_name_argument_and_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)


def test_config_from_dict_names_bad_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'model.embed_dimm'; expected one of: img_size"):
        ViTConfig.from_dict({"embed_dimm": 3})
    with pytest.raises(ConfigError, match=r"config key 'model.depth' must be an integer, got '12' \(str\)"):
        ViTConfig.from_dict({"depth": "12"})
    with pytest.raises(ConfigError, match="unknown model name 'vit_bse_patch16_224'; did you mean vit_base"):
        create_model("vit_bse_patch16_224")
    cfg = ViTConfig.from_dict({"img_size": [32, 48], "patch_size": 8, "n_heads": 4, "embed_dim": 64})
    assert cfg.img_size == (32, 48) and cfg.num_heads == 4 and cfg.grid_size == (4, 6)


def test_config_accepts_yaml11_float_strings():
    # YAML 1.1 (PyYAML) reads `3e-4` without a dot as a string; float fields take it as the number it is.
    cfg = ViTConfig.from_dict({"drop_path_rate": "1e-1", "norm_eps": "1e-6"})
    assert cfg.drop_path_rate == 0.1 and cfg.norm_eps == 1e-6
    with pytest.raises(ConfigError, match=r"config key 'model.norm_eps' must be a number, got 'tiny' \(str\)"):
        ViTConfig.from_dict({"norm_eps": "tiny"})


def test_building_a_model_does_not_import_torchvision():
    import subprocess
    import sys
    code = ("import sys, vitkit; vitkit.create_model('vit_tiny_patch16_224', img_size=32, patch_size=8);"
            "print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


TINY_KW = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)


def test_inference_keeps_timm_numbers_and_hooked_outputs():
    """Under inference mode and bf16 autocast the logits still equal timm's bit for bit, and an output a hook
    holds is never overwritten afterwards."""
    timm = pytest.importorskip("timm")
    kw = {k: TINY_KW[k] for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "num_classes")}
    ours = create_model("vit_tiny_patch16_224", **kw).eval()
    theirs = timm.create_model("vit_tiny_patch16_224", **kw).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(ours(x), theirs(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 branches must still promote onto the fp32 stream
            a, b = ours(x), theirs(x)
        assert a.dtype == b.dtype and torch.equal(a, b)
    seen = []
    hook = ours.blocks[0].mlp.fc1.register_forward_hook(lambda m, i, out: seen.extend([out.clone(), out]))
    with torch.inference_mode():
        ours(x)
    hook.remove()
    assert torch.equal(seen[0], seen[1])  # a hooked output is not overwritten afterwards


# ----------------------------------------------------------------------------------------------------------------
# forward_intermediates and grad checkpointing


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(indices=2, norm=True),
    dict(indices=[0, -1], output_fmt="NLC", return_prefix_tokens=True),
    dict(indices=[1], return_prefix_tokens=True, stop_early=True),
    dict(indices=[2, 0], norm=True, intermediates_only=True, output_fmt="NLC"),
])
@pytest.mark.parametrize("prefix", ["cls_regs", "none"])
def test_forward_intermediates_equal_timm(kwargs, prefix):
    """Every argument combination gives timm's outputs (non-square grid; [CLS] + registers, or no prefix)."""
    ours_kw, timm_kw = (dict(reg_tokens=2), dict(reg_tokens=2)) if prefix == "cls_regs" else \
        (dict(class_token=False, pool="mean"), dict(class_token=False, global_pool="avg"))
    size = dict(img_size=(32, 48), patch_size=8, embed_dim=48, depth=3, num_heads=3, num_classes=10)
    ref = timm.models.vision_transformer.VisionTransformer(**size, **timm_kw).eval()
    model = VisionTransformer(**size, **ours_kw).eval()
    model.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 32, 48)
    expected, got = ref.forward_intermediates(x, **kwargs), model.forward_intermediates(x, **kwargs)
    if not kwargs.get("intermediates_only"):
        torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
        expected, got = expected[1], got[1]
    assert len(got) == len(expected) > 0
    for a, b in zip(got, expected):
        for u, v in zip(*((a, b) if isinstance(a, tuple) else ((a,), (b,)))):
            assert u.shape == v.shape
            torch.testing.assert_close(u, v, rtol=0, atol=0)
    if kwargs.get("output_fmt", "NCHW") == "NCHW":
        assert (got[0][0] if isinstance(got[0], tuple) else got[0]).shape == (2, 48, 4, 6)


def test_forward_intermediates_with_attention_in_the_same_pass():
    model = tiny(depth=3, reg_tokens=1).eval()
    x = torch.randn(2, 3, 32, 32)
    final, inter = model.forward_intermediates(x, indices=[1])
    final2, inter2, maps = model.forward_intermediates(x, indices=[1], attention_layers=[0, -1])
    torch.testing.assert_close(final2, final, rtol=0, atol=1e-5)  # layers 0 and 2 computed explicitly
    torch.testing.assert_close(inter2[0], inter[0], rtol=0, atol=1e-5)
    assert sorted(maps) == [0, 2]
    for i, m in model.get_attention_maps(x, layers=[0, 2]).items():
        torch.testing.assert_close(maps[i], m, rtol=0, atol=0)
    only, maps = model.forward_intermediates(x, 1, intermediates_only=True, stop_early=True, attention_layers=[0])
    torch.testing.assert_close(only[0], model.forward_intermediates(x, [2])[1][0], rtol=0, atol=1e-5)
    assert list(maps) == [0]
    with pytest.raises(ValueError, match="indices=4 asks for the last 4 blocks; the model has 3"):
        model.forward_intermediates(x, 4)
    with pytest.raises(ValueError, match="block 3 does not exist; the model has layers 0..2"):
        model.forward_intermediates(x, [3])


def _gradients(model, x, seed=0):
    torch.manual_seed(seed)
    model.zero_grad()
    model(x).logsumexp(-1).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_grad_checkpointing_gives_the_same_gradients_and_recomputes_only_in_training():
    """Checkpointed blocks run twice in a training step (forward, then again in backward) and give exactly the
    same gradients, dropout and stochastic depth included (their random draws are replayed); in eval it is a
    no-op."""
    model = tiny(depth=3, drop_rate=0.1, drop_path_rate=0.2, layer_scale_init=0.1).train()
    calls = []
    for block in model.blocks:  # a pre-hook: the recomputation stops once it has what backward needs
        block.register_forward_pre_hook(lambda *_: calls.append(1))
    x = torch.randn(4, 3, 32, 32)
    plain = _gradients(model, x)
    assert len(calls) == 3
    model.set_grad_checkpointing()
    calls.clear()
    checkpointed = _gradients(model, x)
    assert len(calls) == 6  # each block recomputed once in backward
    for name, g in plain.items():
        torch.testing.assert_close(checkpointed[name], g, rtol=0, atol=0, msg=name)
    model.eval()
    calls.clear()
    out = model(x)
    out.sum().backward()
    assert len(calls) == 3  # no recomputation
    model.set_grad_checkpointing(False)
    assert torch.equal(out, model(x))


def test_attn_dim_scale_and_mlp_head_options():
    """attn_dim: q, k, v of that width (qkv D -> 3A, proj A -> D), timm's Attention(attn_head_dim=) exactly;
    attn_scale the q k^T factor, fused and explicit alike; head_hidden_dim / head_act / head_norm a head
    [LayerNorm] Linear -> act -> Linear whose pre_logits output is the hidden layer's; what contradicts is one
    sentence."""
    from timm.models.vision_transformer import Attention
    kw = dict(img_size=16, patch_size=8, embed_dim=48, depth=1, num_heads=4, num_classes=3)
    model = randomize(VisionTransformer(**kw, attn_dim=96))
    attn = model.blocks[0].attn
    assert (attn.qkv.weight.shape, attn.proj.weight.shape, attn.head_dim) == ((288, 48), (48, 96), 24)
    ref = Attention(48, num_heads=4, attn_head_dim=24, qkv_bias=True).eval()
    ref.load_state_dict(attn.state_dict())
    x = torch.randn(2, 5, 48)
    with torch.no_grad():
        assert (attn(x) - ref(x)).abs().max() <= 1e-6
        scaled = randomize(VisionTransformer(**kw, attn_scale=0.05))
        explicit = VisionTransformer(scaled.config.replace(attn_impl="explicit")).eval()
        explicit.load_state_dict(scaled.state_dict())
        img = torch.randn(2, 3, 16, 16)
        assert (scaled(img) - explicit(img)).abs().max() <= 1e-5
    head = VisionTransformer(**kw, representation_size=20, head_act="gelu", head_norm=True)
    assert head.config.head_hidden_dim == 20 and head.num_features == 20 and head.head.weight.shape == (3, 20)
    assert {"head_norm.weight", "pre_logits.fc.weight", "pre_logits.fc.bias"} <= set(head.state_dict())
    assert head.forward_head(head.forward_features(torch.randn(1, 3, 16, 16)), pre_logits=True).shape == (1, 20)
    assert vitkit.flops_per_image(head.config) == vitkit.flops_per_image(ViTConfig(**kw)) - 2 * 48 * 3 + \
        2 * 20 * 3 + 2 * 48 * 20
    plain = VisionTransformer(**kw)
    assert set(plain.state_dict()) == set(VisionTransformer(**kw, attn_dim=48, attn_scale=None).state_dict())
    for bad, match in [(dict(attn_dim=50), r"attn_dim \(50\) must be divisible by num_heads"),
                       (dict(head_act="gelu"), "only head_hidden_dim"),
                       (dict(distilled=True, head_hidden_dim=8), "two linear heads"),
                       (dict(attn_scale=0.0), "attn_scale must lie in")]:
        with pytest.raises(ConfigError, match=match):
            ViTConfig(**kw, **bad)


def test_pool_cls_mean_is_cls_and_mean_patch_side_by_side():
    """DINOv2's linear-evaluation input: [CLS] and the mean of the patch tokens after the final norm, (B, 2D)."""
    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, num_classes=3,
                              reg_tokens=2, pool="cls_mean").eval()
    x = torch.randn(2, 3, 16, 16)
    tokens = model.forward_features(x)  # (2, 1 + 2 + 16, 16)
    expected = torch.cat([tokens[:, 0], tokens[:, 3:].mean(dim=1)], dim=1)
    assert torch.equal(model.forward_head(tokens, pre_logits=True), expected)
    assert model.head.weight.shape == (3, 32)
    assert torch.allclose(model(x), expected @ model.head.weight.T + model.head.bias, atol=1e-6)


def test_head_l2norm_and_a_bias_free_projection():
    """A projection (identity activation, no bias), then unit length, then the classifier: a zero-shot head."""
    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, num_classes=4,
                              head_hidden_dim=8, head_act="identity", head_hidden_bias=False, head_l2norm=True,
                              head_bias=False).eval()
    assert model.pre_logits.fc.bias is None and "pre_logits.fc.bias" not in model.state_dict()
    x = torch.randn(3, 3, 16, 16)
    f = model.forward_features(x)[:, 0] @ model.pre_logits.fc.weight.T  # (3, 8)
    f = f / f.norm(dim=1, keepdim=True)
    assert torch.allclose(model.forward_head(model.forward_features(x), pre_logits=True), f, atol=1e-6)
    assert torch.allclose(model(x), f @ model.head.weight.T, atol=1e-6)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(pool="cls_mean", class_token=False), "needs class_token"),
    (dict(pool="cls_mean", fc_norm=True), "takes no fc_norm"),
    (dict(head_hidden_bias=False), "only head_hidden_dim"),
    (dict(head_act="identity"), "only head_hidden_dim"),
])
def test_head_and_pool_settings_that_describe_nothing_are_refused(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, **kwargs)


def test_compat_names_are_the_canonical_ones():
    """vitkit.compat's names are vitkit's under another spelling: the same class, the same maps, the same
    config, the same checkpoint functions."""
    from vitkit import compat
    from vitkit.train import checkpoint
    assert ViT is compat.ViT is VisionTransformer
    assert compat.save_checkpoint is checkpoint.save_checkpoint and compat.load_checkpoint is checkpoint.load_checkpoint
    assert isinstance(ViTConfig(), compat.ConfigNames) and issubclass(VisionTransformer, compat.ModelNames)
    assert ViTConfig.from_kwargs(n_heads=4, dropout=0.1, in_chans=1, embed_dim=64) == \
        ViTConfig(num_heads=4, drop_rate=0.1, in_channels=1, embed_dim=64)
    with pytest.raises(ConfigError, match="n_heads=4 contradicts num_heads=3"):
        ViTConfig.from_kwargs(n_heads=4, num_heads=3)
    model = tiny(depth=3).eval()
    x = torch.randn(2, 3, 32, 32)
    maps = model.get_attention_maps(x, layers=[-1])
    assert list(maps) == [2] and torch.equal(maps[2], model.forward_with_attention(x, [-1])[1][2])
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        compat.nothing
