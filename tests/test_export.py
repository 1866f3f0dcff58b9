"""vitkit.export: ONNX (onnxruntime) and torch.export (pt2) files of a small model compute the eager logits
(<= 1e-4 max abs difference) at two batch sizes through one dynamic-batch export; the CLI on a saved run."""

import json
import sys

import onnx
import pytest
import torch

from vitkit import VisionTransformer, VitkitError
from vitkit.checkpoint import save_weights
from vitkit.cli import main as vitkit_main
from vitkit.export import export_onnx, export_pt2, load_exported, parity

TOL = 1e-4


@pytest.fixture(scope="module")
def model():
    """Two blocks, [CLS] plus two registers, fused SDPA attention; weights redrawn so nothing is trivial."""
    m = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=5,
                          reg_tokens=2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return m.eval()


def _eager(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_dynamic_batch_export_matches_eager_at_two_batch_sizes(model, tmp_path, fmt):
    path = tmp_path / f"vit.{fmt}"
    meta = {"class_names": list("abcde")}
    (export_onnx if fmt == "onnx" else export_pt2)(model, path, dynamic_batch=True, metadata=meta)
    run = load_exported(path, fmt)
    for b in (1, 3):
        x = torch.randn(b, 3, 32, 32)
        out = run(x)
        assert out.shape == (b, 5)
        assert (out - _eager(model, x)).abs().max().item() <= TOL
    diffs = parity(model, path, fmt, (1, 4))
    assert set(diffs) == {1, 4} and max(diffs.values()) <= TOL
    if fmt == "onnx":
        proto = onnx.load(str(path))
        assert proto.graph.input[0].name == "images"
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
        props = {p.key: p.value for p in proto.metadata_props}
        assert json.loads(props["vitkit_metadata"]) == meta
        assert json.loads(props["vitkit_config"])["reg_tokens"] == 2
    else:
        extra = {"vitkit_metadata.json": ""}
        torch.export.load(str(path), extra_files=extra)
        assert json.loads(extra["vitkit_metadata.json"]) == meta


def test_cli_exports_a_saved_checkpoint(model, tmp_path, capsys):
    run = tmp_path / "run"
    save_weights(model, run / "checkpoints" / "best", {"class_names": list("abcde")})

    assert vitkit_main(["export", "--checkpoint", str(run / "checkpoints" / "best"), "--format", "onnx",
                        "--img-size", "48", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "parity (onnxruntime vs eager, max abs difference): batch 2:" in out and "-> ok" in out
    onnx_path = run / "checkpoints" / "best.onnx"
    x = torch.randn(2, 3, 48, 48)
    resized = VisionTransformer(model.config)
    resized.load_state_dict(model.state_dict())
    resized.set_img_size(48)
    assert (load_exported(onnx_path, "onnx")(x) - _eager(resized.eval(), x)).abs().max().item() <= TOL

    target = tmp_path / "out" / "vit.pt2"
    assert vitkit_main(["export", "--checkpoint", str(run), "--format", "pt2", "--dynamic-batch",
                        "--output", str(target)]) == 0
    out = capsys.readouterr().out
    assert "exported program vs eager" in out and "batch 1:" in out and "batch 4:" in out and "-> ok" in out
    assert target.is_file()


def test_missing_onnx_packages_and_bad_checkpoint_are_one_sentence(model, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(VitkitError, match=r"pip install vitkit\[onnx\]"):
        export_onnx(model, tmp_path / "vit.onnx")
    assert vitkit_main(["export", "--checkpoint", str(tmp_path / "nothing"), "--format", "pt2"]) == 2
    assert "not found" in capsys.readouterr().err


def test_a_full_disk_while_exporting_is_one_sentence_and_keeps_the_earlier_export(model, tmp_path, monkeypatch,
                                                                                   capsys):
    """torch.export's zip writer reports a full disk as a RuntimeError: one sentence, exit 2, and the export
    already there is left whole (it was overwritten in place)."""
    import shutil

    import vitkit.fileio

    ckpt = save_weights(model, tmp_path / "model")
    out = tmp_path / "vit.pt2"
    assert vitkit_main(["export", "--checkpoint", str(ckpt), "--format", "pt2", "--output", str(out)]) == 0
    before = out.read_bytes()
    real = torch.export.save

    def full(program, f, **kwargs):
        real(program, f, **kwargs)
        with open(f, "r+b") as half:
            half.truncate(100)
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch.export, "save", full)
    monkeypatch.setattr(vitkit.fileio.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(2**30, 2**30, 0))
    capsys.readouterr()
    assert vitkit_main(["export", "--checkpoint", str(ckpt), "--format", "pt2", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vitkit export: error: no space is left on the device for {out}") and "\n" not in err
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "vit.pt2"]
