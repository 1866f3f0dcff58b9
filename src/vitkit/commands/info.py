"""``vitkit models`` and ``vitkit config``: the named architectures, and every config key."""

from __future__ import annotations

import argparse
import sys


def models(argv: list[str] | None = None) -> int:
    from ..presets import PRESETS, licence_of, list_models
    parser = argparse.ArgumentParser(prog="vitkit models", description="List the named architectures "
                                     "(with the licence of the weights each name loads by default).")
    parser.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'vit_base_*'; a plain "
                        "word (no * ? or [) matches names that contain it, e.g. dinov2")
    args = parser.parse_args(argv)
    plain = not any(c in args.pattern for c in "*?[")
    names = list_models(f"*{args.pattern}*" if plain else args.pattern)
    if not names:
        print(f"vitkit models: no architecture matches {args.pattern!r}; the names are vit_<size>_patch<p>_<img> "
              "(size tiny, small, medium, base, large, huge or giant), e.g. 'vit_base_*'", file=sys.stderr)
        return 1
    width = max(len(n) for n in names)  # the columns line up whatever the longest name
    for name in names:
        p = PRESETS[name]
        rope = p.get("rope", "none")
        print(f"{name:<{width}}  dim={p['embed_dim']:<5} depth={p['depth']:<3} heads={p['num_heads']:<3} "
              f"img={p['img_size']:<4} {'rope=' + rope if rope != 'none' else '':<11} "
              f"weights: {licence_of(name)}".rstrip())
    return 0


def config(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="vitkit config", description="Print the reference of every config key of "
                            "'vitkit train' (the same text as docs/config.md).").parse_args(argv)
    from ..train.config import reference
    print(reference(), end="")
    return 0
