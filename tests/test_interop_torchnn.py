"""ViTs written on PyTorch's own nn.TransformerEncoder load into vitkit and give their logits (float32,
<= 1e-5), pre- or post-norm, ReLU or GELU: from the live module (which tells heads, norm_first, activation
and eps) or from a state dict (the caller tells them, else PyTorch's defaults are assumed with a warning)."""

import pytest
import torch
from torch import nn

from mutation import assert_pieces_matter
from test_interop import TOL, images, max_diff, randomize
from test_interop_clip import logits, silent, tokens
from vitkit import ConfigError, from_pretrained


class EncoderViT(nn.Module):
    """A ViT as people write it on nn.TransformerEncoder: conv patches, [CLS], learned positions, a head."""

    def __init__(self, norm_first: bool, activation: str, dim=64, heads=4, depth=2, patch=8, img=32, classes=5):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.zeros(1, (img // patch) ** 2 + 1, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, activation=activation,
                                           batch_first=True, norm_first=norm_first)
        # pre-norm encoders end with a LayerNorm of their own; post-norm ones already end normed
        self.encoder = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(dim) if norm_first else None,
                                             enable_nested_tensor=False)
        self.classifier = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x)[:, 0])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's output tokens, before the head."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embedding
        return self.encoder(x)


@pytest.mark.parametrize("norm_first,activation", [(True, "gelu"), (True, "relu"), (False, "relu"),
                                                   (False, "gelu")])
def test_torch_transformer_encoder_vit(norm_first, activation):
    ref = randomize(EncoderViT(norm_first, activation))
    x = images(2, 32)
    ours = silent(from_pretrained, ref)  # the live layers tell everything
    cfg = ours.config
    assert (cfg.norm_style, cfg.act, cfg.num_heads, cfg.norm_eps) == ("pre" if norm_first else "post", activation,
                                                                       4, 1e-5)
    assert cfg.final_norm == norm_first
    want, their_tokens = logits(ref, x), tokens(ref, x)
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    other = "act:gelu" if activation == "relu" else "act:relu"
    assert_pieces_matter(ours, x, their_tokens, want, ["norm_order", other, "head_layout", "pos_embed",
                                                       *(["final_norm"] if norm_first else [])])


def test_torch_encoder_state_dict_warns_and_takes_arguments():
    ref = randomize(EncoderViT(True, "gelu"))
    x = images(2, 32)
    state = ref.state_dict()
    with pytest.raises(ConfigError, match="pass num_heads"):  # no width table entry for 64
        from_pretrained(state)
    with pytest.warns(UserWarning) as caught:
        ours = from_pretrained(state, num_heads=4)
    msg = str(caught[0].message)
    assert len(caught) == 1 and "assumed norm_style='post'" in msg and "assumed act='relu'" in msg
    assert max_diff(logits(ours, x), logits(ref, x)) > 1e-3  # PyTorch's defaults are not this model
    ours = silent(from_pretrained, state, num_heads=4, norm_style="pre", act="gelu")
    assert max_diff(tokens(ours, x), tokens(ref, x)) <= TOL
    assert max_diff(logits(ours, x), logits(ref, x)) <= TOL
