"""What loads from where, as data: :data:`SUPPORT` (model family x library -> format and the parity test that
checks it against the library), rendered with the formats' markers and assumptions into docs/formats.md by
:func:`formats_markdown` (a test keeps the file equal to it)."""

from __future__ import annotations

from ..presets import FAMILY_LICENCES, PRESET_FAMILIES
from .preprocess import FAMILY_PREPROCESSING
from .catalog import DETECTION_ORDER, FORMATS
from .rules import TRANSFORMS

# The keys a rule may make (one model has some of them), for docs/formats.md.
VITKIT_KEYS = ("patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "reg_token", "dist_token",
               "pos_embed", "norm_pre.weight", "blocks.{i}.norm1.weight", "blocks.{i}.attn.qkv.weight",
               "blocks.{i}.attn.qkv.bias", "blocks.{i}.attn.proj.weight", "blocks.{i}.attn.proj.bias",
               "blocks.{i}.ls1.gamma", "blocks.{i}.norm2.weight", "blocks.{i}.mlp.fc1.weight",
               "blocks.{i}.mlp.fc2.weight", "blocks.{i}.ls2.gamma", "norm.weight", "fc_norm.weight", "head.weight",
               "head.bias", "head_dist.weight")

COLUMNS = ("timm", "Hugging Face transformers", "original files", "vit-pytorch", "torch.nn")

FAMILY_TEST = "test_family_matches_timm_at_three_sizes_fused_and_explicit_and_fails_without_its_pieces"
BY_NAME_TEST = "test_family_state_dict_loads_by_its_timm_name_and_is_refused_without_it"

# family: {column: [(what, format, parity test)]}
SUPPORT: dict[str, dict[str, list[tuple[str, str, str]]]] = {
    "CLIP": {
        "timm": [("vit_*_clip_* (live, state dict)", "timm", "test_timm_clip")],
        "Hugging Face transformers": [("CLIPVisionModel(WithProjection), CLIPModel (live, folder)", "hf_clip",
                                       "test_hf_clip_vision_with_projection")],
        "original files": [("OpenAI TorchScript .pt (fp16)", "open_clip", "test_openai_torchscript_file"),
                           ("open_clip folder with open_clip_config.json", "open_clip",
                            "test_open_clip_tower_with_its_config_folder"),
                           ("open_clip CLIPA, layer scale", "open_clip", "test_open_clip_clipa_and_layer_scale")],
    },
    "SigLIP": {
        "timm": [("vit_*_siglip_* (MAP head)", "timm", "test_timm_siglip_map")],
        "Hugging Face transformers": [("SiglipVisionModel (live, folder)", "hf_siglip", "test_hf_siglip_vision_model"),
                                      ("SiglipModel file", "hf_siglip", "test_hf_siglip_model_file")],
        "original files": [("big_vision .npz (params/img/, MAPHead_0, scan)", "jax", "test_big_vision_siglip_npz"),
                           ("open_clip with a timm trunk", "open_clip_timm", "test_open_clip_timm_trunk_siglip")],
    },
    "DINOv2": {
        "timm": [("vit_*_dinov2, reg4, giant SwiGLU", "timm", "test_timm_dinov2")],
        "Hugging Face transformers": [("Dinov2Model (live v5 names, Hub v4 names, SwiGLU)", "hf_dinov2",
                                       "test_hf_dinov2"),
                                      ("Dinov2WithRegistersModel", "hf_dinov2", "test_hf_dinov2_with_registers")],
        "original files": [("facebookresearch hub .pth (registers, SwiGLU)", "timm",
                            "test_dinov2_original_hub_file"),
                           ("training checkpoint (teacher, chunked blocks)", "timm",
                            "test_dinov2_training_checkpoint_chunked")],
    },
    "DINOv3": {
        "timm": [("vit_*_dinov3* S, S+ SwiGLU, qkvb (live; three sizes, fused and explicit)", "timm", FAMILY_TEST),
                 ("state dict with arch=, timm Hub folder", "timm", BY_NAME_TEST),
                 ("LingBot (vit_*_lingbot)", "timm", FAMILY_TEST)],
        "Hugging Face transformers": [("DINOv3ViTModel, DINOv3ViTBackbone (live, folder; model.layer / layer, "
                                       "q_proj / query names)", "hf_dinov3", "test_hf_dinov3"),
                                      ("state dict without config.json, q/k/v biases", "hf_dinov3",
                                       "test_hf_dinov3_state_dict_without_config_assumes_64_wide_heads_and_full_"
                                       "biases_load")],
        "original files": [("facebookresearch/dinov3 hub .pth (storage tokens, masked k-bias, SwiGLU w1/w2/w3)",
                            "dinov3", "test_dinov3_original_hub_file"),
                           ("bfloat16 periods, another temperature, an unmasked k-bias", "dinov3",
                            "test_dinov3_original_bf16_periods_other_temperature_and_a_key_bias")],
    },
    "Perception Encoder": {
        "timm": [("vit_pe_core_*, vit_pe_spatial_*, vit_pe_lang_* (live, state dict with arch=, folder)", "timm",
                  FAMILY_TEST)],
        "original files": [("perception_models PE-Core .pt (visual.*, attention pool, proj; G without [CLS])", "pe",
                            "test_perception_encoder_original_file"),
                           ("PE-Spatial, PE-Lang towers (no ln_post; layer scale)", "pe_tower",
                            "test_perception_encoder_lang_layer_scale_and_bad_files")],
    },
    "AIMv2": {
        "timm": [("aimv2_* (live, state dict, folder)", "timm", FAMILY_TEST)],
        "Hugging Face transformers": [("Aimv2VisionModel without its head (live, folder)", "hf_aimv2",
                                       "test_hf_aimv2_vision_model"),
                                      ("at another, non-square size (against timm's AIMv2)", "hf_aimv2",
                                       "test_hf_aimv2_at_a_non_square_size_equals_timms_aimv2")],
    },
    "EVA-02": {
        "timm": [("eva02_* (sub-LN SwiGLU) and the EVA-CLIP towers (live, state dict with arch=, folder)", "timm",
                  FAMILY_TEST)],
    },
    "RoPE-ViT": {
        "timm": [("vit_*_rope_* (axial, _ape, _mixed, _mixed_ape; live, state dict with arch=, folder)", "timm",
                  FAMILY_TEST),
                 ("vit_*_rope_reg*_gap_256 (SBB)", "timm", FAMILY_TEST)],
    },
    "TIPSv2": {
        "timm": [("vit_*_reg1_tipsv2 (live, state dict, folder)", "timm", FAMILY_TEST)],
    },
    "DeiT": {
        "timm": [("deit_*, deit_*_distilled_*", "timm", "test_timm_deit_distilled")],
        "Hugging Face transformers": [("DeiTForImageClassificationWithTeacher", "hf", "test_hf_deit_with_teacher")],
        "original files": [("facebookresearch/deit {'model': ...} (timm keys)", "timm", "test_timm_deit_distilled")],
    },
    "BEiT": {
        "timm": [("beit_*, beitv2_*", "timm", "test_timm_beit")],
        "original files": [("unilm files (relative_position_index, shared table)", "timm",
                            "test_beit_shared_relative_position_bias")],
    },
    "MAE": {
        "timm": [("vit_*.mae", "timm", "test_mae_pretrain_and_finetune")],
        "original files": [("facebookresearch/mae pretrain and fine-tune files", "timm",
                            "test_mae_pretrain_and_finetune")],
    },
    "ViT (google)": {
        "timm": [("vit_* (live, state dict, any size)", "timm", "test_timm_vit_tiny_live_model_and_state_dict"),
                 ("Attention with attn_head_dim (attn_dim != embed_dim)", "timm", "test_timm_attention_with_attn_head_dim")],
        "Hugging Face transformers": [("ViTForImageClassification, ViTModel (live, folder)", "hf",
                                       "test_hf_vit_for_image_classification_live_and_folder")],
        "original files": [("google-research / big_vision .npz", "jax", "test_jax_npz_matches_timm_loader"),
                           ("in21k .npz with the pre-logits (representation) layer", "jax",
                            "test_jax_pre_logits_representation_layer_is_computed")],
        "torch.nn": [("torchvision vit_b_16", "torchvision", "test_torchvision_vit_b_16"),
                     ("torchvision with representation_size (pre-logits)", "torchvision",
                      "test_torchvision_old_mlp_keys_and_pre_logits")],
    },
    "vit-pytorch": {
        "vit-pytorch": [("ViT >= 1.16.1 (cls, mean)", "vit_pytorch", "test_vit_pytorch_vit_current"),
                        ("ViT 1.0 - 1.15 (patch LayerNorms)", "vit_pytorch", "test_vit_pytorch_vit_1_12"),
                        ("ViT 0.10 - 0.40", "vit_pytorch", "test_vit_pytorch_vit_0_40"),
                        ("ViT 0.0.1 - 0.1.0 (Linear-GELU-Linear head, scale dim ** -0.5)", "vit_pytorch_0",
                         "test_vit_pytorch_0_1_linear_gelu_linear_head_and_width_scale"),
                        ("ViT 0.2.x (LayerNorm + MLP head)", "vit_pytorch_0", "test_vit_pytorch_0_2_layernorm_mlp_head"),
                        ("ViT 0.3 - 0.6.5 (scale dim ** -0.5, assumed; dim_head != dim / heads)", "vit_pytorch_0",
                         "test_vit_pytorch_0_6_5_attention_wider_than_the_model_scaled_by_dim"),
                        ("ViT 0.6.7 - 0.6.8 (attn_scale=None)", "vit_pytorch_0",
                         "test_vit_pytorch_0_6_7_scale_by_dim_head_when_told"),
                        ("ViT with heads x dim_head != dim (default dim_head=64)", "vit_pytorch",
                         "test_vit_pytorch_current_with_dim_head_64_on_dim_48"),
                        ("SimpleViT >= 1.4.5", "vit_pytorch_simple", "test_vit_pytorch_simple_vit")],
    },
    "torch.nn": {
        "torch.nn": [("nn.TransformerEncoder ViT (pre/post-norm, relu/gelu)", "torch_nn",
                      "test_torch_transformer_encoder_vit"),
                     ("nn.TransformerEncoder with a LayerNorm + Linear head (mlp_head.0, mlp_head.1)", "torch_nn",
                      "test_torch_encoder_with_layernorm_linear_mlp_head"),
                     ("pre-norm blocks on nn.MultiheadAttention (in_proj_weight; the UvA tutorial's names)",
                      "mha_prenorm", "test_multihead_attention_prenorm_blocks_with_layernorm_linear_head")],
    },
}


# What does not load exactly, and why (docs/formats.md lists it).
UNSUPPORTED = [
    ("timm's eva02_enormous_patch14_clip_224", "post-norm blocks (EvaBlockPostNorm)"),
    ("timm models with q/k norms, gated or grouped-query attention, RoPE periods given as min/max or in pixels",
     "no vitkit equivalent (refused with a sentence naming the piece)"),
    ("open_clip CoCa towers (attentional_pool)", "a cross-attention pooler with its own widths, not a ViT pool"),
    ("Hugging Face CLIP/SigLIP/Dinov2ForImageClassification heads",
     "they read the mean of the tokens (un-normed, for CLIP) or [CLS] and the mean side by side; the backbone "
     "loads and a new head starts from scratch, with a warning"),
    ("SigLIP2 NaFlex (Siglip2VisionModel)", "variable patch grids with a per-image position resize"),
    ("Hugging Face BEiT and ViTMAE models", "not mapped (timm's and the original files are)"),
    ("DINOv2 without registers at a size other than the checkpoint's",
     "the original and transformers <= 4.44 resample positions with a 0.1 offset and no antialiasing; vitkit "
     "resamples as timm and the register models do (exact at the checkpoint's own size)"),
    ("vit-pytorch pool='mean' before 1.16", "the mean included the [CLS] token"),
    ("vit-pytorch without to_out (heads == 1, dim_head == dim)", "no output projection, which vitkit's attention has"),
    ("nn.MultiheadAttention with kdim/vdim != embed_dim or add_bias_kv; LayerNorms without bias",
     "no vitkit equivalent"),
    ("AIMv2 with its attention-pooling head (use_head=True, so Aimv2Model's image embedding too)",
     "the head's learned query has no projection and no MLP follows, unlike vitkit's MAP head; refused with a "
     "sentence (its tokens load from a model without the head)"),
    ("native-resolution AIMv2 (is_native=True)", "its sin-cos position table has its own layout; refused"),
    ("DINOv3 with an untied [CLS] norm (cls_norm) or min/max periods", "vitkit normalises every token with one norm "
     "and computes periods T^(4k/d); refused with a sentence"),
    ("Perception Encoder original files at a size other than the checkpoint's",
     "the original resamples positions bilinearly without antialiasing and rotates by unscaled patch indices; "
     "vitkit resamples and rescales to the native grid as timm does (exact at the checkpoint's own size)"),
]


def _cell(entries: list[tuple[str, str, str]]) -> str:
    return "<br>".join(f"{what}: `{fmt}` ({test})" for what, fmt, test in entries) or "—"


def _pairs(items) -> str:
    return ", ".join(f"{k}={getattr(v, '__name__', None) or repr(v)}" for k, v in items)


def support_table() -> str:
    """The family x library table of :data:`SUPPORT` in markdown (docs/formats.md and the README show it)."""
    lines = ["| family | " + " | ".join(COLUMNS) + " |", "|" + " --- |" * (len(COLUMNS) + 1)]
    for family, cells in SUPPORT.items():
        lines.append(f"| {family} | " + " | ".join(_cell(cells.get(c, [])) for c in COLUMNS) + " |")
    return "\n".join(lines)


def families_table() -> str:
    """Each preset family's preprocessing and the licence of its default weights (names may differ: see
    :func:`vitkit.presets.licence_of` and :func:`vitkit.interop.preprocess.preprocessing_of`)."""
    lines = ["| family | presets | mean | std | resize | crop_pct | licence of the weights |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for family, prep in FAMILY_PREPROCESSING.items():
        count = sum(f == family for f in PRESET_FAMILIES.values())
        mean, std = (", ".join(f"{v:.3g}" for v in prep[k]) for k in ("mean", "std"))
        lines.append(f"| {family} | {count} | {mean} | {std} | {prep['interpolation']}, "
                     f"{prep.get('crop_mode', 'center')} | {prep['crop_pct']:g} | {FAMILY_LICENCES[family]} |")
    return "\n".join(lines)


def formats_markdown() -> str:
    """docs/formats.md: the support table, each format's marker keys (in detection order) and what it
    assumes when neither the source nor the caller says."""
    lines = ["# Weights formats", "",
             "Generated by `vitkit.interop.formats_markdown()` from `vitkit.interop.SUPPORT` and the key tables; "
             "tests/test_interop_custom.py checks this file equals it. Each cell names the format and the "
             "parity test that loads the library's model with random weights and compares vitkit's logits or "
             "features with the library's (float32, max abs difference <= 1e-5).", "",
             "`VisionTransformer.from_pretrained(src)` finds the format by its keys; `source=` forces one; "
             "`rules=` adds to and overrides what that layout places (examples/load_custom_vit.py).", "",
             support_table()]
    lines += ["", "## Your own layout: rules", "",
              "The short path: a file in a known layout but for a few tensors needs a rule for those only. "
              "Loading names them in its error (grouped by block, with the nearest known layout and a "
              "ready-to-edit table); `vitkit inspect FILE` prints the same table in YAML. An nn.TransformerEncoder "
              "ViT whose head is `to_logits.0` (LayerNorm) and `to_logits.1` (Linear):", "",
              "```python", "rules = {\"norm.weight\": \"to_logits.0.weight\", \"norm.bias\": \"to_logits.0.bias\",",
              "         \"head.weight\": \"to_logits.1.weight\", \"head.bias\": \"to_logits.1.bias\"}",
              "model = VisionTransformer.from_pretrained(\"tutorial.pth\", rules=rules, num_heads=4, "
              "norm_style=\"pre\", act=\"gelu\")", "```", "",
              "The full table, for a layout vitkit does not know (no layout detected, or `source=\"rules\"`): "
              "one rule per vitkit key, `{i}` for the block index, e.g. `\"blocks.{i}.attn.qkv.weight\": "
              "(\"enc.{i}.q.weight\", \"enc.{i}.k.weight\", \"enc.{i}.v.weight\")` (a tuple is "
              "concatenated), `\"patch_embed.proj.weight\": \"patches(stem.weight)\"` (a named transform: "
              + ", ".join(f"`{t}`" for t in TRANSFORMS) + "), or a callable of the whole state dict "
              "(`fn(state)`, `fn(state, i)` for a block key; Python only: YAML rules files for `vitkit inspect` "
              "and `vitkit convert --rules` hold keys, lists and transforms). A rule for a vitkit key replaces "
              "the layout's rule for it; the tensors it reads stay available to the layout's other rules.", "",
              "vitkit's keys (timm's): " + ", ".join(f"`{k}`" for k in VITKIT_KEYS) + "."]
    lines += ["", "## Families: preprocessing and licence", "",
              "How each family's default weights want their images (timm's pretrained configs; a source's own "
              "description wins), and the licence those weights come under. Several are not for commercial use "
              "(`vitkit.licence_of(name)` for one name).", "", families_table()]
    lines += ["", "## Formats, in the order their keys are tried", "",
              "| format | marker keys | prefixes stripped | documented defaults | assumed (with a warning) |",
              "| --- | --- | --- | --- | --- |"]
    for name in DETECTION_ORDER:
        f = FORMATS[name]
        defaults = [_pairs(f.defaults.items())] + [f"{p.family}: {_pairs(p.defaults.items())}"
                                                   for p in f.profiles if p.defaults]
        assumed = [_pairs((a.field, a.value) for a in f.assume)] + [
            f"{p.family}: {_pairs((a.field, a.value) for a in p.assume)}" for p in f.profiles if p.assume]
        lines.append(f"| `{name}` | " + ", ".join([f"`{m}`" for m in f.markers] + [f"no `{u}`" for u in f.unless])
                     + " | "
                     + (", ".join(f"`{p}`" for p in f.prefixes) or "—") + " | "
                     + ("; ".join(d for d in defaults if d) or "—") + " | "
                     + ("; ".join(a for a in assumed if a) or "—") + " |")
    notes = [f"- `{name}`: {FORMATS[name].doc}" for name in DETECTION_ORDER if FORMATS[name].doc]
    lines += ["", "What some formats leave out, or compute in their own way:", ""] + notes if notes else []
    lines += ["", "## Not supported", ""] + [f"- {what}: {why}." for what, why in UNSUPPORTED]
    lines += ["", "Heads, activation, pre/post norm and eps are read from the source when it says "
              "(`config.json`, `open_clip_config.json`, a live module); else from `from_pretrained(..., "
              "num_heads=, act=, norm_style=, norm_eps=)`; else the defaults above, and the assumed ones warn.", ""]
    return "\n".join(lines)
