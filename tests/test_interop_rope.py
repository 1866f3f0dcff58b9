"""The 2025-26 timm backbones, loaded live, against timm (issue 23's "Done when"): one tiny model of each family
(DINOv3 S / S+ SwiGLU / qkvb, LingBot, Perception Encoder core / lang / spatial, EVA-02 and its CLIP tower,
RoPE-ViT axial / _ape / _mixed / _mixed_ape, the SBB register + GAP model, AIMv2, TIPSv2) with weights under which
every piece matters (tests/test_interop_timm_families.strong: q/k/v weights N(0, .15) for sharp attention, norm
gains and layer scales 1 + N(0, .1)).

For each family: forward_features (the tokens before the head) and the logits equal timm's to 1e-5 in float32 at
the model's size, at a larger one and at a non-square one (timm's and vitkit's dynamic_img_size: the rotary
embedding is recomputed for every grid), with fused and explicit attention; forward_intermediates equal timm's;
and the comparison fails by far with each of the family's pieces switched off (tests/mutation.py: the rotary
embedding, its layout and axes, the key bias, the inner norms, RMSNorm, the MAP head's own heads ...). Then, for
RoPE models: the attention maps equal the softmax(q_rot k_rot^T / sqrt(d)) that timm's own attention modules
compute, gradient checkpointing changes neither the output nor the gradients, and torch.export / ONNX files
compute the eager logits.
"""

import re
from functools import lru_cache

import pytest
import timm
import torch

from mutation import assert_pieces_matter, pieces_of
from test_interop_timm_families import strong
from vitkit import VisionTransformer
from vitkit.attention_maps import attention_rollout

TOL = 1e-5
WIDTH = dict(depth=2, embed_dim=64, num_heads=4, num_classes=5)  # head width 16

# family: (timm name, extra timm kwargs, pieces that pieces_of(config) must list besides the usual ones)
FAMILIES = {
    "dinov3": ("vit_small_patch16_dinov3", {}, ["rope", "registers", "layer_scale", "mean_pool"]),
    "dinov3_splus_swiglu": ("vit_small_plus_patch16_dinov3", {}, ["rope", "registers", "swiglu"]),
    "dinov3_qkvb": ("vit_small_patch16_dinov3_qkvb", {}, ["rope", "qv_bias", "registers"]),
    "lingbot": ("vit_small_patch16_lingbot", {}, ["rope", "qv_bias", "registers"]),
    "pe_core": ("vit_pe_core_tiny_patch16_384", {}, ["rope", "k_bias", "map", "attn_pool_heads", "pool_prefix",
                                                      "norm_pre"]),
    "pe_core_no_cls": ("vit_pe_core_tiny_patch16_384", dict(class_token=False), ["rope", "map", "attn_pool_heads"]),
    "pe_lang": ("vit_pe_lang_large_patch14_448", {}, ["rope", "k_bias", "norm_pre", "layer_scale"]),
    "pe_spatial": ("vit_pe_spatial_tiny_patch16_512", {}, ["rope", "k_bias", "norm_pre"]),
    "eva02": ("eva02_base_patch14_224", {}, ["rope", "qv_bias", "swiglu", "mlp_norm", "fc_norm"]),
    "eva02_clip": ("eva02_base_patch16_clip_224", {}, ["rope", "qv_bias", "swiglu", "attn_norm", "mlp_norm"]),
    "rope_axial": ("vit_small_patch16_rope_224", {}, ["rope", "k_bias", "layer_scale"]),
    "rope_ape": ("vit_small_patch16_rope_ape_224", {}, ["rope", "k_bias"]),
    "rope_mixed": ("vit_small_patch16_rope_mixed_224", {}, ["rope", "k_bias"]),
    "rope_mixed_ape": ("vit_small_patch16_rope_mixed_ape_224", {}, ["rope", "k_bias"]),
    "sbb_reg_gap": ("vit_betwixt_patch16_rope_reg4_gap_256", {}, ["rope", "qv_bias", "registers", "fc_norm"]),
    "aimv2": ("aimv2_large_patch14_224", {}, ["rmsnorm", "embed_norm", "swiglu"]),
    "tipsv2": ("vit_base_patch14_reg1_tipsv2", {}, ["registers", "layer_scale"]),
}
# beyond pieces_of: the learned absolute position embedding beside the rotation (_ape, TIPSv2)
EXTRA_PIECES = {"rope_ape": ["pos_embed"], "rope_mixed_ape": ["pos_embed"], "tipsv2": ["pos_embed"]}


def patch_of(name: str) -> int:
    return int(re.search(r"patch(\d+)", name).group(1))


def sizes(name: str) -> dict[str, tuple[int, int]]:
    """The model's size (a 4 x 4 patch grid), a larger one (5 x 5) and a non-square one (2 x 5)."""
    p = patch_of(name)
    return {"own": (4 * p, 4 * p), "larger": (5 * p, 5 * p), "non-square": (2 * p, 5 * p)}


def images(size: tuple[int, int], seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def strong_timm(name: str, **kw) -> torch.nn.Module:
    """timm's tiny copy (two blocks, width 64, a 4 x 4 grid, dynamic image size) with strong weights; the MAP
    head's query and key/value projections as sharp as the blocks' (N(0, .15)) and the classifier N(0, .3), so
    that what moves the pooled features moves the logits; RoPE-Mixed's learned frequencies keep timm's
    initialisation (strong() would shrink them to N(0, .05))."""
    torch.manual_seed(0)
    ref = timm.create_model(name, **{**WIDTH, "img_size": sizes(name)["own"][0], "dynamic_img_size": True, **kw})
    freqs = getattr(getattr(ref, "rope", None), "freqs", None)
    kept = freqs.clone() if isinstance(freqs, torch.nn.Parameter) else None
    strong(ref)
    if kept is not None:
        ref.rope.freqs.copy_(kept)
    for name, p in ref.named_parameters():
        if re.fullmatch(r"attn_pool\.(q|kv)\.weight|head\.weight", name):
            p.mul_(3 if name.startswith("attn_pool") else 6)
    return ref


@lru_cache(maxsize=None)
def family(fam: str):
    """(timm model, vitkit fused, vitkit explicit), built once per family."""
    name, kw, _ = FAMILIES[fam]
    ref = strong_timm(name, **kw)
    return ref, VisionTransformer.from_pretrained(ref), VisionTransformer.from_pretrained(ref, attn_impl="explicit")


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("fam", FAMILIES)
def test_family_matches_timm_at_three_sizes_fused_and_explicit_and_fails_without_its_pieces(fam):
    ref, fused, explicit = family(fam)
    assert (fused.config.attn_impl, explicit.config.attn_impl) == ("fused", "explicit")
    cfg = fused.config
    for where, size in sizes(FAMILIES[fam][0]).items():
        x = images(size)
        with torch.no_grad():
            tokens = ref.forward_features(x)
            logits = ref.forward_head(tokens)  # what ref(x) returns, without running the blocks again
            for ours in (fused, explicit):
                got_tokens = ours.forward_features(x)
                got_logits = ours.forward_head(got_tokens)
                assert got_tokens.shape == tokens.shape and got_logits.shape == logits.shape == (2, 5)
                d_tokens, d_logits = max_diff(got_tokens, tokens), max_diff(got_logits, logits)
                assert d_tokens <= TOL and d_logits <= TOL, \
                    f"{fam} {ours.config.attn_impl} at {where} {size}: tokens " \
                    f"{d_tokens:.3g}, logits {d_logits:.3g}"
    pieces = pieces_of(cfg)
    assert set(FAMILIES[fam][2]) <= set(pieces), (fam, pieces)
    pieces += EXTRA_PIECES.get(fam, [])
    # the non-square grid, where swapped rotation axes show; tokens and logits must both move by far
    x = images(sizes(FAMILIES[fam][0])["non-square"], seed=2)
    with torch.no_grad():
        tokens = ref.forward_features(x)
        logits = ref.forward_head(tokens)
    assert_pieces_matter(fused, x, tokens, logits, pieces)


def leaves(x) -> list[torch.Tensor]:
    """The tensors of nested tuples and lists, in order."""
    return [x] if isinstance(x, torch.Tensor) else [t for item in x for t in leaves(item)]


@pytest.mark.parametrize("fam", ["dinov3", "pe_spatial", "eva02_clip", "rope_mixed_ape", "sbb_reg_gap", "aimv2",
                                 "tipsv2"])
def test_forward_intermediates_equal_timms(fam):
    ref, ours, _ = family(fam)
    x = images(sizes(FAMILIES[fam][0])["non-square"])
    # timm's Eva fails on return_prefix_tokens=True without prefix tokens (it has none to return): not asked then
    prefix = ours.num_prefix_tokens > 0
    for kw in (dict(norm=True, return_prefix_tokens=prefix), dict(indices=[0], output_fmt="NLC"),
               dict(indices=1, stop_early=True, intermediates_only=True)):
        with torch.no_grad():
            want, got = ref.forward_intermediates(x, **kw), ours.forward_intermediates(x, **kw)
        flat_want, flat_got = leaves(want), leaves(got)
        assert len(flat_want) == len(flat_got) > 0, kw
        for a, b in zip(flat_want, flat_got):
            assert a.shape == b.shape and max_diff(a, b) <= TOL, (kw, a.shape, b.shape)


def timm_attention_maps(ref, x) -> dict[int, torch.Tensor]:
    """Every block's softmax(q_rot k_rot^T / sqrt(d)) as timm's own EvaAttention computes it (its explicit
    path: the weights are the input of attn_drop), and the logits of that pass."""
    maps, hooks = {}, []
    for i, blk in enumerate(ref.blocks):
        blk.attn.fused_attn = False
        hooks.append(blk.attn.attn_drop.register_forward_hook(
            lambda m, args, out, i=i: maps.__setitem__(i, args[0].detach())))
    try:
        with torch.no_grad():
            logits = ref(x)
    finally:
        for h in hooks:
            h.remove()
        for blk in ref.blocks:
            blk.attn.fused_attn = True
    return maps, logits


@pytest.mark.parametrize("fam", ["dinov3", "eva02", "rope_mixed"])
def test_attention_maps_of_a_rope_model_are_timms_rotated_softmax(fam):
    """The explicit path rotates q and k as the fused one does: its maps are timm's softmax(q_rot k_rot^T), its
    output the fused path's; get_attention_maps, forward_with_attention and rollout see the same maps."""
    ref, fused, explicit = family(fam)
    x = images(sizes(FAMILIES[fam][0])["non-square"])
    want, timm_logits = timm_attention_maps(ref, x)
    with torch.no_grad():
        fused_logits = fused(x)
        maps = fused.get_attention_maps(x)
        logits, maps_again = fused.forward_with_attention(x)
        explicit_maps = explicit.get_attention_maps(x)
    n = fused.num_prefix_tokens + x.shape[-2] // fused.config.patch_size * (x.shape[-1] // fused.config.patch_size)
    assert sorted(maps) == sorted(want) == [0, 1]
    for i in maps:
        assert maps[i].shape == want[i].shape == (2, 4, n, n)
        assert max_diff(maps[i], want[i]) <= TOL and max_diff(maps_again[i], want[i]) <= TOL
        assert max_diff(explicit_maps[i], want[i]) <= TOL
        assert max_diff(maps[i].sum(-1), torch.ones(())) <= 1e-6
    # the maps are not flat, and the rotation is in them: without it they move far
    assert min(m.amax().item() for m in maps.values()) > 0.5
    unrotated = VisionTransformer.from_pretrained(ref)
    unrotated.rope = None
    with torch.no_grad():
        assert max(max_diff(a, maps[i]) for i, a in unrotated.get_attention_maps(x).items()) > 1e-2
    assert max_diff(logits, fused_logits) <= TOL and max_diff(logits, timm_logits) <= TOL
    assert max_diff(fused_logits, explicit(x).detach()) <= TOL
    rollout = attention_rollout(maps)
    assert rollout.shape == (2, n, n) and max_diff(rollout.sum(-1), torch.ones(())) <= 1e-5


def _grads(model, x):
    model.zero_grad()
    out = model(x)
    out.square().sum().backward()
    return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("fam", ["dinov3", "rope_mixed"])
def test_gradient_checkpointing_gives_the_same_output_and_gradients(fam):
    """RoPE-Mixed's learned frequencies get their gradient through the checkpointed blocks too."""
    ref, _, _ = family(fam)
    ours = VisionTransformer.from_pretrained(ref).train()  # no dropout or drop path in these models
    x = images(sizes(FAMILIES[fam][0])["non-square"])
    out, grads = _grads(ours, x)
    ours.set_grad_checkpointing(True)
    out_ckpt, grads_ckpt = _grads(ours, x)
    with torch.no_grad():
        assert max_diff(out, ref(x)) <= TOL
    assert max_diff(out_ckpt, out) <= TOL
    assert grads.keys() == grads_ckpt.keys() and len(grads) == len(list(ours.parameters()))
    if fam == "rope_mixed":
        assert grads["rope.freqs"].abs().max() > 0
    for k in grads:
        scale = max(grads[k].abs().max().item(), 1.0)
        assert max_diff(grads_ckpt[k], grads[k]) <= TOL * scale, k


@pytest.mark.parametrize("fam", ["dinov3", "rope_axial"])
@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_export_of_a_rope_model_computes_the_eager_logits(fam, fmt, tmp_path):
    """torch.export and ONNX (onnxruntime) programs of a RoPE model at its own size: the eager logits (and
    timm's) to 1e-5, at two batch sizes through one dynamic-batch export; eager stays right after exporting
    (the rotary embedding's per-grid cache must not keep a traced tensor)."""
    from vitkit.export import export_onnx, export_pt2, load_exported

    ref, _, _ = family(fam)
    ours = VisionTransformer.from_pretrained(ref)  # a fresh copy: its rope cache starts empty
    path = (export_onnx if fmt == "onnx" else export_pt2)(ours, tmp_path / f"m.{fmt}", dynamic_batch=True)
    run = load_exported(path, fmt)
    for b in (1, 3):
        x = torch.randn(b, 3, *sizes(FAMILIES[fam][0])["own"], generator=torch.Generator().manual_seed(b))
        with torch.no_grad():
            eager, want = ours(x), ref(x)
        assert max_diff(eager, want) <= TOL
        assert max_diff(run(x), eager) <= TOL


def test_pe_core_map_head_reads_the_class_token_too():
    """PE core as timm builds it: [CLS] + patches, pooled by the 8-head MAP head over all the tokens."""
    ref = strong_timm("vit_pe_core_tiny_patch16_384")
    assert ref.cls_token is not None
    ours = VisionTransformer.from_pretrained(ref)
    x = images(sizes("vit_pe_core_tiny_patch16_384")["own"])
    with torch.no_grad():
        assert max_diff(ours.forward_features(x), ref.forward_features(x)) <= TOL  # the trunk is right
        assert max_diff(ours(x), ref(x)) <= TOL  # the pooled logits are not


# one of each rotation timm precomputes for a fixed grid (DINOv3's; the axial one with PE's offset and 'xy'
# order, and with EVA's reference grid; RoPE-Mixed's); test_interop_timm_families compares every family's tokens
@pytest.mark.parametrize("fam", ["dinov3", "pe_core", "eva02", "rope_mixed"])
def test_family_built_at_a_non_square_size_without_dynamic_size_matches_timm(fam):
    """timm's default build (no dynamic image size: its rotary embedding precomputed for the one grid, EVA's
    rescaled to the reference grid) at a non-square size: vitkit's per-grid rotation gives the same numbers."""
    name, kw, _ = FAMILIES[fam]
    size = sizes(name)["non-square"]
    ref = strong_timm(name, **{**kw, "img_size": size, "dynamic_img_size": False})
    ours = VisionTransformer.from_pretrained(ref)
    assert not ours.config.dynamic_img_size and tuple(ours.patch_embed.img_size) == size
    x = images(size)
    with torch.no_grad():
        tokens, got = ref.forward_features(x), ours.forward_features(x)
        assert max_diff(got, tokens) <= TOL and max_diff(ours.forward_head(got), ref.forward_head(tokens)) <= TOL


# --------------------------------------------------------------------------------------------------------------
# The same families as timm's state dicts (which hold nothing of the rotation) and as timm's Hub folders


@pytest.mark.parametrize("fam", [f for f in FAMILIES if f != "pe_core_no_cls"])
def test_family_state_dict_loads_by_its_timm_name_and_is_refused_without_it(fam, tmp_path):
    """A bare state dict needs the architecture's name (arch=): timm's RoPE models store no rotary tensor, so
    the keys alone would make a plain ViT of it. Named, it computes timm's tokens and logits; unnamed, it is
    refused with a sentence that says what to name (AIMv2 and TIPSv2 need no name: their keys tell all)."""
    from vitkit import from_pretrained
    from vitkit.errors import CheckpointError
    name, kw, _ = FAMILIES[fam]
    ref, live, _ = family(fam)
    x = images(sizes(name)["non-square"])
    # the tiny copy's own shape, beside its name (a SwiGLU's width as timm rounded it for width 64)
    shape = {**WIDTH, **kw, "img_size": sizes(name)["own"], "dynamic_img_size": True,
             "mlp_ratio": live.config.mlp_ratio}
    with torch.no_grad():
        tokens = ref.forward_features(x)
        logits = ref.forward_head(tokens)
        ours = from_pretrained(ref.state_dict(), arch=name, **shape)
        assert max_diff(ours.forward_features(x), tokens) <= TOL and max_diff(ours(x), logits) <= TOL
        if ours.config.rope != "none":
            with pytest.raises(CheckpointError, match=r"arch=|rope="):
                from_pretrained(ref.state_dict(), **{k: v for k, v in shape.items() if k != "img_size"})
        # timm's Hub folder: config.json names the architecture (and the tiny copy's arguments)
        from timm.models._hub import save_for_hf
        save_for_hf(ref, str(tmp_path), model_args={k: v for k, v in {**WIDTH, **kw}.items() if k != "num_classes"}
                    | {"img_size": sizes(name)["own"][0], "dynamic_img_size": True})
        folder = VisionTransformer.from_pretrained(tmp_path)
        assert max_diff(folder.forward_features(x), tokens) <= TOL and max_diff(folder(x), logits) <= TOL
