"""Every format vitkit reads, the order in which their keys are tried, and the names ``source=`` accepts."""

from __future__ import annotations

from .formats import HF, HF_DINOV2, JAX, TIMM, TORCHVISION, VITKIT
from .formats_clip import HF_CLIP, HF_SIGLIP, OPEN_CLIP, OPEN_CLIP_TIMM
from .formats_handwritten import MHA_PRENORM, TORCH_NN, VIT_PYTORCH, VIT_PYTORCH_0, VIT_PYTORCH_SIMPLE
from .formats_rope import DINOV3, HF_AIMV2, HF_DINOV3, PE, PE_TOWER
from .rules import Format

FORMATS: dict[str, Format] = {f.name: f for f in (
    TIMM, HF, HF_DINOV2, HF_DINOV3, HF_CLIP, HF_SIGLIP, HF_AIMV2, TORCHVISION, JAX, OPEN_CLIP, OPEN_CLIP_TIMM, PE,
    PE_TOWER, DINOV3, VIT_PYTORCH, VIT_PYTORCH_0, VIT_PYTORCH_SIMPLE, TORCH_NN, MHA_PRENORM, VITKIT)}

# Most specific first: Hugging Face's Dinov2 shares the ViT marker (its patch embedding) and must come before
# it, and its registers and layer scale are DINOv3ViT's markers too; the Perception Encoder's keys are open_clip's
# and more (an attention pool) or less (no ln_post); CLIP's keys are a superset of SigLIP's; DINOv3's original
# files are timm's keys plus its periods; a hand-written model may reuse timm's patch_embed.proj, so timm comes
# last.
DETECTION_ORDER = ("open_clip_timm", "pe", "pe_tower", "open_clip", "hf_clip", "hf_siglip", "hf_aimv2", "hf_dinov2",
                   "hf_dinov3", "hf", "torchvision", "jax", "vit_pytorch", "vit_pytorch_0", "vit_pytorch_simple",
                   "mha_prenorm", "torch_nn", "dinov3", "timm")

SOURCE_ALIASES = {
    "auto": "auto", "timm": "timm", "vitkit": "vitkit", "hf": "hf", "huggingface": "hf", "transformers": "hf",
    "hf_clip": "hf_clip", "hf_siglip": "hf_siglip", "hf_dinov2": "hf_dinov2", "torchvision": "torchvision",
    "jax": "jax", "npz": "jax", "big_vision": "jax", "open_clip": "open_clip", "openai": "open_clip",
    "clip": "open_clip", "open_clip_timm": "open_clip_timm", "dinov2": "timm", "beit": "timm", "deit": "timm",
    "mae": "timm", "vit_pytorch": "vit_pytorch", "vit-pytorch": "vit_pytorch",
    "vit_pytorch_0": "vit_pytorch_0", "vit_pytorch_simple": "vit_pytorch_simple", "simple_vit": "vit_pytorch_simple",
    "torch_nn": "torch_nn", "torch": "torch_nn", "mha_prenorm": "mha_prenorm", "dinov3": "dinov3",
    "hf_dinov3": "hf_dinov3", "hf_aimv2": "hf_aimv2", "pe": "pe", "perception_encoder": "pe", "pe_tower": "pe_tower",
    "rules": "rules"}  # rules: the rules= table alone
