"""The mutation helper the parity tests use (tests/mutation.py): it refuses a piece the model has not (so no
check switches off nothing), leaves the model it copies alone, and fails when a piece does not matter."""

import pytest
import torch

from mutation import PIECES, assert_pieces_matter, pieces_of, switch_off, switched_off
from vitkit import VisionTransformer

TINY = dict(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=3)


def test_a_piece_the_model_has_not_is_an_error():
    plain = VisionTransformer(**TINY).eval()
    for piece in ("norm_pre", "layer_scale", "qv_bias", "rel_pos_bias", "map", "dist_head", "swiglu", "act:gelu"):
        with pytest.raises(ValueError, match=f"cannot switch off {piece!r}"):
            switch_off(plain, piece)
    with pytest.raises(KeyError, match="unknown piece"):
        switch_off(plain, "rope")


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
