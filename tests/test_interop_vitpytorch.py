"""lucidrains' vit-pytorch loads into vitkit and gives its logits (float32, <= 1e-5): ``ViT`` in the current
layout (>= 1.16.1: 2-d [CLS] and position tables, patch LayerNorms), in 1.0 - 1.15's (patch LayerNorms, 3-d
tables; PreNorm keys before 1.4) and in 0.10 - 0.40's (PreNorm keys, a Linear patch embedding), and the
current ``SimpleViT``. The installed release is the reference for the current layouts; two older releases'
``vit.py`` are kept below verbatim (MIT licence, Phil Wang) and are the reference for theirs."""

import types

import pytest
import torch

from mutation import assert_pieces_matter, output_of
from test_interop import TOL, images, max_diff, randomize
from test_interop_clip import logits, silent, tokens
from vitkit import from_pretrained
from vitkit.interop import load_pretrained

pytest.importorskip("einops")
vit_pytorch = pytest.importorskip("vit_pytorch")

SIZES = dict(image_size=32, patch_size=8, num_classes=5, dim=128, depth=2, heads=2, mlp_dim=256)  # dim_head 64

RELEASES = {
    "0.40.2": r"""
import torch
from torch import nn

from einops import rearrange, repeat
from einops.layers.torch import Rearrange

# helpers

def pair(t):
    return t if isinstance(t, tuple) else (t, t)

# classes

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
        project_out = not (heads == 1 and dim_head == dim)

        self.heads = heads
        self.scale = dim_head ** -0.5

        self.attend = nn.Softmax(dim = -1)
        self.dropout = nn.Dropout(dropout)

        self.to_qkv = nn.Linear(dim, inner_dim * 3, bias = False)

        self.to_out = nn.Sequential(
            nn.Linear(inner_dim, dim),
            nn.Dropout(dropout)
        ) if project_out else nn.Identity()

    def forward(self, x):
        qkv = self.to_qkv(x).chunk(3, dim = -1)
        q, k, v = map(lambda t: rearrange(t, 'b n (h d) -> b h n d', h = self.heads), qkv)

        dots = torch.matmul(q, k.transpose(-1, -2)) * self.scale

        attn = self.attend(dots)
        attn = self.dropout(attn)

        out = torch.matmul(attn, v)
        out = rearrange(out, 'b h n d -> b n (h d)')
        return self.to_out(out)

class Transformer(nn.Module):
    def __init__(self, dim, depth, heads, dim_head, mlp_dim, dropout = 0.):
        super().__init__()
        self.layers = nn.ModuleList([])
        for _ in range(depth):
            self.layers.append(nn.ModuleList([
                PreNorm(dim, Attention(dim, heads = heads, dim_head = dim_head, dropout = dropout)),
                PreNorm(dim, FeedForward(dim, mlp_dim, dropout = dropout))
            ]))
    def forward(self, x):
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return x

class ViT(nn.Module):
    def __init__(self, *, image_size, patch_size, num_classes, dim, depth, heads, mlp_dim, pool = 'cls', channels = 3, dim_head = 64, dropout = 0., emb_dropout = 0.):
        super().__init__()
        image_height, image_width = pair(image_size)
        patch_height, patch_width = pair(patch_size)

        assert image_height % patch_height == 0 and image_width % patch_width == 0, 'Image dimensions must be divisible by the patch size.'

        num_patches = (image_height // patch_height) * (image_width // patch_width)
        patch_dim = channels * patch_height * patch_width
        assert pool in {'cls', 'mean'}, 'pool type must be either cls (cls token) or mean (mean pooling)'

        self.to_patch_embedding = nn.Sequential(
            Rearrange('b c (h p1) (w p2) -> b (h w) (p1 p2 c)', p1 = patch_height, p2 = patch_width),
            nn.Linear(patch_dim, dim),
        )

        self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dropout = nn.Dropout(emb_dropout)

        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, dropout)

        self.pool = pool
        self.to_latent = nn.Identity()

        self.mlp_head = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, num_classes)
        )

    def forward(self, img):
        x = self.to_patch_embedding(img)
        b, n, _ = x.shape

        cls_tokens = repeat(self.cls_token, '1 1 d -> b 1 d', b = b)
        x = torch.cat((cls_tokens, x), dim=1)
        x += self.pos_embedding[:, :(n + 1)]
        x = self.dropout(x)

        x = self.transformer(x)

        x = x.mean(dim = 1) if self.pool == 'mean' else x[:, 0]

        x = self.to_latent(x)
        return self.mlp_head(x)
""",
    "1.12.5": r"""
import torch
from torch import nn

from einops import rearrange, repeat
from einops.layers.torch import Rearrange

# helpers

def pair(t):
    return t if isinstance(t, tuple) else (t, t)

# classes

class FeedForward(nn.Module):
    def __init__(self, dim, hidden_dim, dropout = 0.):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
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
        project_out = not (heads == 1 and dim_head == dim)

        self.heads = heads
        self.scale = dim_head ** -0.5

        self.norm = nn.LayerNorm(dim)

        self.attend = nn.Softmax(dim = -1)
        self.dropout = nn.Dropout(dropout)

        self.to_qkv = nn.Linear(dim, inner_dim * 3, bias = False)

        self.to_out = nn.Sequential(
            nn.Linear(inner_dim, dim),
            nn.Dropout(dropout)
        ) if project_out else nn.Identity()

    def forward(self, x):
        x = self.norm(x)

        qkv = self.to_qkv(x).chunk(3, dim = -1)
        q, k, v = map(lambda t: rearrange(t, 'b n (h d) -> b h n d', h = self.heads), qkv)

        dots = torch.matmul(q, k.transpose(-1, -2)) * self.scale

        attn = self.attend(dots)
        attn = self.dropout(attn)

        out = torch.matmul(attn, v)
        out = rearrange(out, 'b h n d -> b n (h d)')
        return self.to_out(out)

class Transformer(nn.Module):
    def __init__(self, dim, depth, heads, dim_head, mlp_dim, dropout = 0.):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList([])
        for _ in range(depth):
            self.layers.append(nn.ModuleList([
                Attention(dim, heads = heads, dim_head = dim_head, dropout = dropout),
                FeedForward(dim, mlp_dim, dropout = dropout)
            ]))

    def forward(self, x):
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x

        return self.norm(x)

class ViT(nn.Module):
    def __init__(self, *, image_size, patch_size, num_classes, dim, depth, heads, mlp_dim, pool = 'cls', channels = 3, dim_head = 64, dropout = 0., emb_dropout = 0.):
        super().__init__()
        image_height, image_width = pair(image_size)
        patch_height, patch_width = pair(patch_size)

        assert image_height % patch_height == 0 and image_width % patch_width == 0, 'Image dimensions must be divisible by the patch size.'

        num_patches = (image_height // patch_height) * (image_width // patch_width)
        patch_dim = channels * patch_height * patch_width
        assert pool in {'cls', 'mean'}, 'pool type must be either cls (cls token) or mean (mean pooling)'

        self.to_patch_embedding = nn.Sequential(
            Rearrange('b c (h p1) (w p2) -> b (h w) (p1 p2 c)', p1 = patch_height, p2 = patch_width),
            nn.LayerNorm(patch_dim),
            nn.Linear(patch_dim, dim),
            nn.LayerNorm(dim),
        )

        self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dropout = nn.Dropout(emb_dropout)

        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, dropout)

        self.pool = pool
        self.to_latent = nn.Identity()

        self.mlp_head = nn.Linear(dim, num_classes)

    def forward(self, img):
        x = self.to_patch_embedding(img)
        b, n, _ = x.shape

        cls_tokens = repeat(self.cls_token, '1 1 d -> b 1 d', b = b)
        x = torch.cat((cls_tokens, x), dim=1)
        x += self.pos_embedding[:, :(n + 1)]
        x = self.dropout(x)

        x = self.transformer(x)

        x = x.mean(dim = 1) if self.pool == 'mean' else x[:, 0]

        x = self.to_latent(x)
        return self.mlp_head(x)
""",
}


def release(version: str) -> types.ModuleType:
    """vit_pytorch/vit.py of an older release, as a module."""
    module = types.ModuleType(f"vit_pytorch_{version.replace('.', '_')}")
    exec(compile(RELEASES[version], f"vit_pytorch-{version}/vit.py", "exec"), module.__dict__)
    return module


def lucid_tokens(ref, x, final_norm=None):
    """vit-pytorch's tokens before pooling: its transformer's output (normed in releases >= 1.0), through
    ``final_norm`` where the release normalises only in the head (0.x: mlp_head[0])."""
    out = output_of(ref.transformer, lambda: ref(x))
    with torch.no_grad():
        return out if final_norm is None else final_norm(out)


# vit-pytorch's pieces: its patch LayerNorms (>= 1.0) and the dim_head ** -0.5 attention scale
PATCH_NORMS = ["patch_pre_norm", "patch_norm"]


def warned_heads(caught) -> bool:
    return any("assumed dim_head=64" in str(w.message) for w in caught)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vit_pytorch_vit_current(pool):
    ref = randomize(vit_pytorch.ViT(**SIZES, pool=pool))
    assert ref.pos_embedding.ndim == 2  # the >= 1.16.1 layout
    x = images(2, 32)
    found = silent(load_pretrained, ref)  # live: the heads from the modules
    cfg = found.config
    assert (cfg.num_heads, cfg.qkv_bias, cfg.patch_norm, cfg.norm_eps, cfg.pool) == (2, False, True, 1e-5, pool)
    assert cfg.class_token == (pool == "cls") and found.preprocess is None
    ours = silent(from_pretrained, ref)
    want, their_tokens = logits(ref, x), lucid_tokens(ref, x)
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, their_tokens, want, [*PATCH_NORMS, "attn_scale", "head_layout", "pos_embed",
                                                       "final_norm", *(["mean_pool"] if pool == "mean" else [])])
    with pytest.warns(UserWarning) as caught:  # a state dict cannot tell the heads: dim_head 64 is assumed
        ours = from_pretrained(ref.state_dict())
    assert warned_heads(caught) and max_diff(logits(ours, x), want) <= TOL
    assert max_diff(tokens(ours, x), their_tokens) <= TOL


def test_vit_pytorch_simple_vit():
    ref = randomize(vit_pytorch.SimpleViT(**SIZES))
    x = images(2, 32)
    ours = silent(from_pretrained, ref)  # live: heads and image size from the modules
    cfg = ours.config
    assert (cfg.pos_embed, cfg.class_token, cfg.pool, cfg.img_size) == ("sincos2d", False, "mean", 32)
    want, their_tokens = logits(ref, x), lucid_tokens(ref, x)
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL  # vitkit's sin-cos table is SimpleViT's formula
    assert_pieces_matter(ours, x, their_tokens, want, ["sincos_axes", "attn_scale", "head_layout", "mean_pool",
                                                       "final_norm"])
    with pytest.warns(UserWarning, match="do not tell the image size"):
        from_pretrained(ref.state_dict(), num_heads=2)
    ours = silent(from_pretrained, ref.state_dict(), num_heads=2, img_size=32)
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL


def test_vit_pytorch_vit_0_40():
    ref = randomize(release("0.40.2").ViT(**SIZES))
    state = ref.state_dict()
    assert state["to_patch_embedding.1.weight"].ndim == 2 and "transformer.layers.0.0.fn.to_qkv.weight" in state
    x = images(2, 32)
    with pytest.warns(UserWarning) as caught:  # heads, and cls or mean pooling: neither is in the weights
        ours = from_pretrained(state)
    assert warned_heads(caught) and "pool='cls'" in str(caught[0].message)
    assert not ours.config.patch_norm and max_diff(logits(ours, x), logits(ref, x)) <= TOL
    their_tokens = lucid_tokens(ref, x, final_norm=ref.mlp_head[0])  # 0.x normalises in mlp_head
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert_pieces_matter(ours, x, their_tokens, logits(ref, x), ["attn_scale", "head_layout", "pos_embed",
                                                                 "final_norm"])
    assert max_diff(logits(silent(from_pretrained, state, num_heads=2, pool="cls"), x), logits(ref, x)) <= TOL


def test_vit_pytorch_vit_1_12():
    ref = randomize(release("1.12.5").ViT(**SIZES))
    state = ref.state_dict()
    x = images(2, 32)
    ours = silent(from_pretrained, state, num_heads=2, pool="cls")
    assert ours.config.patch_norm and max_diff(logits(ours, x), logits(ref, x)) <= TOL
    their_tokens = lucid_tokens(ref, x)
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert_pieces_matter(ours, x, their_tokens, logits(ref, x), [*PATCH_NORMS, "attn_scale", "head_layout"])
    # 1.0 - 1.2 wrote the same model with PreNorm branches and the final LayerNorm inside mlp_head; for [CLS]
    # pooling the two compute the same, so 1.12's weights under 1.2's names must give the same logits
    renames = {".0.to_qkv.": ".0.fn.to_qkv.", ".0.to_out.0.": ".0.fn.to_out.0.", ".1.net.0.": ".1.norm.",
               ".1.net.1.": ".1.fn.net.0.", ".1.net.4.": ".1.fn.net.3."}
    old = {}
    for k, v in state.items():
        for a, b in renames.items():
            k = k.replace(a, b) if k.startswith("transformer.layers.") else k
        old[{"transformer.norm.weight": "mlp_head.0.weight", "transformer.norm.bias": "mlp_head.0.bias",
             "mlp_head.weight": "mlp_head.1.weight", "mlp_head.bias": "mlp_head.1.bias"}.get(k, k)] = v
    assert "transformer.layers.1.1.fn.net.3.weight" in old and "transformer.norm.weight" not in old
    ours = silent(from_pretrained, old, num_heads=2, pool="cls")
    assert max_diff(logits(ours, x), logits(ref, x)) <= TOL
    assert max_diff(tokens(ours, x), their_tokens) <= TOL

