"""Every format vitkit reads, the order in which their keys are tried, and the names ``source=`` accepts."""

from __future__ import annotations

from .formats import HF, HF_DINOV2, JAX, TIMM, TORCHVISION, VITKIT
from .formats_clip import HF_CLIP, HF_SIGLIP, OPEN_CLIP, OPEN_CLIP_TIMM
from .formats_other import TORCH_NN, VIT_PYTORCH, VIT_PYTORCH_SIMPLE
from .rules import Format

FORMATS: dict[str, Format] = {f.name: f for f in (
    TIMM, HF, HF_DINOV2, HF_CLIP, HF_SIGLIP, TORCHVISION, JAX, OPEN_CLIP, OPEN_CLIP_TIMM, VIT_PYTORCH,
    VIT_PYTORCH_SIMPLE, TORCH_NN, VITKIT)}

# Most specific first: Hugging Face's Dinov2 shares the ViT marker (its patch embedding) and must come before
# it; CLIP's keys are a superset of SigLIP's; a hand-written model may reuse timm's patch_embed.proj, so timm
# comes last.
DETECTION_ORDER = ("open_clip_timm", "open_clip", "hf_clip", "hf_siglip", "hf_dinov2", "hf", "torchvision", "jax",
                   "vit_pytorch", "vit_pytorch_simple", "torch_nn", "timm")

SOURCE_ALIASES = {
    "auto": "auto", "timm": "timm", "vitkit": "vitkit", "hf": "hf", "huggingface": "hf", "transformers": "hf",
    "hf_clip": "hf_clip", "hf_siglip": "hf_siglip", "hf_dinov2": "hf_dinov2", "torchvision": "torchvision",
    "jax": "jax", "npz": "jax", "big_vision": "jax", "open_clip": "open_clip", "openai": "open_clip",
    "clip": "open_clip", "open_clip_timm": "open_clip_timm", "dinov2": "timm", "beit": "timm", "deit": "timm",
    "mae": "timm", "vit_pytorch": "vit_pytorch", "vit-pytorch": "vit_pytorch",
    "vit_pytorch_simple": "vit_pytorch_simple", "simple_vit": "vit_pytorch_simple", "torch_nn": "torch_nn",
    "torch": "torch_nn"}
