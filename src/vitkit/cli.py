"""``vitkit`` command line: one sub-command per job, each a ``main(argv) -> int`` in its own module.

Sub-command modules are imported only when used, so ``vitkit --help`` is instant. Every exception that reaches
here is either a person's error or a bug. A :class:`VitkitError` (bad config, file, image or checkpoint), a
full disk, a denied permission, a read-only folder or memory running out is printed as one sentence and
exits 2, without a traceback. Anything else is a bug: one line says so and where its traceback was saved, and the exit code is 1.
A warning (a resume falling back to the previous checkpoint, say) is one line too. An error's first line is
its sentence; a few carry details on the lines after it (tensors no rule places, grouped by block, and a
ready-to-edit rules table), printed as they are.
"""

from __future__ import annotations

import errno
import importlib
import os
import re
import sys
import tempfile
import time
import traceback
import warnings

COMMANDS = {  # name: (module:function, one-line help)
    "train": ("vitkit.commands.train:main", "train a model from a config (no arguments: the digits recipe)"),
    "eval": ("vitkit.commands.eval:main", "evaluate a checkpoint on its run's splits: loss, top-1/top-5, confusion"),
    "predict": ("vitkit.commands.predict:main", "top-k classes of images and folders, or their embeddings"),
    "features": ("vitkit.commands.features:main", "write a checkpoint's embeddings of a data set or images (cached)"),
    "knn": ("vitkit.commands.knn:main", "k-NN accuracy of frozen features (DINO's weighted vote)"),
    "probe": ("vitkit.commands.probe:main", "a linear probe on frozen features, written as a run folder"),
    "zeroshot-head": ("vitkit.commands.zeroshot:main",
                      "a CLIP/SigLIP image tower with a zero-shot head for class names"),
    "visualize": ("vitkit.commands.visualize:main",
                  "attention, rollout, patch and feature views; run curves and mistakes"),
    "inspect": ("vitkit.commands.inspect:main", "how vitkit reads weights: layout, placements, what is unplaced"),
    "convert": ("vitkit.commands.convert:main", "write a foreign weights file (with --rules) as a vitkit checkpoint"),
    "export": ("vitkit.commands.export:main", "export a checkpoint to ONNX or torch.export (pt2)"),
    "serve": ("vitkit.commands.serve:main", "serve a checkpoint over HTTP: predictions, attention, and a web page"),
    "shard": ("vitkit.commands.shard:main", "write a data set as WebDataset tar shards with an index.json"),
    "benchmark": ("vitkit.commands.benchmark:main", "measure training or inference throughput (vs timm)"),
    "scratch": ("vitkit.numpy_vit.runner:main", "train the NumPy ViT of vitkit.numpy_vit from a YAML config"),
    "models": ("vitkit.commands.info:models", "list the named architectures"),
    "config": ("vitkit.commands.info:config", "every config key of vitkit train: type, default and meaning"),
}


def usage() -> str:
    lines = ["usage: vitkit COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<14} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'vitkit COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from .errors import VitkitError, is_out_of_memory

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):  # bare 'vitkit' explains itself
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
    format_warning = warnings.formatwarning
    warnings.formatwarning = lambda message, *_args, **_kw: f"vitkit {name}: warning: {message}\n"
    try:
        return int(getattr(importlib.import_module(module), func)(rest) or 0)
    except VitkitError as e:
        print(f"vitkit {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vitkit {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`vitkit models | head`): stop quietly, as SIGPIPE would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141
    except OSError as e:
        sentence = os_error_sentence(e)
        if sentence is None:
            return report_bug(name, e)
        print(f"vitkit {name}: error: {sentence}", file=sys.stderr)
        return 2
    except Exception as e:  # not a person's error: a bug, reported as one (unless memory ran out)
        if is_out_of_memory(e):
            keys = {"train": " (model.embed_dim, model.depth, data.batch_size)", "serve": " (--max-batch)",
                    "eval": " (--batch-size)", "predict": " (--batch-size)"}.get(name, "")
            print(f"vitkit {name}: error: the machine ran out of memory ({first_line(e)}); nothing already saved "
                  f"was changed: use a smaller model or batch{keys}", file=sys.stderr)
            return 2
        return report_bug(name, e)
    finally:
        warnings.formatwarning = format_warning


PERSON_ERRNOS = {errno.ENOSPC: "no space is left on the device", errno.EDQUOT: "the disk quota is exhausted",
                 errno.EACCES: "permission was denied", errno.EPERM: "the operation is not permitted",
                 errno.EROFS: "the file system is read-only", errno.ENOTDIR: "a path component is a file, not a folder",
                 errno.EEXIST: "a file is in the way", errno.ENOENT: "a file or folder does not exist",
                 errno.EISDIR: "a folder is where a file was expected", errno.ENAMETOOLONG: "the file name is too long"}


def os_error_sentence(e: OSError) -> str | None:
    """One sentence for the operating-system errors a person causes and can fix, or None."""
    what = PERSON_ERRNOS.get(e.errno)
    if what is None:
        return None
    where = f" for {e.filename}" if e.filename else ""
    return f"{what}{where}; nothing already saved was changed ({e.strerror or e})"


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, without the C++ allocator's ``[enforce fail at ...]``."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return re.sub(r"^\[enforce fail at [^\]]*\]\s*", "", text)[:200]


def report_bug(command: str, e: BaseException) -> int:
    """Save the traceback to a file and say that this is vitkit's fault, in one line; exit code 1."""
    text = "".join(traceback.format_exception(e))
    try:
        fd, path = tempfile.mkstemp(prefix=f"vitkit-{command}-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        where = f"its traceback is in {path}"
    except OSError:
        where = "its traceback follows"
        sys.stderr.write(text)
    print(f"vitkit {command}: internal error ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
          f"this is a bug in vitkit, please report it; {where}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
