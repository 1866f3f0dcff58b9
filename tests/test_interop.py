"""vitkit.interop: other libraries' ViT weights load into vitkit and compute the same tokens before the head
and the same logits (float32, <= 1e-5 max abs difference). Every model is built offline with random weights;
every parameter is then redrawn (randomize: norm scales and layer scales near 1, sharp attention) so that a
swapped or transposed tensor shows, and each test checks (tests/mutation.py) that with each piece its family
needs switched off the comparison fails by far."""

import re

import numpy as np
import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer as TimmViT, checkpoint_filter_fn

from vitkit import CheckpointError, ConfigError, VisionTransformer
from vitkit.checkpoint import save_weights
from vitkit import from_pretrained
from mutation import assert_pieces_matter, output_of

TOL = 1e-5
PLAIN = ["head_layout", "pos_embed", "final_norm"]  # what a plain ViT's comparison must show matters


LAYER_SCALE = re.compile(r"(^|\.)(gamma(_[12])?|lambda1)$")  # timm ls*.gamma, BEiT gamma_1/2, HF lambda1
GAIN = 1.5  # matrices ~ N(0, (GAIN / sqrt(fan_in))^2): attention logits of std ~ GAIN^2, sharp at any width


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Redraw every parameter so that each piece of the architecture matters (tests/mutation.py checks it):
    LayerNorm scales ~ 1 + N(0, .1); layer scales ~ 0.5 + U(0, 1) (not their tiny initial values); the
    matrices of linear, convolution and attention layers ~ N(0, (1.5 / sqrt(fan_in))^2), so that attention is
    sharp and a wrong head split, scale or bias shows; every other tensor (biases, tokens, position embeddings
    and tables, the MAP probe) ~ N(0, .5)."""
    g = torch.Generator().manual_seed(seed)
    matrices = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.MultiheadAttention)
    for module_name, module in model.named_modules():
        for short, p in module.named_parameters(recurse=False):
            name = f"{module_name}.{short}" if module_name else short
            noise = torch.randn(p.shape, generator=g)
            if isinstance(module, torch.nn.LayerNorm) and short == "weight":
                p.copy_(1 + 0.1 * noise)
            elif LAYER_SCALE.search(name):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif p.ndim >= 2 and isinstance(module, matrices):
                p.copy_(GAIN / p[0].numel() ** 0.5 * noise)
            else:
                p.copy_(0.5 * noise)
    return model.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def images(n: int, size: int) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _logits(model, x):
    with torch.no_grad():
        out = model(x)
    return getattr(out, "logits", out)


def _tokens(model, x):
    """A timm model's (or vitkit's) tokens before the head."""
    with torch.no_grad():
        return model.forward_features(x)


# ------------------------------------------------------------------------------------------------------------
# timm


@pytest.fixture(scope="module")
def timm_tiny():
    return randomize(timm.create_model("vit_tiny_patch16_224"))


def test_timm_vit_tiny_live_model_and_state_dict(timm_tiny):
    x = images(2, 224)
    want, tokens = _logits(timm_tiny, x), _tokens(timm_tiny, x)
    for src in (timm_tiny, timm_tiny.state_dict()):
        ours = VisionTransformer.from_pretrained(src)
        assert ours.config.num_heads == 3 and ours.config.depth == 12 and ours.config.num_classes == 1000
        assert max_diff(_tokens(ours, x), tokens) <= TOL
        assert max_diff(_logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, tokens, want, PLAIN)


def test_timm_vit_small_at_96_live_and_resampled_from_224():
    """A 96-pixel timm model loads as is; a 224-pixel state dict loaded with img_size=96 equals timm's own
    resampling (checkpoint_filter_fn) of it."""
    x = images(2, 96)
    ref96 = randomize(timm.create_model("vit_small_patch16_224", img_size=96))
    ours = VisionTransformer.from_pretrained(ref96)
    assert ours.config.img_size == (96, 96) and ours.config.num_heads == 6
    assert max_diff(_tokens(ours, x), _tokens(ref96, x)) <= TOL
    assert max_diff(_logits(ours, x), _logits(ref96, x)) <= TOL

    # a 224 checkpoint, its position embedding as large as randomize draws it (0.05 hardly moved the tokens)
    state224 = dict(ref96.state_dict(), pos_embed=torch.randn(1, 1 + 14 * 14, 384) * 0.5)
    ref96.load_state_dict(checkpoint_filter_fn(state224, ref96))
    ours = VisionTransformer.from_pretrained(state224, img_size=96)
    assert ours.pos_embed.shape == (1, 1 + 36, 384)
    tokens, want = _tokens(ref96, x), _logits(ref96, x)
    assert max_diff(_tokens(ours, x), tokens) <= TOL
    assert max_diff(_logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, tokens, want, PLAIN)  # the resampled position embedding among them


def test_resampling_224_to_384_equals_timm(timm_tiny):
    state = timm_tiny.state_dict()
    ours = VisionTransformer.from_pretrained(state, img_size=384)
    want = resample_abs_pos_embed(state["pos_embed"], new_size=(24, 24), num_prefix_tokens=1)
    assert want.shape == (1, 577, 192)
    assert torch.equal(ours.pos_embed.data, want)
    ref384 = timm.create_model("vit_tiny_patch16_224", img_size=384).eval()
    ref384.load_state_dict(checkpoint_filter_fn(state, ref384))
    x = images(1, 384)
    tokens, want = _tokens(ref384, x), _logits(ref384, x)
    assert max_diff(_tokens(ours, x), tokens) <= TOL
    assert max_diff(_logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, tokens, want, ["pos_embed"])


@pytest.mark.parametrize("fc_norm", [None, False])
def test_timm_gap_without_class_token(fc_norm):
    """global_pool='avg', no [CLS]: timm's fc_norm after pooling (default) or its final norm before it."""
    ref = randomize(TimmViT(img_size=64, patch_size=16, embed_dim=192, depth=2, num_heads=3, num_classes=7,
                            class_token=False, global_pool="avg", fc_norm=fc_norm))
    x = images(2, 64)
    tokens, want = _tokens(ref, x), _logits(ref, x)
    for src in (ref, ref.state_dict()):  # a state dict: width 192 -> 3 heads from the paper's table
        ours = VisionTransformer.from_pretrained(src)
        assert ours.config.pool == "mean" and not ours.config.class_token
        assert ours.config.use_fc_norm == (fc_norm is None)
        assert max_diff(_tokens(ours, x), tokens) <= TOL
        assert max_diff(_logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, tokens, want, ["head_layout", "pos_embed", "mean_pool",
                                                 "fc_norm" if fc_norm is None else "final_norm"])


def test_timm_register_tokens_layer_scale_and_deit3_keys():
    ref = randomize(TimmViT(img_size=64, patch_size=16, embed_dim=128, depth=2, num_heads=4, num_classes=5,
                            reg_tokens=4, no_embed_class=True, init_values=1e-5))
    x = images(2, 64)
    want, tokens = _logits(ref, x), _tokens(ref, x)
    ours = VisionTransformer.from_pretrained(ref)
    cfg = ours.config
    assert (cfg.reg_tokens, cfg.no_embed_class, cfg.num_heads) == (4, True, 4)
    assert cfg.layer_scale_init is not None
    assert max_diff(_tokens(ours, x), tokens) <= TOL
    assert max_diff(_logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, tokens, want, ["registers", "layer_scale", "head_layout", "pos_embed"])
    # A state dict: heads are not in the shapes (width 128 is no paper variant) -> an override; the
    # position embedding covers only the 16 patches -> no_embed_class. DeiT III names layer scale gamma_1/2.
    state = {re.sub(r"ls([12])\.gamma", r"gamma_\1", k): v for k, v in ref.state_dict().items()}
    # gamma_1/2 without a relative position bias are also the keys of timm's RoPE models (Eva): refused until
    # the caller says which
    with pytest.raises(CheckpointError, match="gamma_1/gamma_2, as in DeiT III's original files and in timm's Eva"):
        from_pretrained(state, num_heads=4)
    with pytest.raises(ConfigError, match="num_heads"):
        from_pretrained(state, rope="none")
    ours = from_pretrained(state, num_heads=4, rope="none")
    assert ours.config.no_embed_class and ours.config.reg_tokens == 4
    assert max_diff(_tokens(ours, x), tokens) <= TOL
    assert max_diff(_logits(ours, x), want) <= TOL


@pytest.mark.parametrize("img_size", [(32, 40), (32, 48)])  # 20 or 24 patches + [CLS]: 21 or 25 tokens
def test_timm_non_square_grid_needs_its_img_size(img_size):
    ref = randomize(TimmViT(img_size=img_size, patch_size=8, embed_dim=64, depth=1, num_heads=4, num_classes=3))
    if img_size == (32, 40):
        with pytest.raises(CheckpointError, match="cannot infer the patch grid of a 21-token"):
            from_pretrained(ref.state_dict(), n_heads=4)
    ours = from_pretrained(ref.state_dict(), img_size=img_size, n_heads=4)  # seed-style alias for num_heads
    assert ours.config.img_size == img_size and not ours.config.no_embed_class
    x = torch.randn(2, 3, *img_size)
    tokens, want = _tokens(ref, x), _logits(ref, x)
    assert max_diff(_tokens(ours, x), tokens) <= TOL
    assert max_diff(_logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, tokens, want, PLAIN)


# ------------------------------------------------------------------------------------------------------------
# Hugging Face


def _hf_model():
    from transformers import ViTConfig as HFConfig, ViTForImageClassification
    cfg = HFConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                   image_size=32, patch_size=8, num_labels=5)
    return randomize(ViTForImageClassification(cfg))


def _hf_tokens(ref, x):
    with torch.no_grad():
        return ref.vit(pixel_values=x).last_hidden_state  # after the final LayerNorm


def test_hf_vit_for_image_classification_live_and_folder(tmp_path):
    ref = _hf_model()
    x = images(2, 32)
    want, tokens = _logits(ref, x), _hf_tokens(ref, x)
    ours = VisionTransformer.from_pretrained(ref)  # transformers 5 names (layers.i.attention.q_proj ...)
    assert ours.config.norm_eps == ref.config.layer_norm_eps == 1e-12
    assert (ours.config.num_heads, ours.config.num_classes) == (4, 5)
    assert max_diff(_tokens(ours, x), tokens) <= TOL
    assert max_diff(_logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, tokens, want, PLAIN)
    ref.save_pretrained(tmp_path / "hf")  # written with the Hub's names (encoder.layer.i.attention.attention.query)
    ours = VisionTransformer.from_pretrained(tmp_path / "hf")
    assert max_diff(_tokens(ours, x), tokens) <= TOL
    assert max_diff(_logits(ours, x), want) <= TOL
    # eps 1e-12 instead of 1e-6 shows only where a LayerNorm sees a variance near 1e-6: embeddings 1000x smaller
    with torch.no_grad():
        for p in ref.vit.embeddings.parameters():
            p.mul_(1e-3)
    quiet = VisionTransformer.from_pretrained(ref)
    want, tokens = _logits(ref, x), _hf_tokens(ref, x)
    assert max_diff(_tokens(quiet, x), tokens) <= TOL and max_diff(_logits(quiet, x), want) <= TOL
    assert_pieces_matter(quiet, x, tokens, want, ["norm_eps"])


def test_hf_vit_model_without_head_gives_the_cls_features():
    from transformers import ViTModel
    ref = _hf_model()
    backbone = ViTModel(ref.config, add_pooling_layer=True).eval()
    backbone.load_state_dict(ref.vit.state_dict(), strict=False)  # all but the pooler
    x = images(2, 32)
    with torch.no_grad():
        tokens = backbone(x).last_hidden_state
    want = tokens[:, 0]  # (B, D): normed [CLS]
    ours = from_pretrained(backbone)  # the tanh pooler is not used by any logits and is dropped
    assert ours.config.num_classes == 0
    assert max_diff(_tokens(ours, x), tokens) <= TOL
    assert max_diff(_logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, tokens, want, PLAIN)


# ------------------------------------------------------------------------------------------------------------
# torchvision


def _torchvision_tokens(ref, x):
    """torchvision's tokens before the head: its encoder's output (after encoder.ln)."""
    return output_of(ref.encoder, lambda: ref(x))


def test_torchvision_vit_b_16():
    from torchvision.models import vit_b_16
    ref = randomize(vit_b_16())
    x = images(1, 224)
    ours = VisionTransformer.from_pretrained(ref)
    assert (ours.config.embed_dim, ours.config.depth, ours.config.num_heads) == (768, 12, 12)
    tokens, want = _torchvision_tokens(ref, x), _logits(ref, x)
    assert max_diff(_tokens(ours, x), tokens) <= TOL
    assert max_diff(_logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, tokens, want, ["head_layout"])  # the small model below checks the others


def test_torchvision_old_mlp_keys_and_pre_logits():
    from torchvision.models.vision_transformer import VisionTransformer as TvViT
    ref = randomize(TvViT(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128,
                          num_classes=3))
    x = images(2, 32)
    # torchvision < 0.13 named the MLP layers linear_1 / linear_2 (pytorch/vision#6053).
    old = {re.sub(r"mlp\.([03])\.", lambda m: f"mlp.linear_{int(m.group(1)) // 3 + 1}.", k): v
           for k, v in ref.state_dict().items()}
    assert "encoder.layers.encoder_layer_1.mlp.linear_2.weight" in old
    ours = from_pretrained(old, num_heads=4)
    tokens, want = _torchvision_tokens(ref, x), _logits(ref, x)
    assert max_diff(_tokens(ours, x), tokens) <= TOL
    assert max_diff(_logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, tokens, want, PLAIN)
    # representation_size adds heads.pre_logits + tanh before the head: vitkit's head_hidden_dim computes it
    with_rep = randomize(TvViT(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128,
                               num_classes=3, representation_size=32))
    ours = from_pretrained(with_rep)
    assert (ours.config.head_hidden_dim, ours.config.head_act, ours.head.weight.shape) == (32, "tanh", (3, 32))
    tokens, want = _torchvision_tokens(with_rep, x), _logits(with_rep, x)
    assert max_diff(_tokens(ours, x), tokens) <= TOL
    assert max_diff(_logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, tokens, want, ["head_mlp"])
    ours = from_pretrained(with_rep.state_dict(), num_heads=4, num_classes=5)  # a new head after the layer
    assert ours.head.weight.shape == (5, 32) and torch.equal(ours.pre_logits.fc.weight,
                                                             with_rep.heads.pre_logits.weight)


# ------------------------------------------------------------------------------------------------------------
# JAX .npz


def timm_to_npz(model: TimmViT, path, big_vision: bool = False, scan: bool = False, prefix: str = "",
                extra: dict | None = None) -> None:
    """Write ``model`` in the original JAX layout: exactly the inverse of timm's ``_load_weights`` (with
    big_vision's MAP head when the model pools by attention)."""
    mha, ln2, mlp = (0, 1, 0) if big_vision else (1, 2, 3)
    d, h = model.embed_dim, model.blocks[0].attn.num_heads
    a = lambda t: t.detach().numpy().copy()  # noqa: E731

    def attention(out: dict, at: str, q, k, v, qb, kb, vb, proj) -> None:
        for name, wt, bs in zip(("query", "key", "value"), (q, k, v), (qb, kb, vb)):
            out[f"{at}{name}/kernel"] = a(wt.T.reshape(d, h, d // h))  # (D, H, hd)
            out[f"{at}{name}/bias"] = a(bs.reshape(h, d // h))
        out[f"{at}out/kernel"] = a(proj.weight.T.reshape(h, d // h, d))
        out[f"{at}out/bias"] = a(proj.bias)

    def dense(out: dict, at: str, m) -> None:
        for r, fc in enumerate((m.fc1, m.fc2)):
            out[f"{at}Dense_{r}/kernel"], out[f"{at}Dense_{r}/bias"] = a(fc.weight.T), a(fc.bias)

    w = {"embedding/kernel": a(model.patch_embed.proj.weight.permute(2, 3, 1, 0)),  # (D,C,P,P) -> (P,P,C,D)
         "embedding/bias": a(model.patch_embed.proj.bias),
         "Transformer/encoder_norm/scale": a(model.norm.weight), "Transformer/encoder_norm/bias": a(model.norm.bias)}
    if hasattr(model.head, "weight"):
        w["head/kernel"], w["head/bias"] = a(model.head.weight.T), a(model.head.bias)
    if model.cls_token is not None:
        w["cls"] = a(model.cls_token)
    w["pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding"] = a(model.pos_embed)
    if getattr(model, "attn_pool", None) is not None:
        pool = model.attn_pool
        w["MAPHead_0/probe"] = a(pool.latent)
        attention(w, "MAPHead_0/MultiHeadDotProductAttention_0/", pool.q.weight, *pool.kv.weight.chunk(2),
                  pool.q.bias, *pool.kv.bias.chunk(2), pool.proj)
        w["MAPHead_0/LayerNorm_0/scale"], w["MAPHead_0/LayerNorm_0/bias"] = a(pool.norm.weight), a(pool.norm.bias)
        dense(w, "MAPHead_0/MlpBlock_0/", pool.mlp)
    blocks = []
    for blk in model.blocks:
        b = {"LayerNorm_0/scale": a(blk.norm1.weight), "LayerNorm_0/bias": a(blk.norm1.bias),
             f"LayerNorm_{ln2}/scale": a(blk.norm2.weight), f"LayerNorm_{ln2}/bias": a(blk.norm2.bias)}
        attention(b, f"MultiHeadDotProductAttention_{mha}/", *blk.attn.qkv.weight.chunk(3),
                  *blk.attn.qkv.bias.chunk(3), blk.attn.proj)
        dense(b, f"MlpBlock_{mlp}/", blk.mlp)
        blocks.append(b)
    if scan:  # one tensor per parameter with a leading depth axis
        w.update({f"Transformer/encoderblock/{k}": np.stack([b[k] for b in blocks]) for k in blocks[0]})
    else:
        w.update({f"Transformer/encoderblock_{i}/{k}": v for i, b in enumerate(blocks) for k, v in b.items()})
    np.savez(path, **{prefix + k: v for k, v in w.items()}, **(extra or {}))


NPZ_LAYOUTS = {  # name: (timm model options, npz writer options)
    "vision_transformer": (dict(), dict(prefix="opt/target/", extra={"opt/state/step": np.zeros(1)})),
    "big_vision_scan_cls": (dict(no_embed_class=True), dict(big_vision=True, scan=True, prefix="params/")),
    "big_vision_scan_gap": (dict(class_token=False, global_pool="avg", fc_norm=False),
                            dict(big_vision=True, scan=True, prefix="params/img/",
                                 extra={"params/txt/Embed_0/embedding": np.zeros((3, 2), np.float32)})),
}


@pytest.mark.parametrize("layout", list(NPZ_LAYOUTS))
def test_jax_npz_matches_timm_loader(tmp_path, layout):
    timm_kw, npz_kw = NPZ_LAYOUTS[layout]
    kw = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=6, **timm_kw)
    path = tmp_path / "vit.npz"
    timm_to_npz(randomize(TimmViT(**kw)), path, **npz_kw)
    ref = TimmViT(**kw).eval()
    ref.load_pretrained(str(path))  # timm's _load_weights
    x = images(2, 32)
    ours = from_pretrained(path, act="gelu")  # timm's port computes the exact GELU
    assert ours.config.num_heads == 4  # read from the (D, H, hd) attention kernels
    assert max_diff(_tokens(ours, x), _tokens(ref, x)) <= TOL
    assert max_diff(_logits(ours, x), _logits(ref, x)) <= TOL
    # By default the tanh GELU that flax computes, i.e. what the JAX model outputs.
    ours = from_pretrained(path)
    ref_tanh = TimmViT(**kw, act_layer="gelu_tanh").eval()
    ref_tanh.load_pretrained(str(path))
    assert ours.config.act == "gelu_tanh"
    tokens, want = _tokens(ref_tanh, x), _logits(ref_tanh, x)
    assert max_diff(_tokens(ours, x), tokens) <= TOL
    assert max_diff(_logits(ours, x), want) <= TOL
    # the (D, H, hd) kernels' head layout, the position table, the pooling and flax's tanh GELU must each show
    pooling = ["mean_pool"] if "gap" in layout else ["final_norm"]
    assert_pieces_matter(ours, x, tokens, want, ["head_layout", "pos_embed", "act:gelu", *pooling])


def test_jax_pre_logits_representation_layer_is_computed(tmp_path):
    """The original ViT's in21k checkpoints: head(tanh(pre_logits(x))), as the JAX model computes it."""
    model = randomize(TimmViT(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=4, num_classes=6))
    g = torch.Generator().manual_seed(3)
    kernel, bias = torch.randn(64, 64, generator=g) * 0.3, torch.randn(64, generator=g) * 0.1  # (D, R), (R,)
    path = tmp_path / "vit.npz"
    timm_to_npz(model, path, extra={"pre_logits/kernel": kernel.numpy(), "pre_logits/bias": bias.numpy()})
    x = images(2, 32)
    ours = from_pretrained(path, act="gelu")  # no warning: the layer is computed
    assert (ours.config.num_classes, ours.config.head_hidden_dim, ours.config.head_act) == (6, 64, "tanh")
    with torch.no_grad():
        tokens = model.forward_features(x)
        want = model.head(torch.tanh(tokens[:, 0] @ kernel + bias))
    assert max_diff(_tokens(ours, x), tokens) <= TOL
    assert max_diff(_logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, tokens, want, ["head_mlp", "final_norm"])
    with torch.no_grad():  # pre_logits=True is the representation, as timm's forward_head(pre_logits=True)
        assert max_diff(ours.forward_head(ours.forward_features(x), pre_logits=True),
                        torch.tanh(tokens[:, 0] @ kernel + bias)) <= TOL


# ------------------------------------------------------------------------------------------------------------
# Files (what `model.init: path` passes), head changes, errors


def test_files_by_path_and_new_head(tmp_path):
    from safetensors.torch import save_file
    ref = randomize(TimmViT(img_size=32, patch_size=8, embed_dim=192, depth=2, num_heads=3, num_classes=4))
    x = images(2, 32)
    want = _logits(ref, x)
    save_file(ref.state_dict(), str(tmp_path / "timm.safetensors"))
    torch.save({"model": ref.state_dict(), "epoch": 3}, tmp_path / "timm.pth")
    for name in ("timm.safetensors", "timm.pth"):
        ours = from_pretrained(tmp_path / name)
        assert max_diff(_tokens(ours, x), _tokens(ref, x)) <= TOL
        assert max_diff(_logits(ours, x), want) <= TOL

    with pytest.warns(UserWarning, match="4-class head; a new 10-class head"):
        ours = from_pretrained(tmp_path / "timm.pth", num_classes=10)
    assert ours.head.weight.shape == (10, 192)
    assert torch.equal(ours.blocks[1].mlp.fc2.weight.data, ref.blocks[1].mlp.fc2.weight.data)
    assert max_diff(ours.forward_head(ours.forward_features(x), pre_logits=True),
                    ref.forward_head(ref.forward_features(x), pre_logits=True)) <= TOL

    save_weights(ours, tmp_path / "run" / "checkpoints" / "best")  # vitkit's own file: architecture in header
    again = from_pretrained(tmp_path / "run")
    assert again.config == ours.config
    assert max_diff(_logits(again, x), _logits(ours, x)) == 0.0


def test_missing_and_unexpected_tensors_in_one_error(tmp_path):
    state = randomize(TimmViT(img_size=32, patch_size=8, embed_dim=192, depth=2, num_heads=3)).state_dict()
    del state["blocks.1.norm2.bias"]
    state["blocks.1.attn.q_norm.weight"] = torch.ones(64)
    with pytest.raises(CheckpointError) as err:
        from_pretrained(state)
    msg = str(err.value)
    assert "missing: blocks.1.norm2.bias" in msg and "unexpected: blocks.1.attn.q_norm.weight" in msg
    # A vitkit file whose header promises a 3-class head that is not there: an error, not a silent new head.
    from safetensors import safe_open
    from safetensors.torch import save_file
    path = save_weights(VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=4,
                                          num_classes=3), tmp_path / "vit")
    with safe_open(str(path), framework="pt") as f:
        header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys() if not k.startswith("head.")}
    save_file(tensors, str(tmp_path / "headless.safetensors"), metadata=header)
    with pytest.raises(CheckpointError, match="missing: head.weight, head.bias"):
        from_pretrained(tmp_path / "headless.safetensors")
    with pytest.raises(CheckpointError, match="cannot tell the format"):
        from_pretrained({"foo.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="does not exist"):
        from_pretrained("/nonexistent/weights.pth")
    with pytest.raises(ConfigError, match="unknown weights source"):
        from_pretrained(state, source="keras")


def test_class_names_come_from_the_folder_or_the_live_model(tmp_path):
    """A Hugging Face id2label (not transformers' LABEL_i placeholder) or timm's label_names (through
    label_descriptions) names the outputs; the Predictor prints them; a new head has none."""
    from transformers import ViTConfig as HFConfig, ViTForImageClassification
    from vitkit.interop.describe import class_names
    from vitkit.predictor import Predictor
    labels = {0: "tench", 1: "goldfish", 2: "great white shark"}
    hf = ViTForImageClassification(HFConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=64, image_size=16, patch_size=8, num_labels=3,
                                            id2label=labels, label2id={v: k for k, v in labels.items()})).eval()
    assert VisionTransformer.from_pretrained(hf).pretrained_classes == list(labels.values())
    hf.save_pretrained(tmp_path / "named")
    assert Predictor.load(tmp_path / "named").classes == list(labels.values())
    with pytest.warns(UserWarning, match="new 2-class head"):
        assert VisionTransformer.from_pretrained(tmp_path / "named", num_classes=2).pretrained_classes is None
    assert class_names({"id2label": {"0": "LABEL_0", "1": "LABEL_1"}}) is None
    assert class_names({"label_names": ["n01440764", "n01443537"],
                        "label_descriptions": {"n01440764": "tench, Tinca tinca"}}) == \
        ["tench, Tinca tinca", "n01443537"]
    assert class_names({"label_names": {"1": "b", "0": "a"}}) == ["a", "b"]
    assert class_names({"id2label": {"0": "a", "2": "c"}}) is None  # not every output named
