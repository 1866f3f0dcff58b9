"""``vitkit`` command line: one sub-command per job, each a ``main(argv) -> int`` in its own module.

Sub-command modules are imported only when used, so ``vitkit --help`` is instant. A :class:`VitkitError`
(bad config, file, image or checkpoint) is printed as one sentence and exits 2, without a traceback.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {  # name: (module:function, one-line help)
    "train": ("vitkit.train.cli:train_main", "train a model from a config (no arguments: the digits recipe)"),
    "eval": ("vitkit.train.cli:eval_main", "evaluate a checkpoint: loss, top-1/top-5, confusion matrix"),
    "predict": ("vitkit.train.cli:predict_main", "top-k classes of images with a checkpoint"),
    "visualize": ("vitkit.visualize:cli_main", "attention, rollout and patch views; run curves and mistakes"),
    "export": ("vitkit.export:cli_main", "export a checkpoint to ONNX or torch.export (pt2)"),
    "benchmark": ("vitkit.benchmark:cli_main", "measure training or inference throughput (vs timm)"),
    "scratch": ("vitkit.scratch.runner:main", "train the NumPy ViT of vitkit.scratch from a YAML config"),
    "models": ("vitkit.cli:models_main", "list the named architectures"),
}


def usage() -> str:
    lines = ["usage: vitkit COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'vitkit COMMAND --help' for a command's options."]
    return "\n".join(lines)


def models_main(argv: list[str] | None = None) -> int:
    import argparse

    from .config import PRESETS, list_models
    parser = argparse.ArgumentParser(prog="vitkit models", description="List the named architectures.")
    parser.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'vit_base_*'")
    args = parser.parse_args(argv)
    for name in list_models(args.pattern):
        p = PRESETS[name]
        print(f"{name:<28} dim={p['embed_dim']:<5} depth={p['depth']:<3} heads={p['num_heads']:<3} "
              f"img={p['img_size']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .errors import VitkitError

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        if not argv:  # the README's main command is 'vitkit train'; bare 'vitkit' explains itself
            print(usage())
            return 0
        print(usage())
        return 0
    if argv[0] == "--version":
        from . import __version__
        print(f"vitkit {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"vitkit: unknown command {name!r}; expected one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module, func = COMMANDS[name][0].split(":")
    try:
        return int(getattr(importlib.import_module(module), func)(rest) or 0)
    except VitkitError as e:
        print(f"vitkit {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vitkit {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
