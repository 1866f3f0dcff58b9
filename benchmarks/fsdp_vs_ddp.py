"""Median training-step time of FSDP2 (``train.strategy: fsdp``) against DDP, on 2 gloo processes (the CPU).

    OMP_NUM_THREADS=1 PYTHONPATH=src python -m torch.distributed.run --standalone --nproc_per_node=2 \\
        benchmarks/fsdp_vs_ddp.py                       # ViT-Ti (dim 192, depth 12) at 32 px, patch 4
    ... benchmarks/fsdp_vs_ddp.py --steps 30 --rounds 3 --batch 16

Both strategies train the same model (vitkit's sharding for fsdp, DistributedDataParallel for ddp) with the
trainer's AdamW and gradient clipping on random batches of ``--batch`` images per process. Each round times
``--steps`` steps after 3 warm-up steps; the figure is the median step of every round, and the table shows the
median over rounds. On the CPU FSDP is expected to be slower (it gathers every block's weights in forward and
again in backward, and reduce-scatters instead of one all-reduce); it pays off where a model does not fit one
GPU. Rank 0 prints a markdown table. Never run by CI.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist
from torch import nn

from vitkit import VisionTransformer, get_preset
from vitkit.train.config import OptimConfig
from vitkit.train.optim import build_optimizer
from vitkit.train.sharding import shard


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=16, help="images per process")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--patch-size", type=int, default=4)
    return p.parse_args()


def build(strategy: str, args) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model (the same initial weights on every rank and for both strategies) and its optimizer."""
    torch.manual_seed(0)
    model = VisionTransformer(get_preset("vit_tiny_patch16_224", img_size=args.img_size,
                                         patch_size=args.patch_size, in_channels=3, num_classes=10))
    if strategy == "fsdp":
        shard(model, torch.device("cpu"))
        wrapped = model
    else:
        wrapped = nn.parallel.DistributedDataParallel(model)
    return wrapped, build_optimizer(model, OptimConfig(), torch.device("cpu"))


def round_median(model, optimizer, args) -> float:
    """The median seconds of ``args.steps`` timed steps (after 3 warm-up steps)."""
    images = torch.randn(args.batch, 3, args.img_size, args.img_size)
    labels = torch.randint(0, 10, (args.batch,))
    times = []
    for i in range(3 + args.steps):
        dist.barrier()
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        dist.barrier()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    args = parse()
    dist.init_process_group("gloo")
    results = {}
    for strategy in ("ddp", "fsdp"):
        model, optimizer = build(strategy, args)
        results[strategy] = [round_median(model, optimizer, args) for _ in range(args.rounds)]
    if dist.get_rank() == 0:
        print(f"ViT-Ti (dim 192, depth 12) at {args.img_size} px, patch {args.patch_size}, batch {args.batch} per "
              f"process, {dist.get_world_size()} gloo processes, torch {torch.__version__}, "
              f"{torch.get_num_threads()} thread(s) each; median of {args.steps} steps, median of {args.rounds} rounds")
        print("| strategy | median step (ms) | rounds (ms) |")
        print("|---|---|---|")
        for strategy, medians in results.items():
            print(f"| {strategy} | {statistics.median(medians) * 1e3:.1f} | "
                  f"{', '.join(f'{m * 1e3:.1f}' for m in medians)} |")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
