"""Training images/s of the Fashion-MNIST recipe's model on the CPU, one speed change at a time.

    python benchmarks/cpu_train_step.py                 # 2 threads, batch 128, 7 rounds
    python benchmarks/cpu_train_step.py --threads 1 --rounds 9

Each variant is a full training step (forward, backward, gradient clipping, AdamW) of the 28x28, patch 7, dim 96,
depth 4 ViT on random images. The variants run in one process, in alternating windows, so a machine whose
speed drifts slows them all alike. Prints a markdown table: the median images/s over the rounds, and the ratio
to the first variant (the first session's recipe). Never run by CI.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch import nn

from vitkit import ViT

MODEL = dict(img_size=28, patch_size=7, in_channels=1, num_classes=10, embed_dim=96, depth=4, num_heads=4,
             mlp_ratio=2.0, pool="mean")

# name, model overrides, fused AdamW, patch embedding as a convolution in training too
VARIANTS = [
    ("fused attention, [CLS], conv patches, for-loop AdamW", dict(attn_impl="fused"), False, True),
    ("+ explicit attention", dict(attn_impl="explicit"), False, True),
    ("+ no [CLS] token", dict(attn_impl="explicit", class_token=False), False, True),
    ("+ patches as a matrix product", dict(attn_impl="explicit", class_token=False), False, False),
    ("+ fused AdamW (fashion-mnist.yaml)", dict(attn_impl="explicit", class_token=False), True, False),
]


def conv_patches(patch_embed):
    """The convolution path, even in training mode (what vitkit did before, and what timm does)."""
    return lambda x: patch_embed.proj(x).flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, N, D)


def build(overrides: dict, fused: bool, conv: bool):
    torch.manual_seed(0)
    model = ViT(**MODEL, **overrides).train()
    if conv:
        model.patch_embed.forward = conv_patches(model.patch_embed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05, fused=fused, foreach=False)
    return model, optimizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=8, help="training steps per timed window")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    images = torch.randn(args.batch_size, 1, 28, 28)
    labels = torch.randint(0, 10, (args.batch_size,))
    runs = [(name, *build(o, fused, conv), []) for name, o, fused, conv in VARIANTS]

    def step(model, optimizer):
        criterion(model(images), labels).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.rounds):
        for _, model, optimizer, rates in runs:
            for _ in range(2):  # warm caches
                step(model, optimizer)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(model, optimizer)
            rates.append(args.batch_size * args.steps / (time.perf_counter() - t0))

    medians = [sorted(r)[len(r) // 2] for *_, r in runs]
    print(f"CPU: {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
          f"batch {args.batch_size}, median of {args.rounds} windows of {args.steps} steps\n")
    print("| variant | images/s | vs first |\n| --- | ---: | ---: |")
    for (name, *_), rate in zip(runs, medians):
        print(f"| {name} | {rate:,.0f} | {rate / medians[0]:.2f} |")


if __name__ == "__main__":
    main()
