"""Image and patch-grid sizes: the ground floor that the config, the layers, the data and the plots share."""

from __future__ import annotations

from .errors import ConfigError


def pair(value, name: str = "img_size") -> tuple[int, int]:
    """An int or an (h, w) pair as (h, w) of positive ints; anything else is a ConfigError naming ``name``."""
    size = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        h, w = size
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a positive int or (height, width), got {value!r}") from None
    if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in (h, w)):
        raise ConfigError(f"{name} must be a positive int or (height, width), got {value!r}")
    return (h, w)
