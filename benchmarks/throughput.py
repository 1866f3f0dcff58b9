"""Sweep ViT-Ti/S/B/L (224 px, patch 16) through vitkit's benchmark, each against timm, and print one table.

    .venv/bin/python benchmarks/throughput.py --device cpu --threads 2            # the CPU plan below
    .venv/bin/python benchmarks/throughput.py --device cuda --compile             # the GPU plan, bf16

Each row is ``vitkit.benchmark.benchmark(...)``: vitkit and timm with the same weights, data and settings,
timed in alternating windows, with a matmul-peak window (the MFU denominator: its best window) after each round. The default
plans fit the device: on a 2-core CPU, Ti/16 in both modes and S/B/16 inference at small batches (L/16 is left
out: one step takes minutes there; ask for it with --models large); on a GPU, all four in both modes at
batches that fill an 80 GB card in bf16. ``--plan model:mode:batch,...`` replaces the plan.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from vitkit import benchmark as bm

NAMES = {"tiny": "vit_tiny_patch16_224", "small": "vit_small_patch16_224", "base": "vit_base_patch16_224",
         "large": "vit_large_patch16_224"}
# (model, mode, batch size)
CPU_PLAN = [("tiny", "infer", 32), ("tiny", "train", 16), ("small", "infer", 16), ("base", "infer", 8),
            ("large", "infer", 4)]
GPU_PLAN = [("tiny", "train", 256), ("small", "train", 256), ("base", "train", 256), ("large", "train", 64),
            ("tiny", "infer", 1024), ("small", "infer", 1024), ("base", "infer", 512), ("large", "infer", 256)]
CPU_DEFAULT_MODELS = "tiny,small,base"


def parse_plan(text: str) -> list[tuple[str, str, int]]:
    plan = []
    for item in text.split(","):
        try:
            model, mode, batch = item.split(":")
            plan.append((model, mode, int(batch)))
        except ValueError:
            raise SystemExit(f"throughput.py: error: plan item {item!r} is not model:mode:batch") from None
    return plan


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", choices=tuple(bm.DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile both libraries' models")
    p.add_argument("--compile-mode", choices=("default", "reduce-overhead", "max-autotune"), default=None,
                   help="torch.compile mode (implies --compile)")
    p.add_argument("--models", default=None, help="comma-separated subset of tiny,small,base,large")
    p.add_argument("--modes", default="train,infer")
    p.add_argument("--plan", default=None, help="model:mode:batch,... instead of the default plan")
    p.add_argument("--steps", type=int, default=None, help="steps per window (default: 1 CPU, 20 GPU)")
    p.add_argument("--windows", type=int, default=None, help="timed windows per library (default: 7 CPU, 5 GPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default: 1 CPU, 10 GPU)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--json", default=None, help="also write every report as JSON")
    args = p.parse_args(argv)

    dev = bm.resolve_device(args.device)
    gpu = dev.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = args.dtype or ("bf16" if gpu else "fp32")
    if args.plan:
        plan = parse_plan(args.plan)
    else:
        models = set((args.models or ("tiny,small,base,large" if gpu else CPU_DEFAULT_MODELS)).split(","))
        modes = set(args.modes.split(","))
        plan = [row for row in (GPU_PLAN if gpu else CPU_PLAN) if row[0] in models and row[1] in modes]
    steps = args.steps or (20 if gpu else 1)
    windows = args.windows or (5 if gpu else 7)
    warmup = args.warmup if args.warmup is not None else (10 if gpu else 1)

    rows, reports = [], []
    t0 = time.perf_counter()
    for model, mode, batch in plan:
        report = bm.benchmark(NAMES.get(model, model), mode, batch, dtype, args.compile or bool(args.compile_mode),
                              "timm", str(dev), steps, windows, warmup, compile_mode=args.compile_mode)
        rows += bm.table_rows(report)
        reports.append(report)
        print("\n".join(bm.table_rows(report)), file=sys.stderr, flush=True)  # progress
    print(bm.TABLE_HEADER)
    print(bm.TABLE_RULE)
    print("\n".join(rows))
    print()
    for r in reports:
        print(f"- {r.model} {r.mode}: {bm.format_conditions(r)}")
    diffs = [r.max_logit_diff for r in reports]
    print(f"max |logit difference| vitkit vs timm (same weights and input), per row: "
          f"{', '.join(f'{d:.1e}' for d in diffs)}; wall time {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.to_dict() for r in reports], f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
