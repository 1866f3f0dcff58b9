"""The backbone with a probe as its head: one :class:`VisionTransformer` whose ``forward`` computes exactly the
probe's input and then the probe, so a probe's checkpoint is scored, served and exported like a trained one.

What the head reads is set by the config, per embedding kind (f = the probe's input):

- ``pooled``: the backbone's own pooling and head layers, unchanged (f = ``forward_head(pre_logits=True)``);
  only the final linear layer is replaced (both of a distilled model's heads: W (x + x_d) / 2 = (Wx + Wx_d) / 2);
- ``cls`` / ``mean`` / ``cls_mean``: pool 'cls' / 'mean' / 'cls_mean' on the tokens as ``forward_features``
  gives them, with no head norm, hidden layer or unit-length scaling. ``fc_norm`` is set explicitly: off
  for a backbone whose final norm comes before pooling (so pool 'mean' averages the normed patch tokens,
  not the default: normalise the average); for one that normalises after pooling (fc_norm) the features of
  :meth:`Predictor.features` are the unnormed tokens, so the probe model has no final norm at all.

:func:`probe_model` checks the result on a batch against the features it was fitted on and refuses, in one
sentence, what one model cannot compute.
"""

from __future__ import annotations

import torch

from ..errors import CheckpointError, ConfigError
from ..model import VisionTransformer


def probe_config(cfg, kind: str, num_classes: int):
    """The ViTConfig of the backbone ``cfg`` with a linear head of ``num_classes`` on features ``kind``."""
    if kind == "pooled":
        return cfg.replace(num_classes=num_classes, head_bias=True)
    if kind not in ("cls", "mean", "cls_mean"):
        raise ConfigError(f"a probe reads pooled, cls, mean or cls_mean features, got {kind!r}")
    if cfg.distilled:
        raise ConfigError("a distilled (DeiT) model's head averages [CLS] and the distillation token, so no "
                          f"single pool gives its {kind!r} features; probe it with --embedding pooled")
    head = dict(num_classes=num_classes, head_bias=True, head_norm=False, head_hidden_dim=None, head_l2norm=False,
                pool=kind, pool_include_prefix=False)
    if cfg.use_fc_norm:  # its tokens are unnormed before pooling: so are the features, so no norm here
        return cfg.replace(**head, fc_norm=False, final_norm=False)
    return cfg.replace(**head, fc_norm=False)


@torch.no_grad()
def probe_model(backbone: VisionTransformer, kind: str, weight: torch.Tensor, bias: torch.Tensor,
                check_batch: torch.Tensor | None = None, check_features: torch.Tensor | None = None
                ) -> VisionTransformer:
    """The backbone's weights with the head (weight (classes, F), bias (classes,)); with ``check_batch``
    (preprocessed images) and ``check_features`` (what the probe read for them), the model's pre-logits
    are checked to equal those features."""
    cfg = probe_config(backbone.config, kind, weight.shape[0])
    model = VisionTransformer(cfg).to(next(backbone.parameters()).device)
    own = model.state_dict()
    state = {k: v for k, v in backbone.state_dict().items()
             if k in own and own[k].shape == v.shape and not k.startswith(("head.", "head_dist."))}
    missing = [k for k in own if k not in state and not k.startswith(("head.", "head_dist."))]
    if missing:
        raise CheckpointError(f"the backbone's weights do not fill a model with pool {cfg.pool!r} (missing "
                              f"{', '.join(missing[:3])}); probe it with --embedding pooled")
    model.load_state_dict(state, strict=False)
    if model.head.weight.shape != weight.shape:
        raise CheckpointError(f"the probe has {weight.shape[1]} inputs but the {cfg.pool} pooling gives "
                              f"{model.head.weight.shape[1]}; probe it with --embedding pooled")
    for head in (model.head, getattr(model, "head_dist", None)):
        if head is not None:
            head.weight.copy_(weight)
            head.bias.copy_(bias)
    model.eval()
    if check_batch is not None:
        device = next(model.parameters()).device
        got = model.forward_head(model.forward_features(check_batch.to(device)), pre_logits=True).float().cpu()
        if got.shape != check_features.shape or not torch.allclose(got, check_features, rtol=1e-4, atol=1e-5):
            raise CheckpointError(f"no single model of this architecture computes the {kind!r} features the probe "
                                  "read, so its head cannot be saved with the backbone; probe --embedding pooled")
    return model
