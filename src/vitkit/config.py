"""``ViTConfig``, the single description of a ViT's architecture (its named presets: :mod:`vitkit.presets`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from .compat import ConfigNames, apply_aliases
from .typed_config import check_literals, check_positive, check_ranges, from_dict, to_dict
from .geometry import pair
from .errors import ConfigError

# --------------------------------------------------------------------------------------------------------------
# The architecture



@dataclass
class RelativeBias:
    """The settings of a relative position bias (``ViTConfig.rpb_kwargs``; a plain dict of these keys is
    accepted). ``bias_type="2d"`` covers the patch grid (``window_size``, default the grid); ``"1d"`` a
    sequence of ``seq_len`` (the patches, or all tokens). ``num_heads`` defaults to the model's."""

    bias_type: Literal["1d", "2d"] = "2d"
    window_size: int | tuple[int, int] | None = None
    seq_len: int | None = None
    num_heads: int | None = None
    init_std: float = 0.02

    def __post_init__(self):
        check_literals(self)
        check_ranges(self, "rpb_kwargs", {"seq_len": "[1, inf)", "num_heads": "[1, inf)", "init_std": "(0, inf)"})

PoolType = Literal["cls", "mean", "map", "cls_mean"]
RopeType = Literal["none", "dinov3", "axial", "mixed"]
PosEmbedType = Literal["learn", "sincos2d", "none"]
AttnImpl = Literal["fused", "explicit"]
Activation = Literal["gelu", "gelu_tanh", "quick_gelu", "silu", "relu"]
HeadActivation = Literal["tanh", "identity", "gelu", "gelu_tanh", "quick_gelu", "silu", "relu"]


@dataclass
class ViTConfig(ConfigNames):
    """Everything that decides a ViT's architecture (and so its state-dict shapes).

    Names follow timm and the paper; Hugging Face names (``hidden_size``, ``num_hidden_layers`` ...) are read
    by :meth:`from_hf` and answered read-only (:class:`vitkit.compat.ConfigNames`, as is ``from_kwargs``). ``pool="cls"`` classifies from the [CLS] token, ``"mean"`` from the average patch
    token (then ``fc_norm`` defaults to on and the final ``norm`` moves after pooling, as in timm), ``"map"``
    from one learned query attending over the patch tokens (SigLIP; timm's ``attn_pool``), ``"cls_mean"`` from
    [CLS] and the mean patch token side by side (B, 2D), as DINOv2 and DINOv3 evaluate linear probes. The families
    timm names differ by a few switches: CLIP has ``norm_pre`` and no ``patch_bias``, SigLIP pools by
    ``"map"`` without a [CLS] token, DINOv2 has layer scale (and registers, and a ``"swiglu"`` MLP for the
    giant), DeiT's distilled models a ``distilled`` token, BEiT has ``qkv_bias="qv"`` and a relative position
    bias.
    The attention may be wider or narrower than the tokens: ``attn_dim`` (timm's ``Attention.attn_dim``,
    vit-pytorch's ``heads * dim_head``) is the width of q, k and v, so ``qkv`` maps D -> 3 ``attn_dim`` and
    ``proj`` ``attn_dim`` -> D; None is ``embed_dim`` (timm's ViT). ``attn_scale`` multiplies q k^T instead of
    head_width ** -0.5 (vit-pytorch before 0.6.7 scaled by ``embed_dim ** -0.5``). ``head_hidden_dim`` puts a
    hidden layer before the classifier, ``head(act(pre_logits.fc(x)))``: with ``head_act="tanh"`` it is the
    original ViT's representation layer (timm's ``representation_size``, JAX ``pre_logits``), with ``"gelu"``
    an MLP head, with ``"identity"`` and ``head_hidden_bias=False`` a projection (CLIP's); ``head_norm`` is a
    LayerNorm on the pooled features before it (or before the head). ``head_l2norm`` scales what the classifier
    reads to unit length, so a head of normalised text embeddings times a logit scale is a zero-shot classifier.
    ``norm_style="post"`` with ``act="relu"`` and ``final_norm=False`` is the network of vitkit.numpy_vit.
    ``attn_impl="fused"`` runs ``scaled_dot_product_attention``, which is what timm runs, so logits equal
    timm's bit for bit. ``"explicit"`` runs matmul-softmax-matmul (Hugging Face's
    ``attn_implementation="eager"``). On a CPU it trains faster for sequences of a few dozen tokens
    (BENCHMARKS.md). It changes no weights, only the float rounding.
    """

    img_size: int | tuple[int, int] = 224  # input height and width (an int for a square)
    patch_size: int = 16  # side of the square patches the image is cut into
    in_channels: int = 3  # 1 for grey images, 3 for colour
    num_classes: int = 1000  # outputs of the head; 0: no head (forward returns the pooled features)
    embed_dim: int = 768  # token width D
    depth: int = 12  # number of transformer blocks
    num_heads: int = 12  # attention heads; must divide embed_dim
    mlp_ratio: float = 4.0  # MLP hidden width as a multiple of embed_dim
    qkv_bias: bool | Literal["qv"] = True  # biases in the query/key/value projection; 'qv': query and value only (BEiT)
    drop_rate: float = 0.0  # dropout after the position embedding, in attention output and MLP, before the head
    attn_drop_rate: float = 0.0  # dropout on the attention weights
    drop_path_rate: float = 0.0  # stochastic depth of the last block (linearly less for earlier blocks)
    use_relative_position: bool = False  # a learned relative position bias in every attention layer
    rpb_kwargs: RelativeBias | None = None  # the bias's settings (a dict of RelativeBias's keys is accepted)
    pool: PoolType = "cls"  # what the head reads: [CLS], the mean patch token, attention pooling (SigLIP) or cls_mean
    class_token: bool = True  # prepend a [CLS] token
    distilled: bool = False  # a distillation token after [CLS] with its own head; the logits average both heads (DeiT)
    reg_tokens: int = 0  # register tokens after [CLS] (Darcet et al. 2023)
    pos_embed: PosEmbedType = "learn"  # position embedding: learned, fixed 2-d sin-cos, or none
    no_embed_class: bool = False  # the position embedding covers the patches only (DeiT III, big_vision)
    norm_pre: bool = False  # a LayerNorm on the tokens before the first block (CLIP's ln_pre)
    fc_norm: bool | None = None  # a norm after pooling instead of before it; None: on for pool 'mean'
    final_norm: bool = True  # a LayerNorm after the last block
    layer_scale_init: float | None = None  # learned per-channel residual scale, initialised to this (CaiT)
    norm_eps: float = 1e-6  # LayerNorm epsilon
    norm_style: Literal["pre", "post"] = "pre"  # LayerNorm before each branch (ViT) or after the residual add
    act: Activation = "gelu"  # the MLP's activation; quick_gelu is x * sigmoid(1.702 x) (OpenAI CLIP)
    mlp: Literal["mlp", "swiglu"] = "mlp"  # 'swiglu': fc1's output halves x1, x2 give fc2(act(x1) * x2) (DINOv2 giant)
    patch_bias: bool = True  # a bias in the patch projection (CLIP has none)
    patch_norm: bool = False  # LayerNorms on each flattened patch and on its projection (vit-pytorch)
    head_bias: bool = True  # a bias in the head (CLIP's projection has none)
    dynamic_img_size: bool = False  # accept any image size, resampling the position embedding on the fly
    attn_impl: AttnImpl = "fused"  # 'fused' (PyTorch's kernel, timm's numbers) or 'explicit' (faster on a CPU)
    # Rotary position embedding of q and k over the patch grid (vitkit.layers.rope): DINOv3's, the axial one of
    # EVA-02 / Perception Encoder / RoPE-ViT, or RoPE-Mixed's learned one; with or without pos_embed
    rope: RopeType = "none"
    rope_temperature: float | None = None  # frequency base T; None: 100 (dinov3), 10000 (axial), 10 (mixed)
    rope_grid_offset: float = 0.0  # added to every patch coordinate (PE: 1, its [CLS] sat at 0)
    rope_grid_indexing: Literal["ij", "xy"] = "ij"  # which axis the first half of the channel pairs follows
    rope_ref_grid: int | tuple[int, int] | None = None  # axial: coordinates rescaled to this trained grid (EVA-02)
    rope_normalize: Literal["separate", "min", "max"] = "separate"  # dinov3: coordinates over each side or min/max
    rope_bf16_periods: bool = False  # dinov3: periods rounded to bfloat16, as DINOv3's original files store them
    norm_layer: Literal["layernorm", "rmsnorm"] = "layernorm"  # every norm of the model (AIMv2: RMSNorm)
    embed_norm: bool = False  # a norm after the patch projection (AIMv2)
    attn_norm: bool = False  # a norm on the heads' merged output before the attention projection (EVA-CLIP)
    mlp_norm: bool = False  # a norm on the MLP's hidden activations before fc2 (EVA-02's sub-LN)
    proj_bias: bool = True  # a bias in the attention's output projection (AIMv2 has none)
    mlp_bias: bool = True  # biases in the MLP's linears (AIMv2 has none)
    attn_pool_heads: int | None = None  # heads of the attention pool (pool 'map'); None: num_heads (PE: 8)
    attn_pool_mlp_ratio: float | None = None  # the attention pool's MLP width; None: mlp_ratio
    pool_include_prefix: bool = False  # pool 'map'/'mean' reads the prefix tokens too (timm's Eva MAP head: PE)
    attn_dim: int | None = None  # width of q, k, v (heads x head width); None: embed_dim (vit-pytorch: heads*dim_head)
    attn_scale: float | None = None  # what q k^T is multiplied by; None: head width ** -0.5 (old vit-pytorch: D ** -0.5)
    head_hidden_dim: int | None = None  # a hidden layer pre_logits.fc before the head (timm's representation_size)
    head_act: HeadActivation = "tanh"  # its activation: tanh (the ViT paper's pre-logits), gelu (an MLP head) ...
    head_norm: bool = False  # a LayerNorm on the pooled features before the head's layers (LN + Linear heads)
    head_hidden_bias: bool = True  # a bias in pre_logits.fc (a CLIP projection has none)
    head_l2norm: bool = False  # unit-length features into the classifier (a zero-shot head of text embeddings)

    def __post_init__(self):
        if isinstance(self.img_size, list):
            self.img_size = tuple(self.img_size)
        if isinstance(self.rope_ref_grid, list):
            self.rope_ref_grid = tuple(self.rope_ref_grid)
        if isinstance(self.rpb_kwargs, dict):
            self.rpb_kwargs = from_dict(RelativeBias, self.rpb_kwargs, "rpb_kwargs")
        check_positive(self, ("patch_size", "in_channels", "embed_dim", "depth", "num_heads"))
        self.grid_size_of(self.img_size)  # validates the size and its divisibility
        check_literals(self)
        check_ranges(self, "", {"num_classes": "[0, inf)", "reg_tokens": "[0, inf)", "drop_rate": "[0, 1)",
                                "attn_drop_rate": "[0, 1)", "drop_path_rate": "[0, 1)", "mlp_ratio": "(0, 64]",
                                "norm_eps": "(0, 1)", "layer_scale_init": "(0, 1e6]"})
        check_ranges(self, "", {"attn_dim": "[1, inf)", "attn_scale": "(0, inf)", "head_hidden_dim": "[1, inf)"})
        if self.attn_width % self.num_heads:
            what = "embed_dim" if self.attn_dim is None else "attn_dim"
            raise ConfigError(f"{what} ({self.attn_width}) must be divisible by num_heads ({self.num_heads})")
        self._check_head()
        if self.mlp_dim < 1:
            raise ConfigError(f"mlp_ratio {self.mlp_ratio} leaves the MLP no hidden unit (embed_dim "
                              f"{self.embed_dim} x mlp_ratio < 1)")
        if self.pool in ("cls", "cls_mean") and not self.class_token:
            raise ConfigError(f"pool={self.pool!r} needs class_token=True; use pool='mean' for a model without [CLS]")
        if not (isinstance(self.qkv_bias, bool) or self.qkv_bias == "qv"):
            raise ConfigError(f"qkv_bias must be true, false or 'qv' (query and value only), got {self.qkv_bias!r}")
        if self.distilled and (not self.class_token or self.pool != "cls" or self.fc_norm):
            raise ConfigError("distilled=True reads the [CLS] and distillation tokens after the final norm, so it "
                              "needs class_token=True, pool='cls' and no fc_norm")
        if self.mlp == "swiglu" and self.mlp_dim % 2:
            raise ConfigError(f"mlp='swiglu' splits the MLP's hidden width int(embed_dim * mlp_ratio) in two "
                              f"halves, so it must be even, got {self.mlp_dim}")
        if self.pos_embed == "sincos2d" and self.embed_dim % 4:
            raise ConfigError(f"pos_embed='sincos2d' needs embed_dim divisible by 4, got {self.embed_dim}")
        if self.use_relative_position and self.dynamic_img_size:
            raise ConfigError("dynamic_img_size=True cannot be combined with a relative position bias, whose "
                              "table is built for one patch grid")
        self.relative_position_bias()  # validates rpb_kwargs
        self._check_rope()
        check_ranges(self, "", {"attn_pool_heads": "[1, inf)", "attn_pool_mlp_ratio": "(0, 64]"})
        if self.pool == "map" and self.embed_dim % (self.attn_pool_heads or self.num_heads):
            raise ConfigError(f"embed_dim ({self.embed_dim}) must be divisible by attn_pool_heads "
                              f"({self.attn_pool_heads})")
        if self.pool != "map" and (self.attn_pool_heads, self.attn_pool_mlp_ratio) != (None, None):
            raise ConfigError("attn_pool_heads and attn_pool_mlp_ratio describe the attention pool, which only "
                              f"pool='map' has (pool is {self.pool!r})")
        if self.pool_include_prefix and self.pool in ("cls", "cls_mean"):
            raise ConfigError("pool_include_prefix=True says which tokens pool 'map' or 'mean' reads; pool "
                              f"{self.pool!r} reads the [CLS] token itself")
        if self.pool == "cls_mean" and self.use_fc_norm:
            raise ConfigError("pool='cls_mean' reads [CLS] and the mean patch token after the final norm, so it "
                              "takes no fc_norm")
        if self.patch_norm and self.embed_norm:
            raise ConfigError("patch_norm already has a norm after the patch projection; embed_norm adds the "
                              "norm after it alone, so give one of them")

    def _check_head(self) -> None:
        if self.head_hidden_dim is None and self.head_act != "tanh":
            raise ConfigError(f"head_act={self.head_act!r} is the activation of the head's hidden layer, which "
                              "only head_hidden_dim=... adds")
        if self.head_hidden_dim is None and not self.head_hidden_bias:
            raise ConfigError("head_hidden_bias=False describes the head's hidden layer, which only "
                              "head_hidden_dim=... adds")
        if self.distilled and (self.head_hidden_dim is not None or self.head_norm or self.head_l2norm):
            raise ConfigError("distilled=True has two linear heads; head_hidden_dim, head_norm and head_l2norm "
                              "describe one")

    def _check_rope(self) -> None:
        rope_fields = {f.name: f.default for f in dataclasses.fields(self) if f.name.startswith("rope_")}
        if self.rope == "none":
            said = [k for k, v in rope_fields.items() if getattr(self, k) != v]
            if said:
                raise ConfigError(f"{', '.join(said)} set{'s' if len(said) == 1 else ''} a rotary position "
                                  "embedding, but rope is 'none'; give rope='dinov3', 'axial' or 'mixed'")
            return
        head = self.head_dim
        if head % 4:
            raise ConfigError(f"rope={self.rope!r} rotates 2-d pairs of the head's channels along two axes, so the "
                              f"head width (attention width / num_heads = {head}) must be divisible by 4")
        check_ranges(self, "", {"rope_temperature": "(0, inf)"})
        wrong = {"rope_ref_grid": self.rope != "axial" and self.rope_ref_grid is not None,
                 "rope_normalize": self.rope != "dinov3" and self.rope_normalize != "separate",
                 "rope_bf16_periods": self.rope != "dinov3" and self.rope_bf16_periods,
                 "rope_grid_offset": self.rope == "mixed" and self.rope_grid_offset != 0}
        for key, bad in wrong.items():
            if bad:
                raise ConfigError(f"{key} does not apply to rope={self.rope!r}")
        if self.rope_ref_grid is not None:
            pair(self.rope_ref_grid, "rope_ref_grid")

    def relative_position_bias(self) -> dict | None:
        """The keyword arguments of each block's :class:`~vitkit.layers.RelativePositionBias` (None without one):
        ``rpb_kwargs`` completed from the architecture and checked against it. A 2-d bias covers the patch
        grid; a 1-d bias covers the patches (prefix tokens then get BEiT's three extra entries) or the whole
        sequence (prefix tokens are its first positions)."""
        if not self.use_relative_position:
            return None
        rb = self.rpb_kwargs or RelativeBias()
        if rb.num_heads not in (None, self.num_heads):
            raise ConfigError(f"rpb_kwargs num_heads ({rb.num_heads}) must equal num_heads ({self.num_heads})")
        grid, prefix = self.grid_size, self.num_prefix_tokens
        n = grid[0] * grid[1]
        kw = {"num_heads": self.num_heads, "bias_type": rb.bias_type, "init_std": rb.init_std}
        if rb.bias_type == "2d":
            window = kw["window_size"] = pair(rb.window_size or grid, "rpb_kwargs window_size")
            if window != grid:
                raise ConfigError(f"rpb_kwargs window_size {window} must match the patch grid {grid} "
                                  f"(img_size {self.img_size} / patch_size {self.patch_size})")
            kw["num_prefix_tokens"] = prefix
        else:
            seq = kw["seq_len"] = rb.seq_len or n
            if seq not in (n, n + prefix):
                raise ConfigError(f"rpb_kwargs seq_len ({seq}) must be the number of patches ({n}) or of all "
                                  f"tokens ({n + prefix})")
            kw["num_prefix_tokens"] = 0 if seq == n + prefix else prefix
        return kw

    def grid_size_of(self, img_size) -> tuple[int, int]:
        h, w = pair(img_size, "img_size")
        if h % self.patch_size or w % self.patch_size:
            raise ConfigError(f"img_size {img_size} must be divisible by patch_size {self.patch_size}")
        return (h // self.patch_size, w // self.patch_size)

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.grid_size_of(self.img_size)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + int(self.distilled) + self.reg_tokens

    @property
    def mlp_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def attn_width(self) -> int:
        """The width of q, k and v: ``attn_dim``, else ``embed_dim``."""
        return self.embed_dim if self.attn_dim is None else self.attn_dim

    @property
    def head_dim(self) -> int:
        """The width of one attention head."""
        return self.attn_width // self.num_heads

    @property
    def pooled_dim(self) -> int:
        """The width of the pooled representation: ``2 embed_dim`` for pool 'cls_mean', else ``embed_dim``."""
        return 2 * self.embed_dim if self.pool == "cls_mean" else self.embed_dim

    @property
    def num_features(self) -> int:
        """The width of what the classifier reads: ``head_hidden_dim``, else the pooled width."""
        return self.pooled_dim if self.head_hidden_dim is None else self.head_hidden_dim

    @property
    def attn_pool_dim(self) -> int:
        """The attention pool's MLP width: ``int(embed_dim * attn_pool_mlp_ratio)``, else the blocks' width."""
        return self.mlp_dim if self.attn_pool_mlp_ratio is None else int(self.embed_dim * self.attn_pool_mlp_ratio)

    @property
    def use_fc_norm(self) -> bool:
        return self.pool == "mean" if self.fc_norm is None else self.fc_norm

    @classmethod
    def from_dict(cls, data: dict, section: str = "model") -> "ViTConfig":
        """A validated config from plain data (YAML); the aliases of :func:`vitkit.compat.apply_aliases` accepted."""
        return from_dict(cls, apply_aliases(dict(data)), section)

    @classmethod
    def from_hf(cls, hf: Any, **overrides) -> "ViTConfig":
        """From a Hugging Face ``ViTConfig`` (object or dict): same architecture, HF's ``layer_norm_eps``."""
        d = hf.to_dict() if hasattr(hf, "to_dict") else dict(hf)
        act = _HF_ACTIVATIONS.get(d.get("hidden_act", "gelu"))
        if act is None:
            raise ConfigError(f"unsupported Hugging Face hidden_act {d['hidden_act']!r}; expected one of "
                              f"{', '.join(_HF_ACTIVATIONS)}")
        num_labels = len(d["id2label"]) if d.get("id2label") else d.get("num_labels", 0)
        kwargs = dict(
            img_size=d.get("image_size", 224), patch_size=d.get("patch_size", 16),
            in_channels=d.get("num_channels", 3), num_classes=num_labels, embed_dim=d.get("hidden_size", 768),
            depth=d.get("num_hidden_layers", 12), num_heads=d.get("num_attention_heads", 12),
            mlp_ratio=d.get("intermediate_size", 3072) / d.get("hidden_size", 768),
            qkv_bias=d.get("qkv_bias", True), drop_rate=d.get("hidden_dropout_prob", 0.0),
            attn_drop_rate=d.get("attention_probs_dropout_prob", 0.0), norm_eps=d.get("layer_norm_eps", 1e-12),
            act=act)
        kwargs.update(overrides)
        return cls(**kwargs)

    def replace(self, **changes) -> "ViTConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **apply_aliases(changes))

    def to_dict(self) -> dict:
        return to_dict(self)


_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                   "quick_gelu": "quick_gelu", "silu": "silu", "swish": "silu", "relu": "relu"}


def check_options(fields) -> None:
    """One ConfigError naming the names in ``fields`` that are no ViTConfig field (after the aliases)."""
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(ViTConfig)})
    if unknown:
        raise ConfigError(f"unknown model option(s) {', '.join(unknown)}; expected ViTConfig fields")
