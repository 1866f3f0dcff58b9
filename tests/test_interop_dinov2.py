"""DINOv2 loads into vitkit and gives the library's normed [CLS] feature (x_norm_clstoken / pooler_output,
float32, <= 1e-5): the original facebookresearch files (hub .pth with registers or SwiGLU, training
checkpoints with chunked blocks), Hugging Face Dinov2Model / Dinov2WithRegistersModel (live transformers-5
names and the Hub's transformers-4 names), and timm's DINOv2 models."""

import pytest
import torch
import timm
from timm.models.vision_transformer import checkpoint_filter_fn

from mutation import assert_pieces_matter
from test_interop import TOL, images, max_diff, randomize
from test_interop_clip import assumed_preprocessing, logits, silent, tokens
from vitkit import from_pretrained
from vitkit.interop import load_pretrained
from vitkit.interop.preprocess import DINOV2

D, HEADS, IMG = 128, 2, 28  # 64-wide heads, as in every released DINOv2; a 2 x 2 grid of 14-pixel patches
TIMM_NAMES = {"plain": "vit_small_patch14_dinov2", "reg4": "vit_small_patch14_reg4_dinov2",
              "swiglu": "vit_giant_patch14_dinov2"}


def pieces(kind: str, registers: bool = False) -> list[str]:
    """What a DINOv2 comparison must show matters: layer scale, registers, the SwiGLU's gate order and SiLU."""
    return ["layer_scale", "head_layout", "pos_embed", *(["registers"] if registers or kind == "reg4" else []),
            *(["swiglu", "act:gelu"] if kind == "swiglu" else [])]


def timm_dinov2(kind: str):
    return randomize(timm.create_model(TIMM_NAMES[kind], depth=2, embed_dim=D, num_heads=HEADS, img_size=IMG,
                                       init_values=1.0, num_classes=0))


def original_layout(model) -> dict:
    """The facebookresearch layout of a timm DINOv2 model, the inverse of timm's conversion: a mask token,
    registers without a position embedding (timm folds the class slot into [CLS]), SwiGLU as w12/w3."""
    sd = dict(model.state_dict())
    out = {"mask_token": 0.05 * torch.randn(1, D)}
    if "reg_token" in sd:
        slot = 0.05 * torch.randn(1, 1, D)  # the class slot of the position table
        out.update(cls_token=sd.pop("cls_token") - slot, pos_embed=torch.cat([slot, sd.pop("pos_embed")], 1),
                   register_tokens=sd.pop("reg_token"))
    swiglu = model.blocks[0].mlp.fc2.weight.shape[1] * 2 == model.blocks[0].mlp.fc1.weight.shape[0]
    for k, v in sd.items():
        if swiglu:
            k = k.replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3.")
        out[k] = v
    return out


@pytest.mark.parametrize("kind", ["plain", "reg4", "swiglu"])
def test_dinov2_original_hub_file(tmp_path, kind):
    ref = timm_dinov2(kind)
    original = original_layout(ref)
    pinned = checkpoint_filter_fn(dict(original), ref)  # timm's own reader of the original files
    assert all(torch.allclose(pinned[k], v, atol=1e-7) for k, v in ref.state_dict().items())
    torch.save(original, tmp_path / f"dinov2_{kind}_pretrain.pth")
    x = images(2, IMG)
    found = silent(load_pretrained, tmp_path / f"dinov2_{kind}_pretrain.pth")
    cfg = found.config
    assert (cfg.num_heads, cfg.norm_eps, cfg.img_size, cfg.reg_tokens) == (HEADS, 1e-6, IMG, 4 * (kind == "reg4"))
    assert cfg.mlp == ("swiglu" if kind == "swiglu" else "mlp") and found.preprocess == DINOV2
    ours = silent(from_pretrained, tmp_path / f"dinov2_{kind}_pretrain.pth")
    want, their_tokens = logits(ref, x), tokens(ref, x)
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL  # timm's pre-logits: x_norm_clstoken
    assert_pieces_matter(ours, x, their_tokens, want, pieces(kind))


def test_dinov2_training_checkpoint_chunked(tmp_path):
    """Training files: {'teacher': {'backbone.blocks.<chunk>.<i>...', 'dino_head...', 'ibot_head...'}}."""
    ref = timm_dinov2("reg4")
    chunked = {}
    for k, v in original_layout(ref).items():
        if k.startswith("blocks."):
            i = int(k.split(".")[1])
            k = f"blocks.{i}.{k[len('blocks.'):]}"  # block_chunks=2 of one block each: blocks.<chunk>.<i>.
        chunked[f"backbone.{k}"] = v
    chunked.update({"dino_head.mlp.0.weight": torch.zeros(8, D), "ibot_head.mlp.0.weight": torch.zeros(8, D)})
    assert "backbone.blocks.1.1.attn.qkv.weight" in chunked
    torch.save({"teacher": chunked, "iteration": 10}, tmp_path / "teacher_checkpoint.pth")
    x = images(2, IMG)
    ours = silent(from_pretrained, tmp_path / "teacher_checkpoint.pth")
    assert max_diff(tokens(ours, x), tokens(ref, x)) <= TOL
    assert max_diff(logits(ours, x), logits(ref, x)) <= TOL


def hf_dinov2(registers: bool = False, swiglu: bool = False):
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel
    kw = dict(hidden_size=D, num_hidden_layers=2, num_attention_heads=HEADS, image_size=IMG, patch_size=14,
              use_swiglu_ffn=swiglu)
    if registers:
        return randomize(Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**kw, num_register_tokens=4)))
    return randomize(Dinov2Model(Dinov2Config(**kw)))


def pooler(model, x):
    with torch.no_grad():
        return model(pixel_values=x).pooler_output


def hf_tokens(model, x):
    with torch.no_grad():
        return model(pixel_values=x).last_hidden_state  # after the final LayerNorm, registers included


@pytest.mark.parametrize("swiglu", [False, True])
def test_hf_dinov2(tmp_path, swiglu):
    ref = hf_dinov2(swiglu=swiglu)
    x = images(2, IMG)
    ours = silent(from_pretrained, ref)  # live: q_proj / gate_proj names of transformers 5
    assert ours.config.mlp == ("swiglu" if swiglu else "mlp") and ours.config.act == ("silu" if swiglu else "gelu")
    want, their_tokens = pooler(ref, x), hf_tokens(ref, x)
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, their_tokens, want, pieces("swiglu" if swiglu else "plain"))
    ref.save_pretrained(tmp_path / "dinov2")  # the Hub's names: attention.attention.query, mlp.weights_in
    found = assumed_preprocessing(load_pretrained, tmp_path / "dinov2")
    assert found.preprocess == DINOV2 and found.config.norm_eps == 1e-6
    ours = assumed_preprocessing(from_pretrained, tmp_path / "dinov2")
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    ours = silent(from_pretrained, {f"dinov2.{k}": v for k, v in ref.state_dict().items()})  # a task model's
    assert max_diff(logits(ours, x), want) <= TOL


def test_hf_dinov2_with_registers(tmp_path):
    ref = hf_dinov2(registers=True)
    x = images(2, IMG)
    ours = silent(from_pretrained, ref)
    assert ours.config.reg_tokens == 4 and ours.config.no_embed_class
    want, their_tokens = pooler(ref, x), hf_tokens(ref, x)
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, their_tokens, want, pieces("plain", registers=True))
    ref.save_pretrained(tmp_path / "dinov2_reg")
    ours = assumed_preprocessing(from_pretrained, tmp_path / "dinov2_reg")
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    # a size other than the checkpoint's: both resample the patch grid the same way (bicubic, antialiased)
    big = images(1, 2 * IMG)
    ours = assumed_preprocessing(from_pretrained, tmp_path / "dinov2_reg", img_size=2 * IMG)
    assert max_diff(tokens(ours, big), hf_tokens(ref, big)) <= TOL
    assert max_diff(logits(ours, big), pooler(ref, big)) <= TOL


@pytest.mark.parametrize("kind", ["reg4", "swiglu"])
def test_timm_dinov2(kind):
    ref = timm_dinov2(kind)
    x = images(2, IMG)
    found = silent(load_pretrained, ref)
    assert found.preprocess == DINOV2
    ours = silent(from_pretrained, ref)
    want, their_tokens = logits(ref, x), tokens(ref, x)
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, their_tokens, want, pieces(kind))
    ours = silent(from_pretrained, ref.state_dict())  # heads: D // 64, DINOv2's documented head width
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
