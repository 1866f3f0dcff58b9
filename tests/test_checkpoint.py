"""Weights files: round trip with the architecture in the header, and one clear error for each bad file."""

import pytest
import torch

from vitkit import CheckpointError, VisionTransformer
from vitkit.checkpoint import load_weights, read_header, save_weights
from vitkit.predictor import Predictor


def load_model(path):
    p = Predictor.load(path)
    return p.model, p.meta


def tiny(**kw):
    return VisionTransformer(img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=2, num_classes=3, **kw)


def test_round_trip_rebuilds_model(tmp_path):
    model = tiny(reg_tokens=1, pool="mean", class_token=False).eval()
    path = save_weights(model, tmp_path / "ckpt" / "best", {"classes": ["a", "b", "c"]})
    assert path.name == "best.safetensors" and not list(path.parent.glob("*.tmp*"))
    loaded, meta = load_model(tmp_path / "ckpt" / "best")
    assert meta == {"classes": ["a", "b", "c"]}
    assert loaded.config == model.config
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(loaded(x), model(x))
    cfg, _ = read_header(path)
    assert cfg.reg_tokens == 1


def test_run_folder_resolves_to_best(tmp_path):
    save_weights(tiny(), tmp_path / "run" / "checkpoints" / "best")
    model, _ = load_model(tmp_path / "run")
    assert isinstance(model, VisionTransformer)


def test_missing_truncated_and_empty_files(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint .*nope not found"):
        load_model(tmp_path / "nope")
    path = save_weights(tiny(), tmp_path / "w")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or"):
        load_model(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="truncated or"):
        load_model(path)


def test_wrong_architecture_lists_differences(tmp_path):
    path = save_weights(tiny(), tmp_path / "w")
    other = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=2, num_classes=3)
    with pytest.raises(CheckpointError) as info:
        load_weights(other, path)
    message = str(info.value)
    assert "does not fit this model" in message
    assert "cls_token (1, 1, 24) vs (1, 1, 32)" in message and "missing: blocks.2.norm1.weight" in message


def test_atomic_write_keeps_old_file_and_leaves_no_temporary_on_failure(tmp_path):
    from vitkit.fileio import atomic_path, atomic_write_text
    path = atomic_write_text(tmp_path / "sub" / "results.json", "old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError("interrupted mid-write")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_weights_files_follow_the_umask_as_every_other_file(tmp_path, umask):
    """safetensors writes its files 0600, so checkpoints were 0600 in a run folder of 0644 files: every file
    written atomically now has the mode the umask gives (what open() would make)."""
    import os

    from vitkit.fileio import atomic_write_text

    before = os.umask(umask)
    try:
        weights = save_weights(tiny(), tmp_path / "best")
        text = atomic_write_text(tmp_path / "results.json", "{}\n")
    finally:
        os.umask(before)
    assert oct(weights.stat().st_mode & 0o777) == oct(text.stat().st_mode & 0o777) == oct(0o666 & ~umask)


def test_a_distilled_model_with_another_class_count_gets_both_heads_fresh():
    """A new class count replaces the classifier's tensors, the distillation head's too (it used to be left
    out, and loading failed with 'missing: head_dist.weight')."""
    import warnings

    from vitkit import VisionTransformer

    torch.manual_seed(0)
    m = VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, num_classes=3, distilled=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m2 = VisionTransformer.from_pretrained(m.state_dict(), num_classes=5, num_heads=2)
    assert (m2.head.weight.shape, m2.head_dist.weight.shape) == ((5, 16), (5, 16))
    assert any("a new 5-class head starts from scratch" in str(w.message) for w in caught)
    assert torch.equal(m2.blocks[0].attn.qkv.weight, m.blocks[0].attn.qkv.weight)
