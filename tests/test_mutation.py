"""The mutation helper the parity tests use (tests/mutation.py): it refuses a piece the model has not (so no
check switches off nothing), leaves the model it copies alone, and fails when a piece does not matter."""

import pytest
import torch

from mutation import PIECES, assert_pieces_matter, pieces_of, switch_off, switched_off
from vitkit import VisionTransformer

TINY = dict(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=3)

# Each piece of the 2025-26 backbones, with a small model that has it: (ViTConfig options, image size)
NEW_PIECES = {
    "rope": dict(rope="axial", pos_embed="none"),
    "rope_layout": dict(rope="dinov3", pos_embed="none", reg_tokens=2),
    "rope_axes": dict(rope="mixed", pos_embed="none"),
    "k_bias": dict(rope="axial", qkv_bias=True),
    "attn_norm": dict(attn_norm=True),
    "mlp_norm": dict(mlp_norm=True, mlp="swiglu", act="silu"),
    "embed_norm": dict(embed_norm=True, norm_layer="rmsnorm", class_token=False, pool="mean"),
    "rmsnorm": dict(norm_layer="rmsnorm"),
    "attn_pool_heads": dict(pool="map", attn_pool_heads=4, num_heads=2),
    "pool_prefix": dict(pool="map", pool_include_prefix=True, reg_tokens=1),
    # issue 29: the pieces of hand-written ViTs
    "attn_dim": dict(attn_dim=64, num_heads=2),
    "custom_scale": dict(attn_scale=0.05, attn_dim=48, num_heads=4),
    "head_mlp": dict(head_hidden_dim=24, head_act="gelu"),
    "head_norm": dict(head_norm=True, head_hidden_dim=24),
}


def test_a_piece_the_model_has_not_is_an_error():
    plain = VisionTransformer(**TINY).eval()
    for piece in ("norm_pre", "layer_scale", "qv_bias", "rel_pos_bias", "map", "dist_head", "swiglu", "act:gelu"):
        with pytest.raises(ValueError, match=f"cannot switch off {piece!r}"):
            switch_off(plain, piece)
    for piece in NEW_PIECES:  # the pieces of the 2025-26 backbones, which a plain ViT has not either
        with pytest.raises(ValueError, match=f"cannot switch off {piece!r}"):
            switch_off(plain if piece != "k_bias" else VisionTransformer(**TINY, qkv_bias=False), piece)
    with pytest.raises(KeyError, match="unknown piece"):
        switch_off(plain, "qk_norm")


def test_switched_off_is_a_copy_and_pieces_of_lists_the_options():
    model = VisionTransformer(**TINY, norm_pre=True, layer_scale_init=1.0, qkv_bias="qv", act="quick_gelu").eval()
    assert pieces_of(model.config) == ["head_layout", "norm_pre", "layer_scale", "qv_bias", "act:gelu"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for piece in pieces_of(model.config):
        switched_off(model, piece)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model.norm_pre, torch.nn.LayerNorm) and model.blocks[0].ls1.gamma is not None
    assert set(pieces_of(model.config)) <= set(PIECES)


def test_a_piece_that_does_not_matter_fails_the_check():
    """Layer scales at exactly 1 compute what no layer scale computes: the check must say so."""
    model = VisionTransformer(**TINY, layer_scale_init=1.0).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        tokens, logits = model.forward_features(x), model(x)
    with pytest.raises(AssertionError, match=r"layer_scale \(tokens moved 0\.00e\+00"):
        assert_pieces_matter(model, x, tokens, logits, ["layer_scale"])
    with torch.no_grad():
        for blk in model.blocks:
            blk.ls1.gamma.mul_(0.5)
        tokens, logits = model.forward_features(x), model(x)
    moved = assert_pieces_matter(model, x, tokens, logits, ["layer_scale"])
    assert moved["layer_scale"][0] > 1e-3


@torch.no_grad()
def _strong(model):
    """Weights under which each piece matters: norm gains 1 + N(0, .1) and nonzero norm biases, sharp attention
    (q/k/v N(0, .3)), everything else N(0, .1); RoPE-Mixed's frequencies kept as initialised."""
    g = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        if name.endswith("rope.freqs"):
            continue
        if p.ndim == 1 and "norm" in name and name.endswith("weight"):
            p.copy_(1 + 0.1 * noise)
        elif "qkv" in name:
            p.copy_(0.3 * noise)
        else:
            p.copy_(0.1 * noise)
    return model.eval()


@pytest.mark.parametrize("piece", NEW_PIECES)
def test_each_new_piece_is_listed_and_matters(piece):
    """pieces_of lists the piece for a config that has it, and switching it off moves tokens and logits by far
    (a non-square 3 x 2 patch grid, so that swapped rope axes show too)."""
    model = _strong(VisionTransformer(**{**TINY, "img_size": (24, 16), "embed_dim": 32, "depth": 2,
                                         **NEW_PIECES[piece]}))
    assert piece in pieces_of(model.config) and set(pieces_of(model.config)) <= set(PIECES)
    x = torch.randn(2, 3, 24, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        tokens, logits = model.forward_features(x), model(x)
    moved = assert_pieces_matter(model, x, tokens, logits, pieces_of(model.config))
    assert moved[piece][1] > 1e-3


def test_a_key_bias_matters_only_under_a_rotary_embedding():
    """Without rope, q . (k + b) shifts every key's logit by the same q . b: softmax leaves it alone, and the
    check says the piece does not matter (which is why pieces_of lists k_bias only for rope models)."""
    model = _strong(VisionTransformer(**TINY, qkv_bias=True))
    assert "k_bias" not in pieces_of(model.config)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        tokens, logits = model.forward_features(x), model(x)
    with pytest.raises(AssertionError, match=r"k_bias \(tokens moved"):
        assert_pieces_matter(model, x, tokens, logits, ["k_bias"])
