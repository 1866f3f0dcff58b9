"""Layouts vitkit does not know load through a user's rule table (examples/load_custom_vit.py runs and gives
the same logits); an unknown layout fails with one sentence that points to rules=; docs/formats.md is what
vitkit.interop generates and names only tests that exist; each family's preprocessing is timm's."""

import re
import runpy
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT

from test_interop import TOL, images, max_diff, randomize
from test_interop_clip import logits, silent
from vitkit import CheckpointError, ConfigError, from_pretrained
from vitkit.interop import Rule, TRANSFORMS, formats_markdown, SUPPORT
from vitkit.interop.support import support_table
from vitkit.interop.preprocess import FROM_TIMM

REPO = Path(__file__).resolve().parents[1]


def test_example_load_custom_vit_runs(capsys):
    example = runpy.run_path(str(REPO / "examples" / "load_custom_vit.py"), run_name="example")
    assert example["main"]() <= TOL
    assert "largest logit difference" in capsys.readouterr().out


def test_rules_mapping_with_named_transforms():
    """A timm model saved under other names: a (c p1 p2) Linear patch embedding, transposed (JAX-style) MLP
    kernels, a 'fc' head given as Rule objects; every key the table does not name keeps its own."""
    ref = randomize(TimmViT(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=3))
    state = dict(ref.state_dict())
    state["stem.weight"] = state.pop("patch_embed.proj.weight").flatten(1)  # (D, C*P*P)
    for i in range(2):
        state[f"mlp{i}.kernel"] = state.pop(f"blocks.{i}.mlp.fc1.weight").T
    state["fc.w"], state["fc.b"] = state.pop("head.weight"), state.pop("head.bias")
    rules = {"patch_embed.proj.weight": "patches_cpp(stem.weight)",
             "blocks.{i}.mlp.fc1.weight": "transpose(mlp{i}.kernel)", "head.weight": "fc.w",
             "head.bias": Rule("head.bias", ("fc.b",))}
    x = images(2, 32)
    assert max_diff(logits(silent(from_pretrained, state, rules=rules, num_heads=4), x), logits(ref, x)) <= TOL
    as_rules = [Rule("patch_embed.proj.weight", ("stem.weight",), TRANSFORMS["patches_cpp"]),
                Rule("blocks.{i}.mlp.fc1.weight", ("mlp{i}.kernel",), TRANSFORMS["transpose"]),
                Rule("head.weight", ("fc.w",)), Rule("head.bias", ("fc.b",))]
    assert max_diff(logits(silent(from_pretrained, state, rules=as_rules, num_heads=4), x), logits(ref, x)) <= TOL
    with pytest.raises(ConfigError, match="unknown transform 'flip'"):
        from_pretrained(state, rules={"head.weight": "flip(fc.w)"})


def test_unknown_layout_is_one_sentence_pointing_to_rules():
    example = runpy.run_path(str(REPO / "examples" / "load_custom_vit.py"), run_name="example")
    state = example["MyViT"]().state_dict()
    with pytest.raises(CheckpointError) as err:
        from_pretrained(state)
    msg = str(err.value)
    first = msg.splitlines()[0]  # one sentence; the tensors by block and a ready table follow
    assert first.startswith("cannot tell the format") and first == err.value.sentence
    assert "stem.weight" in first and "rules=" in first and "examples/load_custom_vit.py" in first
    assert "  blocks 0-2: enc.{i}.q.weight, enc.{i}.q.bias" in msg and '"?stem.weight": "stem.weight",' in msg
    # a layout that is found (timm's) but leaves tensors nowhere to go says the same
    timm_state = dict(TimmViT(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=4).state_dict())
    timm_state["adapter.down.weight"] = torch.zeros(8, 64)
    with pytest.raises(CheckpointError, match=r"leaves 1 tensor\(s\) no vitkit key fits \(adapter.down.weight\); "
                                              r"give just those a vitkit key with from_pretrained\(\.\.\., rules="):
        from_pretrained(timm_state, num_heads=4)


def test_formats_doc_is_generated_and_names_real_tests():
    assert (REPO / "docs" / "formats.md").read_text() == formats_markdown()
    defined = {m.group(1) for path in (REPO / "tests").glob("test_interop*.py")
               for m in re.finditer(r"^def (test_\w+)\(", path.read_text(), re.M)}
    named = {test for cells in SUPPORT.values() for entries in cells.values() for _, _, test in entries}
    assert named and named <= defined, named - defined


def test_readme_shows_the_support_table_as_generated():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- support table: [^\n]*-->\n(.*?)\n<!-- end of support table -->", readme, re.S)
    assert block is not None and block.group(1) == support_table()


def test_preprocess_of_each_family_is_timms():
    timm = pytest.importorskip("timm")
    for family, (name, ours) in FROM_TIMM.items():
        cfg = timm.models.get_pretrained_cfg(name).to_dict()
        assert ours == {"mean": cfg["mean"], "std": cfg["std"], "interpolation": cfg["interpolation"],
                        "crop_pct": cfg["crop_pct"], "crop_mode": cfg["crop_mode"]}, family
