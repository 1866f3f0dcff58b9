"""`vitkit inspect` and `vitkit convert` end to end on a tutorial's nn.TransformerEncoder ViT: inspect shows the
detected layout, what each tensor became by block, the unplaced head with a ready YAML table (exit 1), and
with a 4-rule YAML file the architecture (exit 0); convert writes a vitkit checkpoint that `vitkit predict`
reads and that loads back equal to the source module."""

import json

import pytest
import torch
import yaml
from PIL import Image

from test_interop import TOL, images, max_diff
from test_interop_clip import logits
from test_interop_rules import FACTS, HEAD_RULES, TutorialViT, trained
from vitkit import VisionTransformer, cli

SETS = ["--set", *(f"model.{k}={v}" for k, v in FACTS.items())]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("convert")
    torch.manual_seed(0)
    model = trained(TutorialViT())
    torch.save(model.state_dict(), tmp / "tutorial.pth")
    (tmp / "rules.yaml").write_text(yaml.safe_dump(HEAD_RULES))
    return model, tmp


def test_inspect_shows_placements_unplaced_and_the_architecture(files, capsys):
    model, tmp = files
    assert cli.main(["inspect", str(tmp / "tutorial.pth")]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == f"{tmp / 'tutorial.pth'}: read as the nn.TransformerEncoder layout (torch_nn)"
    assert "  blocks 0-1:" in lines and "    attn.qkv.weight <- encoder.layers.{i}.self_attn.in_proj_weight" in lines
    assert "  cls_token <- token(cls_token)" in lines and "unplaced (4 of 32):" in lines
    table = out[out.index("# rules.yaml"):]
    assert yaml.safe_load(table) == {f"?{k}": k for k in HEAD_RULES.values()}  # valid YAML, to edit
    assert err.strip().splitlines() == [f"vitkit inspect: {tmp / 'tutorial.pth'} would not load as it is: 4 "
                                        "tensor(s) no rule places; add them to a rules file (the table above) and "
                                        "pass --rules"]

    assert cli.main(["inspect", str(tmp / "tutorial.pth"), "--rules", str(tmp / "rules.yaml")]) == 1
    out, err = capsys.readouterr()
    assert "unplaced: none" in out and "  head.weight <- to_logits.1.weight" in out
    assert "pass num_heads" in err  # the width does not tell the heads: one line

    assert cli.main(["inspect", str(tmp / "tutorial.pth"), "--rules", str(tmp / "rules.yaml"),
                     "--set", "model.num_heads=4"]) == 0
    out, _ = capsys.readouterr()
    assert "assumed: " in out and "assumed norm_style='post'" in out  # what the weights cannot tell
    assert "architecture: embed_dim=64, depth=2, num_heads=4, patch_size=8, img_size=32, num_classes=5" in out


def test_convert_writes_a_checkpoint_predict_and_from_pretrained_read(files, capsys, tmp_path):
    model, tmp = files
    out = tmp_path / "model.safetensors"
    assert cli.main(["convert", str(tmp / "tutorial.pth"), "--out", str(out), *SETS]) == 2
    err = capsys.readouterr().err
    first, *rest = err.splitlines()
    assert first.startswith(f"vitkit convert: error: {tmp / 'tutorial.pth'} read as the nn.TransformerEncoder "
                            "layout leaves 4")
    assert "--rules RULES.yaml" in first and '"?to_logits.1.bias": "to_logits.1.bias"  # (5,)' in rest

    assert cli.main(["convert", str(tmp / "tutorial.pth"), "--rules", str(tmp / "rules.yaml"), "--out", str(out),
                     *SETS]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}: embed_dim=64, depth=2, num_heads=4")
    ours = VisionTransformer.from_pretrained(out)
    x = images(2, 32)
    assert max_diff(logits(ours, x), logits(model, x)) <= TOL

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy()).save(folder / f"{i}.png")
    assert cli.main(["predict", str(folder), "--checkpoint", str(out), "--json"]) == 0
    ranked = json.loads(capsys.readouterr().out)
    assert len(ranked) == 2 and len(ranked[0]["top_k"]) == 5

    for c in "ab":  # and it starts a fine-tuning run as model.init
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy()).save(tmp_path / "data" / c / f"{i}.png")
    config = tmp_path / "ft.yaml"
    config.write_text(yaml.safe_dump({"name": "ft", "out_dir": str(tmp_path / "runs"), "model": {"init": str(out)},
                                      "data": {"dataset": f"imagefolder:{tmp_path / 'data'}", "batch_size": 3,
                                               "workers": 0},
                                      "train": {"epochs": 1}, "optim": {"warmup_epochs": 0}}))
    assert cli.main(["train", "--config", str(config)]) == 0
    assert (tmp_path / "runs" / "ft" / "checkpoints" / "best.safetensors").is_file()


def test_rules_files_and_settings_are_checked(files, capsys, tmp_path):
    _, tmp = files
    bad = tmp_path / "bad.yaml"
    bad.write_text("head.weight: {a: 1}\n")
    assert cli.main(["inspect", str(tmp / "tutorial.pth"), "--rules", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a callable rule needs Python" in err
    assert cli.main(["inspect", str(tmp / "tutorial.pth"), "--set", "model.nrm_style=pre"]) == 2
    assert "did you mean 'model.norm_style'?" in capsys.readouterr().err


def test_a_full_yaml_table_converts_an_unknown_layout(capsys, tmp_path):
    """examples/load_custom_vit.py's MyViT, which no layout detects: inspect lists every tensor by block (exit
    1); its full table in YAML (lists for the fused qkv, transforms by name) converts it exactly."""
    import runpy
    from pathlib import Path

    example = runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples" / "load_custom_vit.py"),
                             run_name="example")
    torch.manual_seed(0)
    theirs = example["MyViT"]().eval()
    torch.save(theirs.state_dict(), tmp_path / "my_vit.pth")
    assert cli.main(["inspect", str(tmp_path / "my_vit.pth")]) == 1
    out = capsys.readouterr().out
    assert "  blocks 0-2: enc.{i}.q.weight, enc.{i}.q.bias" in out
    assert '"blocks.{i}.?ff_out.bias": "enc.{i}.ff_out.bias"  # (64,)' in out
    rules = {k: list(v) if isinstance(v, tuple) else v for k, v in example["RULES"].items()}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    out = tmp_path / "my_vit.safetensors"
    assert cli.main(["convert", str(tmp_path / "my_vit.pth"), "--rules", str(tmp_path / "rules.yaml"), "--source",
                     "rules", "--out", str(out), "--set", "model.num_heads=4", "model.norm_style=post",
                     "model.act=relu", "model.norm_eps=1e-5"]) == 0
    capsys.readouterr()
    x = images(2, 32)
    assert max_diff(logits(VisionTransformer.from_pretrained(out), x), logits(theirs, x)) <= TOL
