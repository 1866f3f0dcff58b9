"""Which part of a model trains: ``train.freeze`` and ``train.lora`` (LoRA adapters through Hugging Face peft).

``freeze: backbone`` is a linear probe: only the classifier (``head``, and ``head_dist`` of a distilled model)
trains, on the pooled representation exactly as the weights compute it (the attention pool, ``fc_norm``,
``head_norm`` and a pre-logits layer are part of the pre-trained model and stay frozen; ``blocks:K`` with K the
depth trains them). ``freeze: blocks:K`` freezes the patch embedding, the [CLS]/distillation/register tokens,
the position embedding (and a rotary embedding's periods) and the first K blocks. A frozen parameter has
``requires_grad`` False, so it is in no optimizer group (weight decay cannot move it), and frozen modules run
in eval mode while training (no dropout or drop-path inside them): the features a probe learns from are those
the frozen weights compute, as in timm's and DINOv2's linear evaluation.

``lora`` injects peft's LoRA layers (``inject_adapter_in_model``) into the chosen Linear layers of the blocks
(after the first K with ``freeze: blocks:K``); peft freezes every other weight, and the classifier head trains
beside the adapters. vitkit's attention has one fused ``qkv`` Linear (D -> 3D), which peft adapts as one
Linear: a single pair A (r x D), B (3D x r) whose update spans q, k and v together, not one adapter each.
The adapted model trains with the adapters apart (the training state keeps the frozen base and A, B
separately, so a resume is exact); every weights file holds :func:`plain_state_dict`, the adapters merged
``W + (alpha / r) B A`` as peft's own merge computes it, under vitkit's plain keys.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..config import ViTConfig
from ..typed_config import to_dict
from ..errors import ConfigError
from .config import FREEZE, LoopConfig

CLASSIFIER = ("head", "head_dist", "head_drop")  # what a frozen backbone leaves training (head_drop: its dropout)
BEFORE_BLOCKS = ("patch_embed", "cls_token", "dist_token", "reg_token", "pos_embed", "pos_drop", "rope", "norm_pre")
LORA_MODULES = {"qkv": r"attn\.qkv", "proj": r"attn\.proj", "fc1": r"mlp\.fc1", "fc2": r"mlp\.fc2"}
PEFT_MISSING = "train.lora needs the optional peft extra: pip install 'vitkit[peft]'"


def require_peft():
    """The peft package, or one ConfigError saying how to install it."""
    try:
        import peft
    except ImportError:
        raise ConfigError(PEFT_MISSING) from None
    return peft


def frozen_block_count(freeze: str, depth: int) -> int:
    """How many blocks ``freeze`` freezes (all for ``backbone``, 0 for ``none``); K > depth is a ConfigError."""
    if freeze == "none":
        return 0
    if freeze == "backbone":
        return depth
    k = int(FREEZE.fullmatch(freeze).group(1))
    if k > depth:
        raise ConfigError(f"train.freeze={freeze} freezes {k} blocks, but the model has {depth}; use blocks:K with "
                          f"1 <= K <= {depth}")
    return k


def check_adapt(train: LoopConfig, config: ViTConfig) -> None:
    """Refuse what the model cannot do: more frozen blocks than it has, LoRA with no block left to adapt, and
    LoRA on a qkv whose weight the attention reads directly (a separate q/v bias, BEiT and EVA's ``qkv_bias:
    qv``, computes ``F.linear(x, qkv.weight, bias)``, which would bypass the adapter)."""
    k = frozen_block_count(train.freeze, config.depth)
    lora = train.lora
    if lora is None:
        return
    if k == config.depth:
        raise ConfigError(f"train.freeze={train.freeze} freezes all {config.depth} blocks, so train.lora has no "
                          f"block to adapt; use blocks:K with K < {config.depth}")
    if "qkv" in lora.targets and config.qkv_bias == "qv":
        raise ConfigError("train.lora cannot adapt qkv in this model: its separate q and v biases (qkv_bias 'qv', "
                          "as in BEiT and EVA) make the attention read the qkv weight directly, past the adapter; "
                          "set train.lora.targets to some of proj, fc1, fc2")


def lora_pattern(targets, first: int, depth: int) -> str:
    """peft's ``target_modules`` regex (matched against whole module names): the chosen Linear layers of blocks
    ``first`` .. depth - 1 and nothing else (the attention pool also has a ``proj`` and an ``mlp.fc1``)."""
    blocks = r"\d+" if first == 0 else "|".join(str(i) for i in range(first, depth))
    return rf"blocks\.({blocks})\.({'|'.join(LORA_MODULES[t] for t in targets)})"


def adapt_model(model: nn.Module, train: LoopConfig) -> list[nn.Module]:
    """Apply ``train.freeze`` and ``train.lora`` to ``model`` in place; returns the frozen modules, which the
    training loop puts back in eval mode after every ``model.train()``. A model with neither is unchanged."""
    depth = len(model.blocks)
    check_adapt(train, model.config)
    k = frozen_block_count(train.freeze, depth)
    if train.lora is not None:
        peft = require_peft()
        lora = train.lora
        peft.inject_adapter_in_model(peft.LoraConfig(
            r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
            target_modules=lora_pattern(lora.targets, k, depth)), model)  # freezes every non-adapter weight
        for name in CLASSIFIER:
            if isinstance(getattr(model, name, None), nn.Module):
                getattr(model, name).requires_grad_(True)
    if train.freeze == "backbone":
        names = [name for name, _ in model.named_children() if name not in CLASSIFIER]
        names += [name for name, _ in model.named_parameters(recurse=False)]
    else:
        names = (list(BEFORE_BLOCKS) + [f"blocks.{i}" for i in range(k)]) if k else []
    frozen = []
    for name in names:
        part = model.get_submodule(name) if "." in name else getattr(model, name, None)
        if part is None:
            continue
        part.requires_grad_(False)
        if isinstance(part, nn.Module):
            frozen.append(part)
    return frozen


def adapt_settings(train: LoopConfig) -> dict:
    """What a training state records of the adaptation, so a resume can check it builds the same model."""
    return {"freeze": train.freeze, "lora": to_dict(train.lora) if train.lora is not None else None}


def describe(model: nn.Module, train: LoopConfig) -> str:
    """One line for the console: what is frozen or adapted and how many parameters train."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    parts = []
    if train.freeze != "none":
        parts.append(f"frozen {train.freeze} (in eval mode)")
    if train.lora is not None:
        lora = train.lora
        parts.append(f"LoRA rank {lora.rank} alpha {lora.alpha:g} on {', '.join(lora.targets)} (merged into every "
                     "weights file)")
    return f"{'; '.join(parts)}; {trainable / 1e6:.3f}M of {total / 1e6:.2f}M parameters train"


def has_adapters(model: nn.Module) -> bool:
    return any(".lora_A." in name for name, _ in model.named_parameters())


@torch.no_grad()
def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights as a plain vitkit model has them: each LoRA layer's ``base_layer.weight`` plus
    peft's ``get_delta_weight`` (``(alpha / r) B A``, what peft's merge adds), under the Linear's own key; no
    ``base_layer``, ``lora_A`` or ``lora_B`` keys. A model without adapters gives its state dict unchanged."""
    state = model.state_dict()
    if not has_adapters(model):
        return state
    from peft.tuners.lora import LoraLayer

    merged = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            delta = sum(module.get_delta_weight(a) for a in module.active_adapters)  # (out, in)
            merged[f"{name}.weight"] = module.get_base_layer().weight + delta
    plain = {}
    for key, value in state.items():
        if re.search(r"\.lora_(A|B|dropout|embedding_A|embedding_B|magnitude_vector)\.", key):
            continue
        key = key.replace(".base_layer.", ".")
        plain[key] = merged.get(key, value)
    return plain
