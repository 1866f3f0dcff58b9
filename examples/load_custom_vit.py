"""Load your own ViT's weights into vitkit with a rule table instead of a converter script.

vitkit knows timm, Hugging Face, open_clip, big_vision, DINOv2, vit-pytorch, torchvision and
nn.TransformerEncoder layouts by their keys (docs/formats.md). The short path: a file in a known layout but for
a few tensors (a tutorial's head, say) needs a rule for those tensors only; the rules add to and override what
the detected layout places, and the error for an unplaced tensor prints a table to start from (so does
``vitkit inspect FILE``, in YAML for ``vitkit convert --rules``). For a layout vitkit does not know at all you
write down, once, where each of vitkit's tensors is in your checkpoint: ``{vitkit key: your key(s)}``. ``{i}``
stands for the block number. A value is

* one key: the tensor is taken as it is;
* a tuple of keys: they are concatenated along the first axis (separate query, key and value projections
  become vitkit's fused ``qkv``, in that order);
* ``"transform(key)"``: one of the named maps in ``vitkit.interop.TRANSFORMS``, e.g. ``patches`` (a Linear on
  patches flattened as (p1 p2 c) becomes a conv weight), ``patches_cpp`` (flattened as (c p1 p2)), ``token``
  ((D,) -> (1, 1, D)), ``pos`` ((T, D) -> (1, T, D)), ``transpose``, ``zeros`` (a bias the model never had);
* a callable ``fn(state)`` (``fn(state, i)`` for a block key) returning the tensor from the whole state dict:
  folding two Linears, scaling, slicing (Python only; a YAML rules file cannot hold one).

What the weights cannot say (post-norm or pre-norm, the activation, the number of heads, the LayerNorm eps)
you pass as arguments. This script builds a small hand-written ViT, saves its state dict, loads it with
vitkit and checks that both compute the same logits; first, the short path on a tutorial's
nn.TransformerEncoder ViT.

    python examples/load_custom_vit.py
"""

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vitkit import VisionTransformer

# -------------------------------------------------------------------------------------------------------------
# 0. The short path: a known layout, an unknown head


class TutorialViT(nn.Module):
    """nn.TransformerEncoder (a layout vitkit detects) with a head it does not place: to_logits.0 (LayerNorm)
    and to_logits.1 (Linear)."""

    def __init__(self, img=32, patch=8, dim=64, heads=4, depth=3, classes=10):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos_embedding = nn.Parameter(0.02 * torch.randn(1, (img // patch) ** 2 + 1, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.to_logits = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, classes))

    def forward(self, img):
        x = self.patch_embed(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embedding
        return self.to_logits(self.encoder(x)[:, 0])


HEAD_RULES = {  # only what nn.TransformerEncoder's layout does not place
    "norm.weight": "to_logits.0.weight",  # a LayerNorm of [CLS] is vitkit's final norm
    "norm.bias": "to_logits.0.bias",
    "head.weight": "to_logits.1.weight",
    "head.bias": "to_logits.1.bias",
}


def short_path() -> float:
    theirs = TutorialViT().eval()
    # the state dict does not say the heads, pre-norm or GELU: the arguments do
    ours = VisionTransformer.from_pretrained(theirs.state_dict(), rules=HEAD_RULES, num_heads=4, norm_style="pre",
                                             act="gelu")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        diff = (ours(x) - theirs(x)).abs().max().item()
    print(f"short path (4 rules on a detected nn.TransformerEncoder layout): largest logit difference {diff:.2e}")
    return diff


# -------------------------------------------------------------------------------------------------------------
# 1. The full table: somebody's ViT, with its own names for everything


class Norm(nn.Module):
    """A LayerNorm whose parameters are called scale and offset."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale, self.offset = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.scale, self.offset, eps=1e-5)


class Layer(nn.Module):
    """Post-norm (normalise after each residual add), separate q/k/v projections, a ReLU MLP."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.ln_attn, self.ln_ff = Norm(dim), Norm(dim)
        self.ff_in, self.ff_out = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (f(x).view(b, t, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        x = self.ln_attn(x + self.o(y))
        return self.ln_ff(x + self.ff_out(F.relu(self.ff_in(x))))


class MyViT(nn.Module):
    def __init__(self, img=32, patch=8, dim=64, heads=4, depth=3, classes=10):
        super().__init__()
        self.patch = patch
        self.stem = nn.Linear(patch * patch * 3, dim)  # a Linear on flattened patches, not a conv
        self.cls = nn.Parameter(0.02 * torch.randn(dim))  # (D,)
        self.pos = nn.Parameter(0.02 * torch.randn((img // patch) ** 2 + 1, dim))  # (T, D)
        self.enc = nn.ModuleList(Layer(dim, heads) for _ in range(depth))
        self.classifier = nn.Linear(dim, classes)

    def forward(self, img):
        b, c, h, w = img.shape
        p = self.patch
        x = img.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, p * p * c)  # (p1 p2 c)
        x = torch.cat([self.cls.expand(b, 1, -1), self.stem(x)], dim=1) + self.pos
        for layer in self.enc:
            x = layer(x)
        return self.classifier(x[:, 0])


# -------------------------------------------------------------------------------------------------------------
# 2. Where vitkit finds each of its tensors in MyViT's state dict

RULES = {
    "patch_embed.proj.weight": "patches(stem.weight)",
    "patch_embed.proj.bias": "stem.bias",
    "cls_token": "token(cls)",
    "pos_embed": "pos(pos)",
    "blocks.{i}.attn.qkv.weight": ("enc.{i}.q.weight", "enc.{i}.k.weight", "enc.{i}.v.weight"),
    "blocks.{i}.attn.qkv.bias": ("enc.{i}.q.bias", "enc.{i}.k.bias", "enc.{i}.v.bias"),
    "blocks.{i}.attn.proj.weight": "enc.{i}.o.weight",
    "blocks.{i}.attn.proj.bias": "enc.{i}.o.bias",
    "blocks.{i}.norm1.weight": "enc.{i}.ln_attn.scale",
    "blocks.{i}.norm1.bias": "enc.{i}.ln_attn.offset",
    "blocks.{i}.mlp.fc1.weight": "enc.{i}.ff_in.weight",
    "blocks.{i}.mlp.fc1.bias": "enc.{i}.ff_in.bias",
    "blocks.{i}.mlp.fc2.weight": "enc.{i}.ff_out.weight",
    "blocks.{i}.mlp.fc2.bias": "enc.{i}.ff_out.bias",
    "blocks.{i}.norm2.weight": "enc.{i}.ln_ff.scale",
    "blocks.{i}.norm2.bias": "enc.{i}.ln_ff.offset",
    "head.weight": "classifier.weight",
    "head.bias": "classifier.bias",
}


def main() -> float:
    torch.manual_seed(0)
    short = short_path()
    theirs = MyViT().eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "my_vit.pth"
        torch.save(theirs.state_dict(), path)

        # 3. Load it: the rules place the tensors (no layout is detected, so the table is the whole layout;
        #    source="rules" says so outright); the arguments say what the tensors cannot.
        ours = VisionTransformer.from_pretrained(path, rules=RULES, norm_style="post", act="relu", num_heads=4,
                                                 norm_eps=1e-5)
    print(f"vitkit built: {ours.config.depth} {ours.config.norm_style}-norm blocks, width {ours.config.embed_dim}, "
          f"{ours.config.num_heads} heads, {ours.config.act}, no final norm: {not ours.config.final_norm}")

    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        diff = (ours(x) - theirs(x)).abs().max().item()
    print(f"largest logit difference: {diff:.2e}")
    assert diff <= 1e-5 and short <= 1e-5, (diff, short)
    return max(diff, short)


if __name__ == "__main__":
    main()
