"""CLIP image towers load into vitkit and give the library's image embedding (float32, <= 1e-5): open_clip
(folders with open_clip_config.json, bare state dicts, training checkpoints, CLIPA, layer scale, timm trunks),
OpenAI's TorchScript files, Hugging Face CLIPVisionModelWithProjection / CLIPModel, and timm's CLIP models.
Every model is tiny and random (see test_interop.randomize)."""

import copy
import json
import warnings

import pytest
import torch

from mutation import assert_pieces_matter, output_of
from test_interop import TOL, images, max_diff, randomize
from vitkit import from_pretrained
from vitkit.interop import load_pretrained
from vitkit.interop.preprocess import CLIP

open_clip = pytest.importorskip("open_clip")
from open_clip.model import CLIP as OpenClip, CLIPTextCfg, CLIPVisionCfg  # noqa: E402

TEXT = dict(context_length=8, vocab_size=100, width=32, heads=2, layers=1)


def open_clip_model(quick_gelu=True, **vision):
    cfg = {**dict(layers=2, width=64, head_width=16, patch_size=8, image_size=32), **vision}  # 4 heads, not 1
    return randomize(OpenClip(embed_dim=24, vision_cfg=CLIPVisionCfg(**cfg), text_cfg=CLIPTextCfg(**TEXT),
                              quick_gelu=quick_gelu)), cfg


def embed(model, x):
    with torch.no_grad():
        return model.encode_image(x)


def logits(model, x):
    with torch.no_grad():
        return model(x)


def tokens(model, x):
    """vitkit's tokens before the head."""
    with torch.no_grad():
        return model.forward_features(x)


def open_clip_tokens(clip, x):
    """open_clip's image tokens before pooling: the transformer's output, through ln_post unless the tower
    applies it after pooling (CLIPA's final_ln_after_pool), as vitkit's forward_features has them."""
    visual = clip.visual
    out = output_of(visual.transformer, lambda: clip.encode_image(x))
    with torch.no_grad():
        return out if visual.final_ln_after_pool else visual.ln_post(out)


def silent(fn, *args, **kwargs):
    """fn(...) with every warning an error: the source said everything."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


def assumed_preprocessing(fn, folder, **kwargs):
    """fn(folder) of a model folder saved without preprocessor_config.json: one warning, that its preprocessing
    was assumed (the library's image processor defaults, or the family's), and nothing else."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(folder, **kwargs)
    said = [str(w.message) for w in caught]
    assert len(said) == 1 and "does not say how its images were prepared; assuming" in said[0], said
    return out


@pytest.mark.parametrize("quick_gelu", [True, False])
def test_open_clip_tower_with_its_config_folder(tmp_path, quick_gelu):
    clip, vision = open_clip_model(quick_gelu)
    torch.save(clip.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    (tmp_path / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": {"embed_dim": 24, "quick_gelu": quick_gelu, "vision_cfg": vision, "text_cfg": TEXT},
        "preprocess_cfg": {"mean": mean, "std": std, "interpolation": "bicubic", "resize_mode": "shortest"}}))
    x = images(2, 32)
    found = silent(load_pretrained, tmp_path)
    assert found.config.act == ("quick_gelu" if quick_gelu else "gelu") and found.config.num_heads == 4
    assert found.config.norm_pre and not found.config.patch_bias and not found.config.head_bias
    assert found.preprocess["mean"] == tuple(mean) and found.preprocess["std"] == tuple(std)
    want, their_tokens = embed(clip, x), open_clip_tokens(clip, x)
    for ours in (silent(from_pretrained, tmp_path), silent(from_pretrained, clip)):  # live: facts from modules
        assert max_diff(tokens(ours, x), their_tokens) <= TOL
        assert max_diff(logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, their_tokens, want, ["norm_pre", "head_layout", "final_norm",
                                                       "act:gelu" if quick_gelu else "act:quick_gelu"])


def test_openai_torchscript_file(tmp_path):
    """OpenAI's files are TorchScript archives with fp16 conv/linear weights and three int buffers; OpenAI's
    towers all use QuickGELU and 64-wide heads, so nothing is assumed."""
    clip, _ = open_clip_model(True, width=128, head_width=64)
    clip.register_buffer("input_resolution", torch.tensor(32))
    traced = torch.jit.trace(copy.deepcopy(clip), (images(1, 32), torch.randint(0, 100, (1, 8))), check_trace=False)
    for name, p in traced.named_parameters():  # openai/CLIP convert_weights: conv, linear, attention, proj
        if "ln_" not in name and "embedding" not in name and name != "logit_scale":
            p.data = p.data.half()
    torch.jit.save(traced, tmp_path / "ViT-T-8.pt")
    with torch.no_grad():  # the reference computes in float32 with the same (fp16-rounded) weights
        for name, p in clip.named_parameters():
            if "ln_" not in name and "embedding" not in name and name != "logit_scale":
                p.copy_(p.half().float())
    found = silent(load_pretrained, tmp_path / "ViT-T-8.pt")
    assert (found.config.act, found.config.num_heads, found.config.norm_eps) == ("quick_gelu", 2, 1e-5)
    assert found.preprocess == CLIP
    x = images(2, 32)
    ours = silent(from_pretrained, tmp_path / "ViT-T-8.pt")
    want, their_tokens = embed(clip, x), open_clip_tokens(clip, x)
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, their_tokens, want, ["norm_pre", "act:gelu", "head_layout"])


def test_open_clip_state_dict_warns_what_it_assumed(tmp_path):
    clip, _ = open_clip_model(False, width=128, head_width=64)  # a LAION-style tower: exact GELU, 2 heads
    x = images(2, 32)
    with pytest.warns(UserWarning) as caught:
        ours = from_pretrained(clip.state_dict())
    msg = str(caught[0].message)
    assert "QuickGELU or GELU cannot be told from open_clip weights; assumed quick_gelu" in msg
    assert "pass act='gelu'" in msg and "number of heads" in msg and len(caught) == 1
    assert ours.config.act == "quick_gelu" and max_diff(logits(ours, x), embed(clip, x)) > 1e-4
    # a training checkpoint ({'state_dict': {'module.visual...'}}), with the facts given: exact, silent
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in clip.state_dict().items()}},
               tmp_path / "epoch_3.pt")
    ours = silent(from_pretrained, tmp_path / "epoch_3.pt", act="gelu", num_heads=2)
    assert max_diff(tokens(ours, x), open_clip_tokens(clip, x)) <= TOL
    assert max_diff(logits(ours, x), embed(clip, x)) <= TOL


@pytest.mark.parametrize("variant", ["clipa", "layer_scale"])
def test_open_clip_clipa_and_layer_scale(variant):
    extra = dict(no_ln_pre=True, pool_type="avg", final_ln_after_pool=True) if variant == "clipa" else \
        dict(ls_init_value=1e-4)
    clip, _ = open_clip_model(False, **extra)
    x = images(2, 32)
    ours = silent(from_pretrained, clip)
    cfg = ours.config
    if variant == "clipa":  # ln_post after the mean of the patch tokens: timm's fc_norm
        assert cfg.pool == "mean" and cfg.use_fc_norm and not cfg.norm_pre
        pieces = ["mean_pool", "fc_norm"]
    else:
        assert cfg.layer_scale_init is not None
        pieces = ["layer_scale", "norm_pre", "final_norm"]
    want, their_tokens = embed(clip, x), open_clip_tokens(clip, x)
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, their_tokens, want, [*pieces, "head_layout", "act:quick_gelu"])
    ours = silent(from_pretrained, clip.state_dict(), act="gelu", num_heads=4)
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL


def test_open_clip_timm_trunk_siglip(monkeypatch):
    """open_clip's SigLIP towers are timm models under visual.trunk (here a tiny vit_base_patch16_siglip)."""
    import timm
    from open_clip import timm_model
    create = timm.create_model
    monkeypatch.setattr(timm_model.timm, "create_model", lambda name, **kw: create(
        name, **kw, depth=2, embed_dim=64, num_heads=4, img_size=32, patch_size=8))
    clip = randomize(OpenClip(embed_dim=64, vision_cfg=CLIPVisionCfg(
        timm_model_name="vit_base_patch16_siglip_224", timm_pool="map", timm_proj="none", image_size=32),
        text_cfg=CLIPTextCfg(**TEXT)))
    assert any(k.startswith("visual.trunk.attn_pool.") for k in clip.state_dict())
    x = images(2, 32)
    ours = silent(from_pretrained, clip)  # the live trunk tells its activation (exact GELU in this timm def)
    assert ours.config.pool == "map" and not ours.config.class_token
    with torch.no_grad():
        their_tokens = clip.visual.trunk.forward_features(x)
    want = embed(clip, x)
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, their_tokens, want, ["map", "head_layout", "act:gelu_tanh"])
    with pytest.warns(UserWarning, match="GELU or tanh-GELU cannot be told from timm SigLIP weights"):
        ours = from_pretrained(clip.state_dict(), num_heads=4)
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL


# ------------------------------------------------------------------------------------------------------------
# Hugging Face


def hf_clip_vision(hidden_act="quick_gelu"):
    from transformers import CLIPVisionConfig
    return CLIPVisionConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=2,
                            image_size=32, patch_size=8, projection_dim=24, hidden_act=hidden_act)


def test_hf_clip_vision_with_projection(tmp_path):
    from transformers import CLIPConfig, CLIPModel, CLIPVisionModelWithProjection
    ref = randomize(CLIPVisionModelWithProjection(hf_clip_vision()))
    x = images(2, 32)
    with torch.no_grad():
        out = ref(pixel_values=x)
        # vitkit's tokens are post_layernorm'd, which CLIP applies to the pooled [CLS] only
        their_tokens = ref.vision_model.post_layernorm(out.last_hidden_state)
    ours = silent(from_pretrained, ref)  # live transformers 5 model
    assert (ours.config.act, ours.config.num_heads, ours.config.norm_eps) == ("quick_gelu", 2, 1e-5)
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), out.image_embeds) <= TOL
    assert_pieces_matter(ours, x, their_tokens, out.image_embeds, ["norm_pre", "act:gelu", "head_layout",
                                                                   "final_norm"])
    ref.save_pretrained(tmp_path / "clip")
    ours = assumed_preprocessing(from_pretrained, tmp_path / "clip")
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), out.image_embeds) <= TOL
    with pytest.warns(UserWarning, match="24-class head; it is removed"):  # without the projection: the pooler
        pooled = from_pretrained(tmp_path / "clip", num_classes=0)
    assert max_diff(logits(pooled, x), ref.vision_model(pixel_values=x).pooler_output) <= TOL

    # A whole CLIPModel (text tower, logit_scale) whose vision side says hidden_act='gelu' (a LAION port).
    full = randomize(CLIPModel(CLIPConfig(vision_config=hf_clip_vision("gelu").to_dict(), projection_dim=24,
                                          text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                           num_attention_heads=2, vocab_size=100,
                                                           max_position_embeddings=8))))
    with torch.no_grad():
        vision = full.vision_model(pixel_values=x)
        want = full.visual_projection(vision.pooler_output)
        their_tokens = full.vision_model.post_layernorm(vision.last_hidden_state)
    ours = silent(from_pretrained, full)
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, their_tokens, want, ["act:quick_gelu"])
    with pytest.warns(UserWarning, match="assumed quick_gelu"):  # a bare state dict cannot tell
        from_pretrained(full.state_dict(), num_heads=2)
    assert max_diff(logits(silent(from_pretrained, full.state_dict(), act="gelu", num_heads=2), x), want) <= TOL


def test_timm_clip():
    import timm
    ref = randomize(timm.create_model("vit_base_patch16_clip_quickgelu_224", depth=2, embed_dim=64, num_heads=4,
                                      img_size=32, patch_size=8, num_classes=24))
    x = images(2, 32)
    found = silent(load_pretrained, ref)
    assert found.config.act == "quick_gelu" and found.config.norm_eps == 1e-5 and found.config.norm_pre
    assert found.preprocess["mean"] == CLIP["mean"]
    ours = silent(from_pretrained, ref)
    with torch.no_grad():
        their_tokens = ref.forward_features(x)
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), logits(ref, x)) <= TOL
    assert_pieces_matter(ours, x, their_tokens, logits(ref, x), ["norm_pre", "act:gelu", "head_layout", "final_norm"])
    with pytest.warns(UserWarning, match="QuickGELU or GELU cannot be told from timm CLIP weights"):
        ours = from_pretrained(ref.state_dict(), num_heads=4)
    assert ours.config.act == "gelu" and ours.config.norm_eps == 1e-5
    assert max_diff(logits(silent(from_pretrained, ref.state_dict(), num_heads=4, act="quick_gelu"), x),
                    logits(ref, x)) <= TOL
