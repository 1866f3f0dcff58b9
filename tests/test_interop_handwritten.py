"""Hand-written ViTs of issue 29 load into vitkit and give their logits (float32, <= 1e-5) with the fewest
arguments: vit-pytorch 0.x (``patch_to_embedding``, ``Residual(PreNorm(...))`` keys, its MLP heads, its attention
scaled by the model width before 0.6.7), an attention wider than the model (vit-pytorch's default dim_head=64
on dim=48, timm's ``attn_head_dim``). The old releases' ``vit_pytorch/vit_pytorch.py`` are kept below verbatim
(MIT licence, Phil Wang; ``git show TAG:vit_pytorch/vit_pytorch.py`` of lucidrains/vit-pytorch) and are the
reference for theirs; 0.2.0 is 0.1.0 with one line more (a LayerNorm before the MLP head), 0.6.7 is 0.6.5 with
commit 85314cf's one-line fix of the scale."""

import types
import warnings

import pytest
import torch

from mutation import assert_pieces_matter, output_of
from test_interop import TOL, images, max_diff, randomize
from test_interop_clip import logits, silent, tokens
from vitkit import CheckpointError, from_pretrained

pytest.importorskip("einops")

RELEASES = {
    "0.1.0": r"""
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

class Residual(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn
    def forward(self, x, **kwargs):
        return self.fn(x, **kwargs) + x

class PreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn
    def forward(self, x, **kwargs):
        return self.fn(self.norm(x), **kwargs)

class FeedForward(nn.Module):
    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, dim)
        )
    def forward(self, x):
        return self.net(x)

class Attention(nn.Module):
    def __init__(self, dim, heads = 8):
        super().__init__()
        self.heads = heads
        self.scale = dim ** -0.5

        self.to_qkv = nn.Linear(dim, dim * 3, bias = False)
        self.to_out = nn.Linear(dim, dim)
    def forward(self, x, mask = None):
        b, n, _, h = *x.shape, self.heads
        qkv = self.to_qkv(x)
        q, k, v = rearrange(qkv, 'b n (qkv h d) -> qkv b h n d', qkv = 3, h = h)

        dots = torch.einsum('bhid,bhjd->bhij', q, k) * self.scale

        if mask is not None:
            mask = F.pad(mask.flatten(1), (1, 0), value = True)
            assert mask.shape[-1] == dots.shape[-1], 'mask has incorrect dimensions'
            mask = mask[:, None, :] * mask[:, :, None]
            dots.masked_fill_(~mask, float('-inf'))
            del mask

        attn = dots.softmax(dim=-1)

        out = torch.einsum('bhij,bhjd->bhid', attn, v)
        out = rearrange(out, 'b h n d -> b n (h d)')
        out =  self.to_out(out)
        return out

class Transformer(nn.Module):
    def __init__(self, dim, depth, heads, mlp_dim):
        super().__init__()
        self.layers = nn.ModuleList([])
        for _ in range(depth):
            self.layers.append(nn.ModuleList([
                Residual(PreNorm(dim, Attention(dim, heads = heads))),
                Residual(PreNorm(dim, FeedForward(dim, mlp_dim)))
            ]))
    def forward(self, x, mask = None):
        for attn, ff in self.layers:
            x = attn(x, mask = mask)
            x = ff(x)
        return x

class ViT(nn.Module):
    def __init__(self, *, image_size, patch_size, num_classes, dim, depth, heads, mlp_dim, channels = 3):
        super().__init__()
        assert image_size % patch_size == 0, 'image dimensions must be divisible by the patch size'
        num_patches = (image_size // patch_size) ** 2
        patch_dim = channels * patch_size ** 2

        self.patch_size = patch_size

        self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 1, dim))
        self.patch_to_embedding = nn.Linear(patch_dim, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.transformer = Transformer(dim, depth, heads, mlp_dim)

        self.to_cls_token = nn.Identity()

        self.mlp_head = nn.Sequential(
            nn.Linear(dim, mlp_dim),
            nn.GELU(),
            nn.Linear(mlp_dim, num_classes)
        )

    def forward(self, img, mask = None):
        p = self.patch_size

        x = rearrange(img, 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)', p1 = p, p2 = p)
        x = self.patch_to_embedding(x)

        cls_tokens = self.cls_token.expand(img.shape[0], -1, -1)
        x = torch.cat((cls_tokens, x), dim=1)
        x += self.pos_embedding
        x = self.transformer(x, mask)

        x = self.to_cls_token(x[:, 0])
        return self.mlp_head(x)
""",
    "0.6.5": r"""
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

MIN_NUM_PATCHES = 16

class Residual(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn
    def forward(self, x, **kwargs):
        return self.fn(x, **kwargs) + x

class PreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn
    def forward(self, x, **kwargs):
        return self.fn(self.norm(x), **kwargs)

class FeedForward(nn.Module):
    def __init__(self, dim, hidden_dim, dropout = 0.):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, dim),
            nn.Dropout(dropout)
        )
    def forward(self, x):
        return self.net(x)

class Attention(nn.Module):
    def __init__(self, dim, heads = 8, dim_head = 64, dropout = 0.):
        super().__init__()
        inner_dim = dim_head *  heads
        self.heads = heads
        self.scale = dim ** -0.5

        self.to_qkv = nn.Linear(dim, inner_dim * 3, bias = False)
        self.to_out = nn.Sequential(
            nn.Linear(inner_dim, dim),
            nn.Dropout(dropout)
        )

    def forward(self, x, mask = None):
        b, n, _, h = *x.shape, self.heads
        qkv = self.to_qkv(x).chunk(3, dim = -1)
        q, k, v = map(lambda t: rearrange(t, 'b n (h d) -> b h n d', h = h), qkv)

        dots = torch.einsum('bhid,bhjd->bhij', q, k) * self.scale
        mask_value = -torch.finfo(dots.dtype).max

        if mask is not None:
            mask = F.pad(mask.flatten(1), (1, 0), value = True)
            assert mask.shape[-1] == dots.shape[-1], 'mask has incorrect dimensions'
            mask = mask[:, None, :] * mask[:, :, None]
            dots.masked_fill_(~mask, mask_value)
            del mask

        attn = dots.softmax(dim=-1)

        out = torch.einsum('bhij,bhjd->bhid', attn, v)
        out = rearrange(out, 'b h n d -> b n (h d)')
        out =  self.to_out(out)
        return out

class Transformer(nn.Module):
    def __init__(self, dim, depth, heads, dim_head, mlp_dim, dropout):
        super().__init__()
        self.layers = nn.ModuleList([])
        for _ in range(depth):
            self.layers.append(nn.ModuleList([
                Residual(PreNorm(dim, Attention(dim, heads = heads, dim_head = dim_head, dropout = dropout))),
                Residual(PreNorm(dim, FeedForward(dim, mlp_dim, dropout = dropout)))
            ]))
    def forward(self, x, mask = None):
        for attn, ff in self.layers:
            x = attn(x, mask = mask)
            x = ff(x)
        return x

class ViT(nn.Module):
    def __init__(self, *, image_size, patch_size, num_classes, dim, depth, heads, mlp_dim, pool = 'cls', channels = 3, dim_head = 64, dropout = 0., emb_dropout = 0.):
        super().__init__()
        assert image_size % patch_size == 0, 'Image dimensions must be divisible by the patch size.'
        num_patches = (image_size // patch_size) ** 2
        patch_dim = channels * patch_size ** 2
        assert num_patches > MIN_NUM_PATCHES, f'your number of patches ({num_patches}) is way too small for attention to be effective (at least 16). Try decreasing your patch size'
        assert pool in {'cls', 'mean'}, 'pool type must be either cls (cls token) or mean (mean pooling)'

        self.patch_size = patch_size

        self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 1, dim))
        self.patch_to_embedding = nn.Linear(patch_dim, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dropout = nn.Dropout(emb_dropout)

        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, dropout)

        self.pool = pool
        self.to_latent = nn.Identity()

        self.mlp_head = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, num_classes)
        )

    def forward(self, img, mask = None):
        p = self.patch_size

        x = rearrange(img, 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)', p1 = p, p2 = p)
        x = self.patch_to_embedding(x)
        b, n, _ = x.shape

        cls_tokens = repeat(self.cls_token, '() n d -> b n d', b = b)
        x = torch.cat((cls_tokens, x), dim=1)
        x += self.pos_embedding[:, :(n + 1)]
        x = self.dropout(x)

        x = self.transformer(x, mask)

        x = x.mean(dim = 1) if self.pool == 'mean' else x[:, 0]

        x = self.to_latent(x)
        return self.mlp_head(x)
""",
}
# 0.2.0 is 0.1.0 with a LayerNorm first in the MLP head; 0.6.7 is 0.6.5 with commit 85314cf's scale
RELEASES["0.2.0"] = RELEASES["0.1.0"].replace("        self.mlp_head = nn.Sequential(\n",
                                              "        self.mlp_head = nn.Sequential(\n            nn.LayerNorm(dim),\n")
RELEASES["0.6.7"] = RELEASES["0.6.5"].replace("self.scale = dim ** -0.5", "self.scale = dim_head ** -0.5")
assert RELEASES["0.2.0"] != RELEASES["0.1.0"] and RELEASES["0.6.7"] != RELEASES["0.6.5"]

# 25 patches: 0.3 - 0.6 assert more than 16
SIZES = dict(image_size=40, patch_size=8, num_classes=5, dim=64, depth=2, heads=4, mlp_dim=96)


def release(version: str) -> types.ModuleType:
    """vit_pytorch/vit_pytorch.py of an old release, as a module (in the vit_pytorch package, where it lived)."""
    module = types.ModuleType(f"vit_pytorch.release_{version.replace('.', '_')}")
    exec(compile(RELEASES[version], f"vit_pytorch-{version}/vit_pytorch.py", "exec"), module.__dict__)
    return module


def trained(ref: torch.nn.Module, steps: int = 3) -> torch.nn.Module:
    """``ref`` with random weights after a few SGD steps on random labels (as a saved model would be)."""
    randomize(ref).train()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 3, 40, 40, generator=g)
    y = torch.randint(0, 5, (4,), generator=g)
    opt = torch.optim.SGD(ref.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(x), y).backward()
        opt.step()
    return ref.eval()


def assumed(fn, *args, **kwargs):
    """(fn(...), the warnings' text)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    return out, " ".join(str(w.message) for w in caught)


def their_tokens(ref, x, norm=None):
    out = output_of(ref.transformer, lambda: ref(x))
    with torch.no_grad():
        return out if norm is None else norm(out)


def test_vit_pytorch_0_1_linear_gelu_linear_head_and_width_scale():
    """0.0.1 - 0.1.0: Linear-GELU-Linear head on the raw [CLS] token (no final norm), attention by dim ** -0.5;
    the keys prove both, so only the heads (not in the weights) are given."""
    ref = trained(release("0.1.0").ViT(**SIZES))
    state = ref.state_dict()
    assert "patch_to_embedding.weight" in state and "transformer.layers.0.0.fn.fn.to_qkv.weight" in state
    x = images(2, 40)
    ours = silent(from_pretrained, state, num_heads=4)
    cfg = ours.config
    assert (cfg.head_hidden_dim, cfg.head_act, cfg.attn_scale, cfg.final_norm) == (96, "gelu", 64 ** -0.5, False)
    want, toks = logits(ref, x), their_tokens(ref, x)
    assert max_diff(tokens(ours, x), toks) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, toks, want, ["custom_scale", "head_mlp", "head_layout", "pos_embed"])
    ours, said = assumed(from_pretrained, state)  # the heads assumed: dim_head 64, so 1 head, and said
    assert "assumed dim_head=64" in said and "attn_scale" not in said


def test_vit_pytorch_0_2_layernorm_mlp_head():
    """0.2.x: LayerNorm, Linear, GELU, Linear: the LayerNorm is vitkit's final norm (of [CLS]), then the MLP."""
    ref = trained(release("0.2.0").ViT(**SIZES))
    x = images(2, 40)
    ours = silent(from_pretrained, ref.state_dict(), num_heads=4)
    assert (ours.config.head_hidden_dim, ours.config.head_act, ours.config.final_norm) == (96, "gelu", True)
    want, toks = logits(ref, x), their_tokens(ref, x, norm=ref.mlp_head[0])
    assert max_diff(tokens(ours, x), toks) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, toks, want, ["custom_scale", "head_mlp", "final_norm", "head_layout"])


def test_vit_pytorch_0_6_5_attention_wider_than_the_model_scaled_by_dim():
    """0.6.5 with dim_head=64 on dim=48: q, k, v 256 wide, scaled by 48 ** -0.5. A state dict alone loads, with
    the heads (dim_head 64), the scale (up to 0.6.5) and the pooling assumed and said."""
    sizes = {**SIZES, "dim": 48}
    ref = trained(release("0.6.5").ViT(**sizes))
    assert ref.state_dict()["transformer.layers.0.0.fn.fn.to_qkv.weight"].shape == (3 * 256, 48)
    x = images(2, 40)
    ours, said = assumed(from_pretrained, ref.state_dict())
    cfg = ours.config
    assert (cfg.attn_dim, cfg.num_heads, cfg.attn_scale) == (256, 4, 48 ** -0.5)
    assert "assumed dim_head=64" in said and "assumed dim ** -0.5" in said and "pool='cls'" in said
    want, toks = logits(ref, x), their_tokens(ref, x, norm=ref.mlp_head[0])
    assert max_diff(tokens(ours, x), toks) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, toks, want, ["custom_scale", "final_norm", "head_layout", "pos_embed"])
    live = silent(from_pretrained, ref)  # live: the heads and the scale from the modules
    assert live.config.attn_scale == 48 ** -0.5 and max_diff(logits(live, x), want) <= TOL
    other = silent(from_pretrained, ref.state_dict(), num_heads=4, pool="cls", attn_scale=None)
    assert max_diff(logits(other, x), want) > 1e-3  # 0.6.7's scale is not this model's
    with pytest.raises(CheckpointError, match="pools the mean of all tokens, its"):  # [CLS] in the mean
        from_pretrained(release("0.6.5").ViT(**sizes, pool="mean"))


def test_vit_pytorch_0_6_7_scale_by_dim_head_when_told():
    sizes = {**SIZES, "dim": 48}
    ref = trained(release("0.6.7").ViT(**sizes))
    x = images(2, 40)
    ours = silent(from_pretrained, ref.state_dict(), num_heads=4, pool="cls", attn_scale=None)
    assert ours.config.attn_scale is None and ours.config.attn_dim == 256
    want, toks = logits(ref, x), their_tokens(ref, x, norm=ref.mlp_head[0])
    assert max_diff(tokens(ours, x), toks) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, toks, want, ["attn_dim", "head_layout", "final_norm"])
    _, said = assumed(from_pretrained, ref.state_dict(), num_heads=4, pool="cls")
    assert "pass attn_scale=None for 0.6.7 or 0.6.8" in said
    live = silent(from_pretrained, ref)  # live: the modules say dim_head ** -0.5
    assert live.config.attn_scale is None and max_diff(logits(live, x), want) <= TOL


def test_vit_pytorch_current_with_dim_head_64_on_dim_48():
    """vit-pytorch's default dim_head=64 for a width that is not heads x 64: live (heads from the modules) and as a
    state dict (heads = width of q / 64, assumed and said)."""
    vit_pytorch = pytest.importorskip("vit_pytorch")
    ref = trained(vit_pytorch.ViT(**{**SIZES, "dim": 48}))
    x = images(2, 40)
    ours = silent(from_pretrained, ref)
    assert (ours.config.attn_dim, ours.config.num_heads, ours.config.attn_scale) == (256, 4, None)
    want, toks = logits(ref, x), output_of(ref.transformer, lambda: ref(x))
    assert max_diff(tokens(ours, x), toks) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, toks, want, ["attn_dim", "head_layout", "patch_norm", "patch_pre_norm"])
    ours, said = assumed(from_pretrained, ref.state_dict())
    assert "assumed dim_head=64" in said and ours.config.num_heads == 4
    assert max_diff(logits(ours, x), want) <= TOL


def test_timm_attention_with_attn_head_dim():
    """A timm ViT whose blocks' Attention has attn_head_dim (attn_dim != embed_dim): live and as a state dict."""
    from timm.models.vision_transformer import Attention, VisionTransformer as TimmViT
    ref = TimmViT(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, num_classes=5)
    for blk in ref.blocks:
        blk.attn = Attention(48, num_heads=4, attn_head_dim=24, qkv_bias=True)
    ref = randomize(ref)
    x = images(2, 32)
    want, toks = logits(ref, x), tokens(ref, x)
    ours = silent(from_pretrained, ref)
    assert (ours.config.attn_dim, ours.config.num_heads) == (96, 4)
    assert max_diff(tokens(ours, x), toks) <= TOL and max_diff(logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, toks, want, ["attn_dim", "head_layout", "final_norm"])
    ours = silent(from_pretrained, ref.state_dict(), num_heads=4, img_size=32)
    assert max_diff(logits(ours, x), want) <= TOL


# ------------------------------------------------------------------------------------------------------------
# nn.MultiheadAttention blocks and torch.nn encoders with a LayerNorm + Linear head


class AttentionBlock(torch.nn.Module):
    """The UvA deep-learning course's ViT block (tutorial 15), pre-norm around nn.MultiheadAttention."""

    def __init__(self, embed_dim, hidden_dim, num_heads, dropout=0.0):
        super().__init__()
        self.layer_norm_1 = torch.nn.LayerNorm(embed_dim)
        self.attn = torch.nn.MultiheadAttention(embed_dim, num_heads, dropout=dropout)
        self.layer_norm_2 = torch.nn.LayerNorm(embed_dim)
        self.linear = torch.nn.Sequential(torch.nn.Linear(embed_dim, hidden_dim), torch.nn.GELU(),
                                          torch.nn.Dropout(dropout), torch.nn.Linear(hidden_dim, embed_dim),
                                          torch.nn.Dropout(dropout))

    def forward(self, x):
        inp_x = self.layer_norm_1(x)
        x = x + self.attn(inp_x, inp_x, inp_x)[0]
        return x + self.linear(self.layer_norm_2(x))


class TutorialViT(torch.nn.Module):
    """The course's VisionTransformer with a convolutional patch embedding: [CLS], learned positions, the blocks in
    an nn.Sequential on (T, B, D) tokens, and mlp_head = LayerNorm + Linear on [CLS]."""

    def __init__(self, dim=64, hidden=96, heads=4, depth=2, patch=8, img=32, classes=5):
        super().__init__()
        self.patch_embed = torch.nn.Conv2d(3, dim, patch, patch)
        self.transformer = torch.nn.Sequential(*[AttentionBlock(dim, hidden, heads) for _ in range(depth)])
        self.mlp_head = torch.nn.Sequential(torch.nn.LayerNorm(dim), torch.nn.Linear(dim, classes))
        self.cls_token = torch.nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embedding = torch.nn.Parameter(torch.randn(1, 1 + (img // patch) ** 2, dim))

    def forward_features(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.repeat(len(x), 1, 1), x], dim=1) + self.pos_embedding
        return self.transformer(x.transpose(0, 1)).transpose(0, 1)

    def forward(self, x):
        return self.mlp_head(self.forward_features(x)[:, 0])


def test_multihead_attention_prenorm_blocks_with_layernorm_linear_head():
    ref = randomize(TutorialViT())
    x = images(2, 32)
    want, toks = logits(ref, x), tokens(ref, x)
    ours, said = assumed(from_pretrained, ref)  # live: the heads; where the norms sit and the act are code
    assert "assumed norm_style='pre'" in said and "assumed act='gelu'" in said
    cfg = ours.config
    assert (cfg.num_heads, cfg.head_norm, cfg.final_norm, cfg.norm_eps) == (4, True, False, 1e-5)
    assert max_diff(tokens(ours, x), toks) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, toks, want, ["head_norm", "norm_order", "act:relu", "head_layout", "pos_embed"])
    ours = silent(from_pretrained, ref.state_dict(), num_heads=4, norm_style="pre", act="gelu")
    assert max_diff(logits(ours, x), want) <= TOL


MLP_HEADS = {  # mlp_head as tutorials write it: (modules, pieces that must matter, whose activation is assumed)
    "ln_linear": (lambda: [torch.nn.LayerNorm(64), torch.nn.Linear(64, 5)], ["head_norm"], False),
    "linear_gelu_linear": (lambda: [torch.nn.Linear(64, 32), torch.nn.GELU(), torch.nn.Linear(32, 5)],
                           ["head_mlp"], True),
    "linear_gelu_dropout_linear": (lambda: [torch.nn.Linear(64, 32), torch.nn.GELU(), torch.nn.Dropout(0.1),
                                            torch.nn.Linear(32, 5)], ["head_mlp"], True),
    "ln_linear_gelu_linear": (lambda: [torch.nn.LayerNorm(64), torch.nn.Linear(64, 32), torch.nn.GELU(),
                                       torch.nn.Linear(32, 5)], ["head_norm", "head_mlp"], True),
}


@pytest.mark.parametrize("head", MLP_HEADS)
def test_torch_encoder_with_layernorm_linear_mlp_head(head):
    """An nn.TransformerEncoder ViT (pre-norm, with its own final norm) whose head is an nn.Sequential mlp_head:
    detected as torch.nn; its LayerNorm is head_norm, its first Linear pre_logits.fc (GELU assumed and said)."""
    from test_interop_torchnn import EncoderViT
    modules, pieces, act_assumed = MLP_HEADS[head]
    ref = EncoderViT(True, "gelu")
    del ref.classifier
    ref.mlp_head = torch.nn.Sequential(*modules())
    ref.forward = lambda x: ref.mlp_head(ref.forward_features(x)[:, 0])
    ref = randomize(ref)
    x = images(2, 32)
    want, toks = logits(ref, x), tokens(ref, x)
    ours, said = assumed(from_pretrained, ref)
    assert ("assumed head_act='gelu'" in said) == act_assumed and said.count("assumed") == act_assumed
    assert ours.config.head_norm == ("head_norm" in pieces) and ours.config.final_norm
    assert max_diff(tokens(ours, x), toks) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, toks, want, [*pieces, "final_norm", "norm_order", "head_layout"])


def test_timm_state_dict_with_representation_size():
    """timm before 0.6 saved ViTs with representation_size as pre_logits.fc (Linear -> tanh) before the head: the
    keys say it, and vitkit computes head(tanh(pre_logits.fc(x))) (reference written by hand on today's timm)."""
    from timm.models.vision_transformer import VisionTransformer as TimmViT
    trunk = randomize(TimmViT(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, num_classes=0))
    fc, head = randomize(torch.nn.Linear(48, 24), 1), randomize(torch.nn.Linear(24, 5), 2)
    state = {**trunk.state_dict(), **{f"pre_logits.fc.{k}": v for k, v in fc.state_dict().items()},
             **{f"head.{k}": v for k, v in head.state_dict().items()}}
    x = images(2, 32)
    with torch.no_grad():
        toks = trunk.forward_features(x)
        want = head(torch.tanh(fc(toks[:, 0])))
    ours = silent(from_pretrained, state, num_heads=4)
    assert (ours.config.head_hidden_dim, ours.config.head_act, ours.num_features) == (24, "tanh", 24)
    assert max_diff(tokens(ours, x), toks) <= TOL and max_diff(logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, toks, want, ["head_mlp", "final_norm", "head_layout"])
    fresh = assumed(from_pretrained, state, num_heads=4, num_classes=0)[0]  # features: the representation layer's
    assert max_diff(logits(fresh, x), torch.tanh(fc(toks[:, 0])).detach()) <= TOL
