"""SigLIP image towers load into vitkit and give the library's pooled embedding (float32, <= 1e-5): Hugging
Face SiglipVisionModel / SiglipModel (live, folders, MAP head), timm's SigLIP models (MAP and GAP), and
big_vision's .npz files (params/img/, MAPHead_0, scan layout), read back by timm's own npz loader."""

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT

from mutation import assert_pieces_matter
from test_interop import TOL, images, max_diff, randomize, timm_to_npz
from test_interop_clip import assumed_preprocessing, logits, silent, tokens
from vitkit import from_pretrained
from vitkit.interop import load_pretrained
from vitkit.interop.preprocess import HF_SIGLIP, SIGLIP

D, HEADS, M = 64, 4, 176  # M: an MLP width that is no multiple of D, like so400m's 4304 / 1152


def hf_siglip_vision():
    from transformers import SiglipVisionConfig
    return SiglipVisionConfig(hidden_size=D, intermediate_size=M, num_hidden_layers=2, num_attention_heads=HEADS,
                              image_size=32, patch_size=8)


def pooler(model, x):
    with torch.no_grad():
        return model(pixel_values=x).pooler_output


def hf_tokens(model, x):
    with torch.no_grad():
        return model(pixel_values=x).last_hidden_state  # after post_layernorm, before the MAP head


# SigLIP's MAP head and flax's tanh GELU (5e-4 at most from the exact one: mutation.GELU_TANH_MARGIN)
TANH_SIGLIP = ["map", "act:gelu", "head_layout", "pos_embed"]


def test_hf_siglip_vision_model(tmp_path):
    from transformers import SiglipImageProcessor, SiglipVisionModel
    ref = randomize(SiglipVisionModel(hf_siglip_vision()))
    x = images(2, 32)
    ours = silent(from_pretrained, ref)  # live transformers 5 model: no vision_model. prefix
    cfg = ours.config
    assert (cfg.pool, cfg.class_token, cfg.act, cfg.norm_eps, cfg.mlp_dim) == ("map", False, "gelu_tanh", 1e-6, M)
    want, their_tokens = pooler(ref, x), hf_tokens(ref, x)
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, their_tokens, want, TANH_SIGLIP)
    ref.save_pretrained(tmp_path / "siglip")
    # no preprocessor_config.json: SiglipImageProcessor's defaults (squash to the size), with a warning
    assert assumed_preprocessing(load_pretrained, tmp_path / "siglip").preprocess == HF_SIGLIP
    SiglipImageProcessor().save_pretrained(tmp_path / "siglip")  # the folder's own: squash to the size
    found = silent(load_pretrained, tmp_path / "siglip")
    assert found.preprocess == {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic",
                                "crop_pct": 1.0, "crop_mode": "squash"}
    ours = silent(from_pretrained, tmp_path / "siglip")
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    # exact GELU instead of the tanh approximation is a visible difference: the activation matters
    assert max_diff(logits(from_pretrained(ref, act="gelu"), x), pooler(ref, x)) > 1e-5


def test_hf_siglip_model_file(tmp_path):
    """A SiglipModel (vision_model.*, text_model.*, logit_scale, logit_bias) saved as the Hub has it."""
    from transformers import SiglipConfig, SiglipModel
    full = randomize(SiglipModel(SiglipConfig(vision_config=hf_siglip_vision().to_dict(), text_config=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=100,
        max_position_embeddings=8))))
    full.save_pretrained(tmp_path / "siglip")
    x = images(2, 32)
    want, their_tokens = pooler(full.vision_model, x), hf_tokens(full.vision_model, x)
    ours = assumed_preprocessing(from_pretrained, tmp_path / "siglip")
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    ours = silent(from_pretrained, full.state_dict(), num_heads=HEADS)  # act and eps: SigLIP's documented ones
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, their_tokens, want, TANH_SIGLIP)
    # SiglipForImageClassification classifies the mean of all tokens: the backbone loads, its head is new
    from transformers import SiglipForImageClassification
    task = randomize(SiglipForImageClassification(SiglipConfig(vision_config=hf_siglip_vision().to_dict(),
                                                               num_labels=3)))
    with pytest.warns(UserWarning, match=r"classifier \(classifier\.\*\) on other features"):
        ours = from_pretrained(task)
    with torch.no_grad():
        want = task.vision_model(pixel_values=x).last_hidden_state
        assert ours.config.num_classes == 3 and max_diff(ours.forward_features(x), want) <= TOL


@pytest.mark.parametrize("name", ["vit_base_patch16_siglip_224", "vit_base_patch16_siglip_gap_224"])
def test_timm_siglip_map(name):
    import timm
    ref = randomize(timm.create_model(name, depth=2, embed_dim=D, num_heads=HEADS, img_size=32, patch_size=8,
                                      mlp_ratio=M / D, num_classes=0))
    x = images(2, 32)
    found = silent(load_pretrained, ref)
    assert found.config.pool == ("map" if "gap" not in name else "mean") and found.config.mlp_dim == M
    ours = silent(from_pretrained, ref)
    want, their_tokens = logits(ref, x), tokens(ref, x)
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    # these timm defs compute the exact GELU: tanh-GELU in its place must show (mutation.GELU_TANH_MARGIN)
    assert_pieces_matter(ours, x, their_tokens, want, ["mean_pool" if "gap" in name else "map", "head_layout",
                                                       "pos_embed", "act:gelu_tanh"])
    if "gap" not in name:
        assert found.preprocess["mean"] == SIGLIP["mean"]
        with pytest.warns(UserWarning, match="GELU or tanh-GELU cannot be told from timm SigLIP weights"):
            from_pretrained(ref.state_dict(), num_heads=HEADS)
    ours = silent(from_pretrained, ref.state_dict(), num_heads=HEADS, act="gelu")
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL


@pytest.mark.parametrize("scan", [False, True])
def test_big_vision_siglip_npz(tmp_path, scan):
    """A SigLIP image tower in big_vision's npz layout (flax kernels, MAPHead_0, the text tower beside it),
    read by timm's own loader and by vitkit: the same embedding, with flax's tanh GELU."""
    kw = dict(img_size=32, patch_size=8, embed_dim=D, depth=2, num_heads=HEADS, mlp_ratio=M / D,
              class_token=False, global_pool="map", num_classes=0, act_layer="gelu_tanh")
    path = tmp_path / "siglip.npz"
    timm_to_npz(randomize(TimmViT(**kw)), path, big_vision=True, scan=scan, prefix="params/img/", extra={
        "params/t": np.array([2.3], np.float32), "params/b": np.array([-10.0], np.float32),
        "params/txt/Encoder_0/encoder_norm/scale": np.ones(D, np.float32)})
    ref = TimmViT(**kw).eval()
    ref.load_pretrained(str(path))  # timm's _load_weights: MAP head included
    x = images(2, 32)
    found = silent(load_pretrained, path)
    assert (found.config.num_heads, found.config.act, found.config.pool) == (HEADS, "gelu_tanh", "map")
    assert found.preprocess == SIGLIP
    ours = silent(from_pretrained, path)
    want, their_tokens = logits(ref, x), tokens(ref, x)
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, their_tokens, want, TANH_SIGLIP)
