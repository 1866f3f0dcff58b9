"""Layers: relative position indices against hand tables, Swin and BEiT; fused vs explicit attention."""

import math

import pytest
import torch

from vitkit import (MultiHeadAttention, PatchEmbedding, RelativePositionBias, ScaledDotProductAttention,
                    TransformerBlock, get_relative_position_index_1d, get_relative_position_index_2d)
from vitkit.layers import PostNormBlock, resample_pos_embed, sincos_2d_pos_embed


def test_index_1d_hand_table():
    expected = torch.tensor([[2, 1, 0],
                             [3, 2, 1],
                             [4, 3, 2]])
    assert torch.equal(get_relative_position_index_1d(3), expected)


def test_index_2d_hand_table():
    # 2x2 window, cells numbered row by row: (0,0) (0,1) (1,0) (1,1); table width 2w-1 = 3, index (dy+1)*3 + dx+1.
    expected = torch.tensor([[4, 3, 1, 0],
                             [5, 4, 2, 1],
                             [7, 6, 4, 3],
                             [8, 7, 5, 4]])
    assert torch.equal(get_relative_position_index_2d((2, 2)), expected)


def swin_relative_position_index(window_size):
    """Swin Transformer's own code (microsoft/Swin-Transformer, WindowAttention.__init__), verbatim."""
    coords_h = torch.arange(window_size[0])
    coords_w = torch.arange(window_size[1])
    coords = torch.stack(torch.meshgrid([coords_h, coords_w], indexing="ij"))  # 2, Wh, Ww
    coords_flatten = torch.flatten(coords, 1)  # 2, Wh*Ww
    relative_coords = coords_flatten[:, :, None] - coords_flatten[:, None, :]  # 2, Wh*Ww, Wh*Ww
    relative_coords = relative_coords.permute(1, 2, 0).contiguous()  # Wh*Ww, Wh*Ww, 2
    relative_coords[:, :, 0] += window_size[0] - 1  # shift to start from 0
    relative_coords[:, :, 1] += window_size[1] - 1
    relative_coords[:, :, 0] *= 2 * window_size[1] - 1
    return relative_coords.sum(-1)  # Wh*Ww, Wh*Ww


@pytest.mark.parametrize("window", [(7, 7), (3, 5)])
def test_index_2d_equals_swin(window):
    assert torch.equal(get_relative_position_index_2d(window), swin_relative_position_index(window))


def test_prefix_token_entries_equal_beit():
    from timm.models.beit import gen_relative_position_index
    rpb = RelativePositionBias(num_heads=2, window_size=(3, 4), num_prefix_tokens=1)
    assert torch.equal(rpb.relative_position_index, gen_relative_position_index((3, 4)))
    assert rpb.num_relative_positions == 5 * 7 + 3
    assert rpb.relative_position_bias_table.shape == (38, 2)


def test_relative_position_bias_gathers_table():
    rpb = RelativePositionBias(num_heads=3, window_size=(2, 3), bias_type="2d")
    bias = rpb()
    assert bias.shape == (3, 6, 6)
    index = rpb.relative_position_index
    for h in range(3):
        for i in range(6):
            for j in range(6):
                assert bias[h, i, j] == rpb.relative_position_bias_table[index[i, j], h]
    rpb1 = RelativePositionBias(num_heads=2, seq_len=5, bias_type="1d")
    assert rpb1.num_relative_positions == 9 and rpb1().shape == (2, 5, 5)
    # Equal offsets share one entry: the bias is Toeplitz.
    assert torch.equal(rpb1()[:, 1:, 1:], rpb1()[:, :-1, :-1])


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_heads=2, bias_type="2d"), "window_size"),
    (dict(num_heads=2, bias_type="1d"), "seq_len"),
    (dict(num_heads=2, seq_len=4, bias_type="3d"), "bias_type"),
])
def test_relative_position_bias_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RelativePositionBias(**kwargs)


def test_sdpa_module_matches_formula():
    q, k, v = (torch.randn(2, 3, 5, 4, dtype=torch.float64) for _ in range(3))
    out, attn = ScaledDotProductAttention()(q, k, v)
    expected = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)  # sqrt(4) = 2
    torch.testing.assert_close(attn, expected, rtol=0, atol=1e-14)
    torch.testing.assert_close(out, expected @ v, rtol=0, atol=1e-14)
    _, attn_unscaled = ScaledDotProductAttention(scale=False)(q, k, v)
    torch.testing.assert_close(attn_unscaled, torch.softmax(q @ k.transpose(-1, -2), -1), rtol=0, atol=1e-14)


@pytest.mark.parametrize("relative", [False, True])
def test_fused_equals_explicit_attention(relative):
    torch.manual_seed(0)
    rpb = {"window_size": (3, 3), "num_prefix_tokens": 1} if relative else None
    attn = MultiHeadAttention(24, 4, use_relative_position=relative, rpb_kwargs=rpb).double().eval()
    if relative:
        torch.nn.init.normal_(attn.relative_position_bias.relative_position_bias_table, std=1.0)
    x = torch.randn(2, 10, 24, dtype=torch.float64)
    fused = attn(x)
    explicit, weights = attn(x, return_attention=True)
    assert (fused - explicit).abs().max() <= 1e-10
    assert weights.shape == (2, 4, 10, 10)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 10, dtype=torch.float64))


def test_attention_equals_torch_multihead_attention():
    """Our qkv/proj layout computes what nn.MultiheadAttention computes with the same weights."""
    torch.manual_seed(0)
    ours = MultiHeadAttention(16, 4).double().eval()
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True).double().eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.proj.weight)
        ref.out_proj.bias.copy_(ours.proj.bias)
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    expected, expected_weights = ref(x, x, x, average_attn_weights=False)
    out, weights = ours(x, return_attention=True)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(weights, expected_weights)


def test_block_pre_and_post_norm_formulas():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    pre = TransformerBlock(8, 2).double().eval()
    y = x + pre.attn(pre.norm1(x))
    torch.testing.assert_close(pre(x), y + pre.mlp(pre.norm2(y)))
    post = PostNormBlock(8, 2, act="relu").double().eval()
    y = post.norm1(x + post.attn(x))
    torch.testing.assert_close(post(x), post.norm2(y + post.mlp(y)))
    assert isinstance(post.mlp.act, torch.nn.ReLU)


def test_layer_scale_and_drop_path():
    block = TransformerBlock(8, 2, layer_scale_init=1e-5, drop_path=0.5)
    assert torch.equal(block.ls1.gamma, torch.full((8,), 1e-5))
    x = torch.randn(64, 3, 8)
    block.train()
    out = block(x)
    # With p=0.5 some samples skip both residual branches entirely (output == input), some do not.
    same = (out - x).abs().flatten(1).max(1).values == 0
    assert 0 < same.sum() < 64
    block.eval()
    assert not torch.equal(block(x), x)


def autograd_nodes(t: torch.Tensor) -> set[str]:
    """The names of every node in ``t``'s backward graph."""
    seen, todo = set(), [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and type(node).__name__ not in seen:
            seen.add(type(node).__name__)
            todo += [n for n, _ in node.next_functions]
    return seen


def test_patch_embedding_is_linear_map_of_patches():
    """Both paths (the convolution in eval mode, the matrix product in training mode on a CPU) equal
    F.unfold's patches times the weight, on a non-square image; their weight gradients agree too."""
    torch.manual_seed(0)
    pe = PatchEmbedding((8, 12), 4, 3, 5).double()
    x = torch.randn(2, 3, 8, 12, dtype=torch.float64)
    patches = x.unfold(2, 4, 4).unfold(3, 4, 4)  # (B, C, gh, gw, P, P)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(2, 6, 48)  # (B, N, C*P*P), row-major patch order
    expected = patches @ pe.proj.weight.reshape(5, 48).T + pe.proj.bias
    conv = pe.eval()(x)  # the convolution
    trained = pe.train()(x)  # training mode on a CPU: the matrix product
    assert "ConvolutionBackward0" not in autograd_nodes(trained) and "AddmmBackward0" in autograd_nodes(trained)
    assert "ConvolutionBackward0" in autograd_nodes(pe.proj(x))
    torch.testing.assert_close(conv, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(trained, expected, rtol=0, atol=1e-12)
    grad_out = torch.randn_like(expected)
    (trained * grad_out).sum().backward()
    via_matmul = pe.proj.weight.grad.clone()
    pe.zero_grad()
    y = pe.proj(x).flatten(2).transpose(1, 2)  # the convolution, with its own backward
    (y * grad_out).sum().backward()
    torch.testing.assert_close(via_matmul, pe.proj.weight.grad, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="expected 8x12 images, got 12x12"):
        pe(torch.randn(1, 3, 12, 12, dtype=torch.float64))
    with pytest.raises(ValueError, match="divisible"):
        PatchEmbedding(10, 4, 3, 5)


def test_sincos_matches_big_vision_formula():
    pe = sincos_2d_pos_embed((2, 3), 8)  # dim/4 = 2 frequencies: omega = [1, 1/10000]
    assert pe.shape == (6, 8)
    y, x = 1, 2  # cell 5
    omega = [1.0, 1e-4]
    expected = [math.sin(x * o) for o in omega] + [math.cos(x * o) for o in omega] + \
               [math.sin(y * o) for o in omega] + [math.cos(y * o) for o in omega]
    torch.testing.assert_close(pe[5], torch.tensor(expected))


def test_resample_pos_embed_equals_timm():
    from timm.layers import resample_abs_pos_embed
    pos = torch.randn(1, 1 + 14 * 14, 32)
    ours = resample_pos_embed(pos, (24, 24), (14, 14), num_prefix_tokens=1)
    theirs = resample_abs_pos_embed(pos, (24, 24), (14, 14), num_prefix_tokens=1)
    assert ours.shape == (1, 1 + 24 * 24, 32)
    assert torch.equal(ours[:, :1], pos[:, :1])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# The layers of the model families (CLIP, SigLIP, DINOv2, BEiT, vit-pytorch), each against its reference


def test_activations_equal_timm():
    from timm.layers import QuickGELU, get_act_layer
    from vitkit.layers import ACTIVATIONS
    x = torch.randn(1000) * 4
    assert torch.equal(ACTIVATIONS["quick_gelu"]()(x), QuickGELU()(x))
    assert torch.equal(ACTIVATIONS["quick_gelu"]()(x), x * torch.sigmoid(1.702 * x))
    torch.testing.assert_close(ACTIVATIONS["silu"]()(x), x * torch.sigmoid(x))  # PyTorch's kernel rounds otherwise
    assert torch.equal(ACTIVATIONS["gelu_tanh"]()(x), get_act_layer("gelu_tanh")()(x))


def test_glu_mlp_equals_timm_swiglu_packed():
    """The gate is the first half of fc1's output (timm's SwiGLUPacked, DINOv2's w12), fc2 reads half the width."""
    from timm.layers import SwiGLUPacked
    from vitkit.layers import GluMlp
    ref = SwiGLUPacked(in_features=24, hidden_features=64).eval()
    ours = GluMlp(24, 64, act="silu").eval()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 5, 24)
    assert torch.equal(ours(x), ref(x))
    h = ours.fc1(x)
    torch.testing.assert_close(ours(x), ours.fc2(torch.nn.functional.silu(h[..., :32]) * h[..., 32:]))
    with pytest.raises(ValueError, match="65 is odd"):
        GluMlp(24, 65)


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh"])
def test_attention_pool_equals_timm(act):
    from timm.layers import AttentionPoolLatent as TimmPool, get_act_layer
    from vitkit.layers import AttentionPoolLatent
    ref = TimmPool(48, num_heads=4, mlp_ratio=3.0, norm_layer=torch.nn.LayerNorm, act_layer=get_act_layer(act)).eval()
    ours = AttentionPoolLatent(48, 4, 144, act, norm_eps=1e-5).eval()
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 7, 48)
    assert torch.equal(ours(x), ref(x))


def test_qv_bias_attention_equals_timm_beit():
    """BEiT's biases: learned for the query and value, zero for the key, beside a bias-free qkv."""
    from timm.models.beit import Attention as BeitAttention
    ref = BeitAttention(24, num_heads=4, qkv_bias=True).eval()
    ours = MultiHeadAttention(24, 4, qkv_bias="qv").eval()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    torch.nn.init.normal_(ref.q_bias)
    torch.nn.init.normal_(ref.v_bias)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 10, 24)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours(x, return_attention=True)[0], ref(x), rtol=0, atol=1e-6)
    assert ours.qkv.bias is None


def test_patch_norm_equals_vit_pytorch():
    """vit-pytorch cuts patches in (p1 p2 c) order: its LayerNorm weights and Linear map to vitkit's (C, P, P)
    order by one permutation, and then the two patch embeddings agree on a non-square image."""
    from vit_pytorch import ViT as LucidViT
    c, p, d = 3, 4, 32
    ref = LucidViT(image_size=(8, 12), patch_size=p, num_classes=1, dim=d, depth=1, heads=2, mlp_dim=8,
                   channels=c).to_patch_embedding.eval()
    for m in (ref[1], ref[3]):
        torch.nn.init.normal_(m.weight)
        torch.nn.init.normal_(m.bias)
    ours = PatchEmbedding((8, 12), p, c, d, norm=True, norm_eps=1e-5).eval()
    perm = torch.arange(p * p * c).reshape(p, p, c).permute(2, 0, 1).flatten()  # (c p1 p2) -> index in (p1 p2 c)
    ours.load_state_dict({
        "pre_norm.weight": ref[1].weight[perm], "pre_norm.bias": ref[1].bias[perm],
        "proj.weight": ref[2].weight.reshape(d, p, p, c).permute(0, 3, 1, 2), "proj.bias": ref[2].bias,
        "norm.weight": ref[3].weight, "norm.bias": ref[3].bias})
    x = torch.randn(2, c, 8, 12)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.train()(x), ours.eval()(x), rtol=0, atol=0)


def test_patch_embedding_without_bias_equals_timm():
    from timm.layers import PatchEmbed
    ref = PatchEmbed(8, 4, 3, 5, bias=False).eval()
    pe = PatchEmbedding(8, 4, 3, 5, bias=False)
    assert list(pe.state_dict()) == list(ref.state_dict()) == ["proj.weight"]
    pe.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(pe.eval()(x), ref(x))
    torch.testing.assert_close(pe.train()(x), ref(x), rtol=0, atol=1e-6)  # the matrix product on a CPU
