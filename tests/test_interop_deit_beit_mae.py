"""DeiT, BEiT and MAE load into vitkit and give the library's logits (float32, <= 1e-5): timm's distilled DeiT
(eval logits average the two heads) and the facebookresearch/deit files, Hugging Face's DeiT with teacher,
timm's BEiT and unilm's files (q/v biases, per-block or shared relative position tables, layer scale), and
MAE's pretraining (with its decoder) and fine-tuning files."""

import pytest
import torch
import timm
from timm.models.vision_transformer import VisionTransformer as TimmViT

from mutation import assert_pieces_matter
from test_interop import TOL, images, max_diff, randomize
from test_interop_clip import assumed_preprocessing, logits, silent, tokens
from vitkit import from_pretrained
from vitkit.interop import load_pretrained
from vitkit.interop.preprocess import BEIT, DEIT

TINY = dict(depth=2, embed_dim=192, num_heads=3, img_size=32, patch_size=8)  # width 192: the paper's 3 heads


def test_timm_deit_distilled(tmp_path):
    ref = randomize(timm.create_model("deit_tiny_distilled_patch16_224", num_classes=5, **TINY))
    x = images(2, 32)
    want = logits(ref, x)  # eval: (head(x[:, 0]) + head_dist(x[:, 1])) / 2
    their_tokens = tokens(ref, x)
    found = silent(load_pretrained, ref)
    assert found.config.distilled and found.preprocess == DEIT
    ours = silent(from_pretrained, ref)
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, their_tokens, want, ["dist_token", "dist_head", "head_layout", "pos_embed"])
    torch.save({"model": ref.state_dict(), "epoch": 299}, tmp_path / "deit_tiny_distilled.pth")  # facebookresearch
    ours = silent(from_pretrained, tmp_path / "deit_tiny_distilled.pth")
    assert ours.config.num_prefix_tokens == 2 and max_diff(logits(ours, x), want) <= TOL
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(ours.forward_head(ours.forward_features(x), pre_logits=True),
                    ref.forward_head(ref.forward_features(x), pre_logits=True)) <= TOL


def test_hf_deit_with_teacher(tmp_path):
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher
    ref = randomize(DeiTForImageClassificationWithTeacher(DeiTConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32,
        patch_size=8, num_labels=5)))
    x = images(2, 32)
    with torch.no_grad():
        want, their_tokens = ref(pixel_values=x).logits, ref.deit(pixel_values=x).last_hidden_state
    ours = silent(from_pretrained, ref)
    assert ours.config.distilled and ours.config.norm_eps == 1e-12
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, their_tokens, want, ["dist_token", "dist_head", "head_layout", "pos_embed"])
    ref.save_pretrained(tmp_path / "deit")
    ours = assumed_preprocessing(from_pretrained, tmp_path / "deit")
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL


def beit(**kw):
    return randomize(timm.create_model("beit_base_patch16_224", depth=2, embed_dim=64, num_heads=4, img_size=32,
                                       patch_size=8, num_classes=5, **kw))


def test_timm_beit():
    ref = beit()
    x = images(2, 32)
    found = silent(load_pretrained, ref)
    cfg = found.config
    assert cfg.qkv_bias == "qv" and cfg.use_relative_position and cfg.pos_embed == "none" and cfg.pool == "mean"
    assert found.preprocess == BEIT
    ours = silent(from_pretrained, ref)
    want, their_tokens = logits(ref, x), tokens(ref, x)
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, their_tokens, want, ["rel_pos_bias", "qv_bias", "q_bias", "layer_scale",
                                                       "mean_pool", "fc_norm", "head_layout"])
    # unilm's files also hold each block's relative_position_index (derived from the grid: dropped); the
    # heads come from the tables' columns
    state = dict(ref.state_dict())
    state.update({f"blocks.{i}.attn.relative_position_index": b.attn.relative_position_index
                  for i, b in enumerate(ref.blocks)})
    ours = silent(from_pretrained, {"model": state})
    assert ours.config.num_heads == 4 and max_diff(logits(ours, x), want) <= TOL
    assert max_diff(tokens(ours, x), their_tokens) <= TOL


@pytest.mark.parametrize("per_block", [False, True])
def test_beit_shared_relative_position_bias(per_block):
    """BEiT pretraining files share one table (rel_pos_bias.*) across the blocks, alone or added to their own."""
    ref = beit(use_shared_rel_pos_bias=True, use_rel_pos_bias=per_block)
    state = dict(ref.state_dict(), **{"rel_pos_bias.relative_position_index": torch.zeros(17, 17, dtype=torch.long)})
    assert "rel_pos_bias.relative_position_bias_table" in state
    x = images(2, 32)
    ours = silent(from_pretrained, state)
    want, their_tokens = logits(ref, x), tokens(ref, x)
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, their_tokens, want, ["rel_pos_bias"])
    # the shared table alone switched off (zero) in the file: the per-block tables cannot stand in for it
    table = state["rel_pos_bias.relative_position_bias_table"]
    unshared = silent(from_pretrained, dict(state, **{"rel_pos_bias.relative_position_bias_table": 0 * table}))
    assert max_diff(tokens(unshared, x), their_tokens) > 1e-3 and max_diff(logits(unshared, x), want) > 1e-3


def test_mae_pretrain_and_finetune(tmp_path):
    # pretraining: the encoder with MAE's decoder and mask token beside it; the features are the normed [CLS]
    enc = randomize(TimmViT(num_classes=0, **TINY))
    decoder = {"mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.zeros(32, 192),
               "decoder_pos_embed": torch.zeros(1, 17, 32), "decoder_blocks.0.norm1.weight": torch.ones(32),
               "decoder_norm.weight": torch.ones(32), "decoder_pred.weight": torch.zeros(192, 32)}
    torch.save({"model": {**enc.state_dict(), **decoder}}, tmp_path / "mae_pretrain_vit_tiny.pth")
    x = images(2, 32)
    ours = silent(from_pretrained, tmp_path / "mae_pretrain_vit_tiny.pth")
    want, their_tokens = logits(enc, x), tokens(enc, x)
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, their_tokens, want, ["final_norm", "head_layout", "pos_embed"])
    # fine-tuning (global_pool=True): fc_norm after the mean of the patch tokens, no final norm
    tuned = randomize(TimmViT(num_classes=5, global_pool="avg", fc_norm=True, **TINY))
    torch.save({"model": tuned.state_dict()}, tmp_path / "mae_finetuned_vit_tiny.pth")
    ours = silent(from_pretrained, tmp_path / "mae_finetuned_vit_tiny.pth")
    assert ours.config.pool == "mean" and ours.config.use_fc_norm
    want, their_tokens = logits(tuned, x), tokens(tuned, x)
    assert max_diff(tokens(ours, x), their_tokens) <= TOL
    assert max_diff(logits(ours, x), want) <= TOL
    assert_pieces_matter(ours, x, their_tokens, want, ["mean_pool", "fc_norm", "head_layout"])
