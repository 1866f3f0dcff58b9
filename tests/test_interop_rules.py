"""rules= extends the layout vitkit detects: a tutorial's nn.TransformerEncoder ViT whose head vitkit does not
place loads with a rule for each of those tensors only; a rule may be a callable of the whole state dict
(folding a head of two Linears into one); what stays unplaced is one sentence, then the tensors by block, the
nearest layout and a ready table that loads once its placeholders are named."""

import pytest
import torch
from torch import nn

from test_interop import TOL, images, max_diff
from test_interop_clip import logits, silent
from vitkit import CheckpointError, ConfigError, from_pretrained

DIM, HEADS, DEPTH, PATCH, IMG, CLASSES = 64, 4, 2, 8, 32, 5


class TutorialViT(nn.Module):
    """The ViT of many tutorials: conv patches, [CLS], learned positions, a pre-norm nn.TransformerEncoder
    without a final norm, and ``to_logits = Sequential(LayerNorm, Linear)`` (or ``head`` given)."""

    def __init__(self, head: nn.Module | None = None):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, DIM, PATCH, PATCH)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, DIM))
        self.pos_embedding = nn.Parameter(0.02 * torch.randn(1, (IMG // PATCH) ** 2 + 1, DIM))
        layer = nn.TransformerEncoderLayer(DIM, HEADS, 2 * DIM, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, DEPTH, enable_nested_tensor=False)
        if head is None:
            self.to_logits = nn.Sequential(nn.LayerNorm(DIM), nn.Linear(DIM, CLASSES))
        else:
            self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embedding
        cls = self.encoder(x)[:, 0]
        return self.to_logits(cls) if hasattr(self, "to_logits") else self.head(cls)


def trained(model: nn.Module, steps: int = 5) -> nn.Module:
    """A few SGD steps on random images, so no weight is at its initial value."""
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        x, y = torch.randn(8, 3, IMG, IMG), torch.randint(0, CLASSES, (8,))
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


HEAD_RULES = {"norm.weight": "to_logits.0.weight", "norm.bias": "to_logits.0.bias",
              "head.weight": "to_logits.1.weight", "head.bias": "to_logits.1.bias"}
FACTS = {"num_heads": HEADS, "norm_style": "pre", "act": "gelu"}  # what a state dict does not say


@pytest.fixture(scope="module")
def tutorial():
    torch.manual_seed(0)
    return trained(TutorialViT())


def test_partial_rules_extend_the_detected_layout(tutorial):
    state = tutorial.state_dict()
    with pytest.raises(CheckpointError, match=r"nn.TransformerEncoder layout leaves 4 tensor\(s\)"):
        from_pretrained(state, **FACTS)  # detected, and the head is nowhere
    ours = silent(from_pretrained, state, rules=HEAD_RULES, **FACTS)
    x = images(2, IMG)
    assert ours.config.final_norm and ours.config.num_classes == CLASSES
    assert max_diff(logits(ours, x), logits(tutorial, x)) <= TOL
    # the 4-rule table alone (source='rules') is not the layout: the blocks stay unplaced
    with pytest.raises(CheckpointError) as err:
        from_pretrained(state, rules=HEAD_RULES, source="rules", **FACTS)
    first, *rest = str(err.value).splitlines()
    assert "rules= table layout leaves 24 tensor(s)" in first
    assert "the nearest known layout: nn.TransformerEncoder (source='torch_nn' places 28 of the 32" in rest[0]
    with pytest.raises(ConfigError, match="no rules= table was given"):
        from_pretrained(state, source="rules")


def test_a_rule_overrides_what_the_layout_places(tutorial):
    state = tutorial.state_dict()
    rules = {**HEAD_RULES, "head.weight": lambda sd: 2 * sd["to_logits.1.weight"],
             "head.bias": lambda sd: 2 * sd["to_logits.1.bias"],
             "blocks.{i}.mlp.fc2.bias": lambda sd, i: sd[f"encoder.layers.{i}.linear2.bias"]}
    ours = silent(from_pretrained, state, rules=rules, **FACTS)
    x = images(2, IMG)
    assert max_diff(logits(ours, x), 2 * logits(tutorial, x)) <= 2 * TOL


def test_a_callable_rule_folds_two_linears():
    """head = Linear(D, H) then Linear(H, C), nothing between: one Linear W2 W1, bias W2 b1 + b2."""
    torch.manual_seed(1)
    ref = trained(TutorialViT(head=nn.Sequential(nn.Linear(DIM, 32), nn.Linear(32, CLASSES))))
    # no final norm in this model: the pre-norm blocks' output goes to the head as it is
    rules = {"head.weight": lambda sd: sd["head.1.weight"] @ sd["head.0.weight"],
             "head.bias": lambda sd: sd["head.1.weight"] @ sd["head.0.bias"] + sd["head.1.bias"]}
    ours = silent(from_pretrained, ref.state_dict(), rules=rules, **FACTS)
    x = images(2, IMG)
    assert not ours.config.final_norm
    assert max_diff(logits(ours, x), logits(ref, x)) <= TOL
    with pytest.raises(CheckpointError, match=r"rules= entry 'head.bias' \(a callable\) reads 'head.2.bias', "):
        from_pretrained(ref.state_dict(), rules={**rules, "head.bias": lambda sd: sd["head.2.bias"]}, **FACTS)


def test_the_unplaced_error_groups_by_block_and_prints_a_table_that_loads(tutorial):
    state = dict(tutorial.state_dict())
    for i in range(DEPTH):  # a per-block tensor no layout has: its scale, folded here into linear2 (x 1)
        state[f"encoder.layers.{i}.adapter.scale"] = torch.ones(DIM)
    with pytest.raises(CheckpointError) as err:
        from_pretrained(state, **FACTS)
    text = str(err.value)
    first, *rest = text.splitlines()
    assert first == err.value.sentence and first.startswith("the given state dict read as the nn.TransformerEncoder "
                                                            "layout leaves 6 tensor(s) no vitkit key fits (")
    assert "the nearest known layout: nn.TransformerEncoder (source='torch_nn'), which places the other 28" in rest
    assert "  blocks 0-1: encoder.layers.{i}.adapter.scale" in rest
    assert "  not in a block: to_logits.0.weight (64,), to_logits.0.bias (64,), to_logits.1.weight (5, 64), " \
           "to_logits.1.bias (5,)" in rest
    table = text[text.index("rules = {"):]
    assert '    "blocks.{i}.?adapter.scale": "encoder.layers.{i}.adapter.scale",  # (64,)' in table
    assert '    "?to_logits.1.weight": "to_logits.1.weight",  # (5, 64)' in table
    assert "blocks.{i}.?adapter.scale: " not in err.value.yaml_details  # YAML, keys quoted
    assert '"?to_logits.1.bias": "to_logits.1.bias"  # (5,)' in err.value.yaml_details
    scope = {}
    exec(table, scope)  # the table is Python; unedited, its placeholders are refused
    with pytest.raises(ConfigError, match=r"'blocks.\{i\}.\?adapter.scale' is still a placeholder"):
        from_pretrained(state, rules=scope["rules"], **FACTS)
    named = {"?to_logits.0.weight": "norm.weight", "?to_logits.0.bias": "norm.bias",
             "?to_logits.1.weight": "head.weight", "?to_logits.1.bias": "head.bias"}
    edited = {named.get(k, k): v for k, v in scope["rules"].items() if "adapter" not in k}
    edited["blocks.{i}.mlp.fc2.weight"] = lambda sd, i: (sd[f"encoder.layers.{i}.adapter.scale"][:, None]
                                                         * sd[f"encoder.layers.{i}.linear2.weight"])
    ours = silent(from_pretrained, state, rules=edited, **FACTS)
    x = images(2, IMG)
    assert max_diff(logits(ours, x), logits(tutorial, x)) <= TOL
