"""A run's model from ``model.init`` weights (fine-tuning): the architecture is the weights', the data decides
the head and the image size, and weights that cannot become the run's model are one sentence naming what
differs and what to change."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ViTConfig
from ..geometry import pair
from ..errors import CheckpointError, ConfigError, is_out_of_memory
from ..model import VisionTransformer

# Model keys a fine-tune may set on top of any weights: they change no parameter's shape.
SHAPE_FREE_KEYS = {"drop_rate", "drop_path_rate", "attn_drop_rate", "attn_impl", "num_heads", "act", "norm_eps"}


def model_from_init(init: str, section: dict, *, in_channels: int, num_classes: int, img_size) -> VisionTransformer:
    """The weights ``init`` with a head of ``num_classes`` at ``img_size``, plus the run's model ``section``
    keys (other than name, init and the data's three). Checked: the weights take the data's ``in_channels``,
    and their patches tile its images."""
    wanted = _Wanted(in_channels, num_classes, img_size)
    overrides = {k: v for k, v in section.items() if k not in ("name", "init", "num_classes", "img_size", "in_channels")}
    shaping = {k: v for k, v in overrides.items() if k not in SHAPE_FREE_KEYS}
    try:
        model = VisionTransformer.from_pretrained(init, num_classes=wanted.num_classes, img_size=wanted.img_size,
                                                  **overrides)
    except CheckpointError as e:
        if not shaping:
            raise
        raise CheckpointError(f"{e}; the run's model section sets {_shown(shaping)} on top of the weights (a "
                              f"recipe for training from scratch?): {FINETUNE_HINT}") from None
    except ConfigError:  # e.g. the run's image size is no multiple of the weights' patch: say which and why
        better = mismatch(init, wanted, shaping, fixes_only=True)
        if better is None:  # not a mismatch of the weights and the data: the sentence as it is
            raise
        raise better from None
    except RuntimeError as e:  # the weights' tensors cannot be reshaped to the run's grid or widths
        if is_out_of_memory(e):
            raise
        raise mismatch(init, wanted, shaping) from None
    if model.config.in_channels != wanted.in_channels:
        raise mismatch(init, wanted, shaping, model.config)
    return model


@dataclass
class _Wanted:
    """What the run's data decide of the model."""

    in_channels: int
    num_classes: int
    img_size: int | tuple[int, int]


def mismatch(init: str, wanted: _Wanted, shaping: dict, own: ViTConfig | None = None, *,
             fixes_only: bool = False) -> CheckpointError | None:
    """One sentence: the architecture of the weights, what the run's data (and model section) ask for, and
    what to change (with ``fixes_only``, None when the weights fit the data's channels and image size)."""
    if own is None:
        try:
            own = VisionTransformer.from_pretrained(init).config  # the weights as they are
        except Exception as e:  # noqa: BLE001  (they do not load even alone: say so)
            return None if fixes_only else CheckpointError(f"model.init {init} cannot be made this run's model "
                                                           f"({_first_line(e)})")
    (h, w), (H, W) = pair(own.img_size), pair(wanted.img_size)
    asks = f"{wanted.in_channels}-channel {H}x{W} images"
    if shaping:
        asks += f" and its model section sets {_shown(shaping)} on top of them (a recipe for training from scratch?)"
    fixes = []
    if own.in_channels != wanted.in_channels:
        fixes.append(f"set data.channels={own.in_channels} (the weights' channels)")
    if H % own.patch_size or W % own.patch_size:
        fixes.append(f"set data.img_size to a multiple of {own.patch_size} (such as {h})")
    if fixes_only and not fixes:  # the weights fit the data: the caller's own sentence is the better one
        return None
    if shaping:
        fixes.append(FINETUNE_HINT)
    return CheckpointError(f"model.init {init} is a ViT of {own.in_channels}-channel {h}x{w} images in "
                           f"{own.patch_size}-pixel patches (embed_dim {own.embed_dim}, depth {own.depth}), but "
                           f"this run has {asks}; " + ("; ".join(fixes) or "use weights of this architecture"))


FINETUNE_HINT = ("use a finetune-* recipe (finetune-clip, finetune-dinov2, finetune-dinov3, finetune-siglip) or drop "
                 "those keys")


def _shown(keys: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in keys.items())


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
