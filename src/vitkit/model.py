"""The Vision Transformer (Dosovitskiy et al. 2020), one class for every plain-ViT variant.

State-dict keys are timm's (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.{i}.attn.qkv`` ...),
so timm checkpoints load with no renaming.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Iterable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .compat import ModelNames
from .config import ViTConfig
from .errors import ConfigError
from .geometry import pair
from .layers import (HEAD_ACTIVATIONS, AttentionPoolLatent, PatchEmbedding, PostNormBlock, RotaryEmbedding,
                     TransformerBlock, make_norm, resample_pos_embed, sincos_2d_pos_embed)


class VisionTransformer(ModelNames, nn.Module):
    """A plain ViT: patch embedding, [CLS]/register tokens, position embedding, transformer blocks, head.

    Build it from keyword arguments (every argument of :class:`ViTConfig`; ``n_heads``, ``dropout`` and
    ``in_chans`` are accepted as aliases: :mod:`vitkit.compat`) or from a ``ViTConfig`` passed positionally.
    ``num_classes=0`` makes ``forward`` return the pooled representation (B, D).

    The tokens are ``[cls, dist, registers, patches]`` (each prefix token where the config has it), position
    embeddings added as timm adds them, then ``norm_pre``, the blocks and the final ``norm``; the head reads the
    pooled token (``pool``), or with ``distilled`` averages a head on [CLS] and one on the distillation token.
    """

    def __init__(self, config: ViTConfig | None = None, **kwargs):
        super().__init__()
        if config is None:
            config = ViTConfig.from_kwargs(**kwargs)
        elif kwargs:
            config = config.replace(**kwargs)
        self.config = cfg = config
        dim = cfg.embed_dim
        self.num_classes = cfg.num_classes
        self.embed_dim = dim
        self.num_features = cfg.num_features  # what the classifier reads: the head's hidden width, if any
        self.num_prefix_tokens = cfg.num_prefix_tokens

        self.grad_checkpointing = False
        self.pretrained_preprocess: dict | None = None  # set by from_pretrained when the source says
        self.pretrained_classes: list[str] | None = None  # likewise
        self.patch_embed = PatchEmbedding(cfg.img_size, cfg.patch_size, cfg.in_channels, dim,
                                          strict_img_size=not cfg.dynamic_img_size, bias=cfg.patch_bias,
                                          norm=cfg.patch_norm, norm_eps=cfg.norm_eps, embed_norm=cfg.embed_norm,
                                          norm_layer=cfg.norm_layer)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cfg.class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.reg_tokens, dim)) if cfg.reg_tokens else None
        # timm: the position embedding covers the prefix tokens unless no_embed_class.
        embed_len = cfg.num_patches + (0 if cfg.no_embed_class else cfg.num_prefix_tokens)
        if cfg.pos_embed == "learn":
            self.pos_embed = nn.Parameter(torch.zeros(1, embed_len, dim))
        else:
            self.pos_embed = None
            if cfg.pos_embed == "sincos2d":
                self.register_buffer("fixed_pos_embed", sincos_2d_pos_embed(cfg.grid_size, dim)[None],
                                     persistent=False)  # (1, N, D): derived, not saved
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim)) if cfg.distilled else None  # timm: after pos_embed
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        # q and k of the patch tokens turn by their grid position in every block (None: no rotary embedding)
        self.rope = None if cfg.rope == "none" else RotaryEmbedding(
            cfg.rope, cfg.head_dim, num_heads=cfg.num_heads, depth=cfg.depth,
            temperature=cfg.rope_temperature, grid_offset=cfg.rope_grid_offset, indexing=cfg.rope_grid_indexing,
            ref_grid=pair(cfg.rope_ref_grid) if cfg.rope_ref_grid is not None else None,
            normalize=cfg.rope_normalize, bf16_periods=cfg.rope_bf16_periods)
        norm = partial(make_norm, cfg.norm_layer, dim, cfg.norm_eps)
        self.norm_pre = norm() if cfg.norm_pre else nn.Identity()

        rpb_kwargs = cfg.relative_position_bias()
        # Stochastic depth, linear rule: 0 for the first block up to drop_path_rate for the last.
        dpr = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        block = PostNormBlock if cfg.norm_style == "post" else TransformerBlock
        self.blocks = nn.ModuleList(
            block(dim, cfg.num_heads, mlp_ratio=cfg.mlp_ratio, dropout=cfg.drop_rate,
                  use_relative_position=cfg.use_relative_position, rpb_kwargs=rpb_kwargs, qkv_bias=cfg.qkv_bias,
                  attn_drop=cfg.attn_drop_rate, drop_path=dpr[i],
                  layer_scale_init=cfg.layer_scale_init, norm_eps=cfg.norm_eps, act=cfg.act, mlp=cfg.mlp,
                  fused_attn=cfg.attn_impl == "fused", norm_layer=cfg.norm_layer, attn_norm=cfg.attn_norm,
                  mlp_norm=cfg.mlp_norm, proj_bias=cfg.proj_bias, mlp_bias=cfg.mlp_bias,
                  rope_half=self.rope is not None and self.rope.half,
                  attn_dim=cfg.attn_dim, attn_scale=cfg.attn_scale)
            for i in range(cfg.depth))
        use_fc_norm = cfg.use_fc_norm
        self.norm = norm() if cfg.final_norm and not use_fc_norm else nn.Identity()
        self.attn_pool = AttentionPoolLatent(dim, cfg.attn_pool_heads or cfg.num_heads, cfg.attn_pool_dim, cfg.act,
                                             cfg.norm_eps, cfg.norm_layer) if cfg.pool == "map" else None
        self.fc_norm = norm() if cfg.final_norm and use_fc_norm else nn.Identity()
        # an MLP head: [LayerNorm] [Linear -> act] before the classifier (the ViT paper's pre-logits layer: tanh)
        self.head_norm = make_norm(cfg.norm_layer, cfg.pooled_dim, cfg.norm_eps) if cfg.head_norm else nn.Identity()
        self.pre_logits = nn.Identity() if cfg.head_hidden_dim is None else nn.Sequential(OrderedDict(
            fc=nn.Linear(cfg.pooled_dim, cfg.head_hidden_dim, bias=cfg.head_hidden_bias),
            act=HEAD_ACTIVATIONS[cfg.head_act]()))
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(self.num_features, cfg.num_classes, bias=cfg.head_bias) if cfg.num_classes > 0 \
            else nn.Identity()
        if cfg.distilled:
            self.head_dist = nn.Linear(dim, cfg.num_classes, bias=cfg.head_bias) if cfg.num_classes > 0 \
                else nn.Identity()
        self.init_weights()

    @classmethod
    def from_pretrained(cls, src, source: str = "auto", num_classes: int | None = None, img_size=None, *,
                        arch: str | None = None, **overrides) -> "VisionTransformer":
        """A model (eval mode) with the weights of ``src``: :func:`vitkit.pretrained.from_pretrained`, which
        documents the arguments. It lives there because reading files is no part of the model; it is imported
        here when called, so this module imports nothing that reads a file."""
        from .pretrained import from_pretrained
        return from_pretrained(src, source, num_classes, img_size, arch=arch, **overrides)

    @torch.no_grad()
    def init_weights(self) -> None:
        """timm's default initialisation: truncated normal (std .02) for linear layers, the position embedding
        and the distillation token, zero biases, near-zero [CLS]/register tokens, a unit-variance attention-pool
        query; convolution and norms as PyTorch has them."""
        for p in (self.pos_embed, self.dist_token):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)
        if self.attn_pool is not None:
            nn.init.trunc_normal_(self.attn_pool.latent, std=self.embed_dim ** -0.5)
        for token in (self.cls_token, self.reg_token):
            if token is not None:
                nn.init.normal_(token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names that weight decay should skip (besides all 1-d parameters)."""
        return {"pos_embed", "cls_token", "reg_token", "dist_token", "rope.freqs"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them (training only):
        less memory for one more forward pass of the blocks; the same gradients."""
        self.grad_checkpointing = enable

    # ----------------------------------------------------------------------------------------------------------
    # Image size

    def set_img_size(self, img_size) -> None:
        """Rebuild for another input size, resampling the learned position embedding (bicubic)."""
        cfg = self.config.replace(img_size=img_size)
        if cfg.use_relative_position:
            raise ConfigError("cannot change the image size of a model with a relative position bias, whose "
                              "table is built for one patch grid")
        old_grid = self.patch_embed.grid_size
        self.patch_embed.img_size = pair(img_size)
        self.patch_embed.grid_size = cfg.grid_size
        self.patch_embed.num_patches = cfg.num_patches
        if self.pos_embed is not None:
            prefix = 0 if cfg.no_embed_class else self.num_prefix_tokens
            self.pos_embed = nn.Parameter(resample_pos_embed(self.pos_embed.data, cfg.grid_size, old_grid, prefix))
        elif cfg.pos_embed == "sincos2d":
            self.fixed_pos_embed = sincos_2d_pos_embed(cfg.grid_size, self.embed_dim)[None].to(
                self.patch_embed.proj.weight.device)
        self.config = cfg

    def _pos_embed(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Add position embeddings and prepend the prefix tokens, in timm's order."""
        b = x.shape[0]
        prefix = []
        if self.cls_token is not None:
            prefix.append(self.cls_token.expand(b, -1, -1))  # (B, 1, D)
        if self.dist_token is not None:
            prefix.append(self.dist_token.expand(b, -1, -1))  # (B, 1, D)
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(b, -1, -1))  # (B, R, D)
        if self.pos_embed is None:
            if self.config.pos_embed == "sincos2d":
                pos = self.fixed_pos_embed
                if grid != self.patch_embed.grid_size:
                    pos = sincos_2d_pos_embed(grid, self.embed_dim)[None].to(x.device)
                x = x + pos.to(x.dtype)
            return torch.cat(prefix + [x], dim=1) if prefix else x
        pos = self.pos_embed
        if grid != self.patch_embed.grid_size:  # dynamic image size: resample on the fly
            n_prefix = 0 if self.config.no_embed_class else self.num_prefix_tokens
            pos = resample_pos_embed(pos, grid, self.patch_embed.grid_size, n_prefix)
        if self.config.no_embed_class:  # add, then concatenate (big_vision, DeiT III)
            x = x + pos
            return torch.cat(prefix + [x], dim=1) if prefix else x
        x = torch.cat(prefix + [x], dim=1) if prefix else x  # concatenate, then add (ViT paper)
        return x + pos

    # ----------------------------------------------------------------------------------------------------------
    # Forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> logits (B, num_classes), or the pooled (B, D) when ``num_classes=0``."""
        return self.forward_head(self.forward_features(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> normed tokens (B, prefix + N, D)."""
        return self.norm(self._run_blocks(*self._embed(x))[0])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, T, D) -> logits (B, classes), or the representation the classifier reads (B, num_features)
        with ``pre_logits``: the pooled token, through ``head_norm`` and the hidden layer where the model has them."""
        if self.dist_token is not None:  # DeiT: a head on [CLS] and one on the distillation token, averaged
            x, x_dist = self.head_drop(x[:, 0]), self.head_drop(x[:, 1])  # (B, D) each
            return (x + x_dist) / 2 if pre_logits else (self.head(x) + self.head_dist(x_dist)) / 2
        x = self.head_drop(self.pre_logits(self.head_norm(self.fc_norm(self.pool(x)))))
        if self.config.head_l2norm:  # f / ||f||: the classifier reads directions (a zero-shot head)
            x = nn.functional.normalize(x, dim=-1)
        return x if pre_logits else self.head(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, D) -> (B, D): the [CLS] token, or the mean of or attention over the patch tokens (all
        tokens with ``pool_include_prefix``, as timm's Eva MAP head and the Perception Encoder pool); pool
        'cls_mean' -> (B, 2D): [CLS] and the mean patch token concatenated (DINOv2's linear evaluation)."""
        if self.config.pool == "cls":
            return x[:, 0]
        if self.config.pool == "cls_mean":
            return torch.cat([x[:, 0], x[:, self.num_prefix_tokens:].mean(dim=1)], dim=-1)  # (B, 2D)
        tokens = x if self.config.pool_include_prefix else x[:, self.num_prefix_tokens:]
        return self.attn_pool(tokens) if self.attn_pool is not None else tokens.mean(dim=1)

    def forward_intermediates(self, x: torch.Tensor, indices: int | Iterable[int] | None = None, norm: bool = False,
                              output_fmt: str = "NCHW", return_prefix_tokens: bool = False,
                              intermediates_only: bool = False, stop_early: bool = False,
                              attention_layers: Iterable[int] | None = None):
        """timm's ``forward_intermediates``: the outputs of the blocks in ``indices`` (an int: the last n; a list:
        those, negative ones from the end; None: all), in block order, each through the final norm with ``norm``.

        ``output_fmt="NCHW"`` gives the patch tokens as maps (B, D, gh, gw), ``"NLC"`` as tokens (B, N, D); with
        ``return_prefix_tokens`` each item is ``(patches, prefix tokens (B, prefix, D))``. Returns ``(final
        normed tokens (B, T, D), intermediates)``, or the list alone with ``intermediates_only``. ``stop_early``
        runs no block after the last one needed (the "final" tokens are then that block's). ``attention_layers``
        computes those blocks' attention weights in the same pass and appends ``{layer: (B, H, T, T)}``.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        depth = len(self.blocks)
        if isinstance(indices, int):
            if not 0 < indices <= depth:
                raise ValueError(f"indices={indices} asks for the last {indices} blocks; the model has {depth}")
            indices = range(depth - indices, depth)
        take = self._layer_indices(indices, "block")
        wanted = self._layer_indices(attention_layers) if attention_layers is not None else []
        b, p = x.shape[0], self.num_prefix_tokens
        gh, gw = self.patch_embed.grid_for(*x.shape[-2:])
        x, kept, maps = self._run_blocks(*self._embed(x), set(take), set(wanted),
                                         max(take + wanted) + 1 if stop_early else depth)
        out = []
        for i in take:
            y = self.norm(kept[i]) if norm else kept[i]  # (B, T, D)
            patches = y[:, p:]  # (B, N, D)
            if output_fmt == "NCHW":
                patches = patches.reshape(b, gh, gw, -1).permute(0, 3, 1, 2).contiguous()  # (B, D, gh, gw)
            out.append((patches, y[:, :p]) if return_prefix_tokens and p else patches)
        result = [out] if intermediates_only else [self.norm(x), out]
        if attention_layers is not None:
            result.append(maps)
        return result[0] if len(result) == 1 else tuple(result)

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images (B, C, H, W) -> (the tokens entering the first block (B, T, D), T = prefix + N; the patch grid)."""
        grid = self.patch_embed.grid_for(*x.shape[-2:])
        x = self.patch_embed(x)  # (B, N, D)
        return self.norm_pre(self.pos_drop(self._pos_embed(x, grid))), grid

    def _run_blocks(self, x: torch.Tensor, grid: tuple[int, int], keep: set[int] = frozenset(),
                    attention_layers: set[int] = frozenset(), depth: int | None = None
                    ) -> tuple[torch.Tensor, dict, dict]:
        """Tokens through the first ``depth`` blocks (all by default): (tokens, {i: block i's output for i in
        keep}, {i: block i's attention weights}). The blocks in ``attention_layers`` compute their attention
        explicitly; under grad checkpointing the others keep no activations, recomputing them in backward. A
        rotary embedding is computed once for the grid (RoPE-Mixed: one per block) and given to every block."""
        kept, maps = {}, {}
        checkpointed = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        rope = None
        if self.rope is not None:
            rope = self.rope(grid, x.device)  # (N, 2d), or (depth, H, N, 2d) for RoPE-Mixed
        for i in range(len(self.blocks) if depth is None else depth):
            block = self.blocks[i]
            r = rope[i] if rope is not None and rope.ndim == 4 else rope
            if i in attention_layers:
                x, maps[i] = block(x, r, return_attention=True)
            elif checkpointed:
                x = checkpoint(block, x, r, use_reentrant=False)
            else:
                x = block(x, r)
            if i in keep:
                kept[i] = x
        return x, kept, maps

    def forward_with_attention(self, x: torch.Tensor, layers: Iterable[int] | None = None
                               ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """One pass: (logits, {layer: attention weights (B, heads, T, T)}) for the chosen layers (all when None;
        negative indices count from the end). Only those layers compute their attention explicitly; the others
        run fused."""
        x, _, maps = self._run_blocks(*self._embed(x), attention_layers=set(self._layer_indices(layers)))
        return self.forward_head(self.norm(x)), maps

    def _layer_indices(self, layers: Iterable[int] | None, what: str = "attention layer") -> list[int]:
        depth = len(self.blocks)
        if layers is None:
            return list(range(depth))
        out = []
        for i in layers:
            if not isinstance(i, int) or not -depth <= i < depth:
                raise ValueError(f"{what} {i!r} does not exist; the model has layers 0..{depth - 1}")
            out.append(i % depth)
        if not out:
            raise ValueError(f"no {what}s were asked for; pass layer indices or None for all")
        return sorted(set(out))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_image(cfg: ViTConfig) -> float:
    """Forward FLOPs of one image (2 per multiply-add), counting the matmuls: patch projection, qkv, attention
    (q k^T and attn v), output projection, MLP, attention pooling, the head's hidden layer and head(s)."""
    n = cfg.num_patches
    t = n + cfg.num_prefix_tokens
    d, m, a = cfg.embed_dim, cfg.mlp_dim, cfg.attn_width
    m_out = m // 2 if cfg.mlp == "swiglu" else m  # a gated MLP's fc2 reads half of fc1's width
    patch = 2 * n * (cfg.in_channels * cfg.patch_size**2) * d
    per_block = 2 * t * (3 * d * a + a * d + d * m + m_out * d) + 2 * 2 * t * t * a
    read = t if cfg.pool_include_prefix else n  # the tokens the attention pool attends over
    pool = 2 * (d * d + read * 2 * d * d + 2 * read * d + d * d + 2 * d * cfg.attn_pool_dim) \
        if cfg.pool == "map" else 0
    heads = 2 * cfg.num_features * cfg.num_classes * (2 if cfg.distilled else 1)
    heads += 2 * cfg.pooled_dim * cfg.head_hidden_dim if cfg.head_hidden_dim is not None else 0
    return float(patch + cfg.depth * per_block + pool + heads)
