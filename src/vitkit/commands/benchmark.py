"""``vitkit benchmark``: training or inference throughput of a named model, optionally against timm."""

from __future__ import annotations

import argparse

import torch

from ..errors import ConfigError
from .. import benchmark as bm
from .args import positive


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as a ConfigError: one sentence and exit 2 from the vitkit CLI."""

    def error(self, message):
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vitkit benchmark", description="Measure training or inference throughput of a ViT, "
                "optionally against timm's same model run alternately in the same process.")
    p.add_argument("--model", default="vit_base_patch16_224", help="preset name (see 'vitkit models')")
    p.add_argument("--mode", choices=bm.MODES, default="infer",
                   help="train: forward + backward + AdamW step; infer: forward under inference_mode")
    p.add_argument("--batch-size", type=positive, default=32)
    p.add_argument("--dtype", choices=tuple(bm.DTYPES), default=None,
                   help="fp32, or bf16 autocast (default: bf16 on CUDA, fp32 on the CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (both, when comparing)")
    p.add_argument("--compile-mode", choices=("default", "reduce-overhead", "max-autotune"), default=None,
                   help="torch.compile mode (implies --compile)")
    p.add_argument("--compare", choices=("timm",), default=None, help="also run timm's same model")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--steps", type=positive, default=None, help="steps per timed window (default: 2 CPU, 20 GPU)")
    p.add_argument("--windows", type=positive, default=5, help="timed windows per library (the median is reported)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 2 CPU, 10 GPU)")
    p.add_argument("--threads", type=positive, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--json", default=None, help="also write the report as JSON to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    """``vitkit benchmark ...``: print one Markdown table and the conditions; 0 on success."""
    args = build_parser().parse_args(argv)
    if args.warmup is not None and args.warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {args.warmup}")
    dev = bm.resolve_device(args.device)
    gpu = dev.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    report = bm.benchmark(args.model, args.mode, args.batch_size, args.dtype or ("bf16" if gpu else "fp32"),
                       args.compile or args.compile_mode is not None, args.compare, str(dev),
                       args.steps or (20 if gpu else 2), args.windows,
                       args.warmup if args.warmup is not None else (10 if gpu else 2), compile_mode=args.compile_mode)
    print(bm.format_report(report))
    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
    return 0
