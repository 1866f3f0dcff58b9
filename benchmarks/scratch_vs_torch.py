"""Forward + backward time of the NumPy ViT (vitkit.numpy_vit) against the same network in PyTorch, on the CPU.

    python benchmarks/scratch_vs_torch.py [--threads 1] [--batch-size 64] [--repeats 30]

Both models hold the same float32 weights (copied with ``torch_state_dict``) and see the same batch. A step
is forward, cross-entropy and backward; "train step" adds the SGD update (NumPy does it inside ``backward``,
PyTorch with ``torch.optim.SGD``). Times are the best of ``--repeats`` steps after warm-up (the least
disturbed by other work on the machine). NumPy's BLAS and PyTorch both use ``--threads`` threads (1 is what
``vitkit scratch`` trains with). Not a test: run it by hand and copy the table into
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

import vitkit
from vitkit.numpy_vit import ViTClassifier

CONFIGS = {  # name: ViTClassifier arguments
    "scratch.yaml (16px, P4, D64, 2 layers)": dict(image_size=16, patch_size=4, in_channels=3, dim_model=64,
                                                   num_heads=4, dim_ff=128, num_layers=2, num_classes=10),
    "scratch_digits.py (8px, P4, D64, 2 layers)": dict(image_size=8, patch_size=4, in_channels=1, dim_model=64,
                                                       num_heads=4, dim_ff=128, num_layers=2, num_classes=10),
    "32px, P4, D128, 4 layers": dict(image_size=32, patch_size=4, in_channels=3, dim_model=128, num_heads=4,
                                     dim_ff=256, num_layers=4, num_classes=10),
}


def best_seconds(steps: dict, repeats: int, warmup: int = 5) -> dict:
    """The best time of each step over ``repeats`` rounds; the steps take turns, so that a burst of other
    work on the machine slows both rather than one."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def bench(cfg: dict, batch_size: int, repeats: int) -> dict:
    model = ViTClassifier(**cfg, rng=0)
    torch_model = vitkit.VisionTransformer(**model.torch_config())
    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in model.torch_state_dict().items()})
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch_size, cfg["image_size"], cfg["image_size"], cfg["in_channels"]))
    images = images.astype(np.float32)
    labels = rng.integers(0, cfg["num_classes"], batch_size)
    torch_images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    torch_labels = torch.from_numpy(labels)
    optimizer = torch.optim.SGD(torch_model.parameters(), lr=0.0)

    def numpy_step(lr: float) -> None:
        _, grad = ViTClassifier.cross_entropy_loss(model.forward(images), labels)
        model.backward(grad, lr)

    def torch_step(update: bool) -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(torch_model(torch_images), torch_labels).backward()
        if update:
            optimizer.step()

    out = {}
    for kind, np_step, pt_step in (("fwd+bwd", lambda: numpy_step(0.0), lambda: torch_step(False)),
                                   ("train step", lambda: numpy_step(1e-6), lambda: torch_step(True))):
        best = best_seconds({"numpy": np_step, "torch": pt_step}, repeats)
        out[kind] = (best["numpy"], best["torch"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} visible cores; "
          f"threads: {args.threads}; batch {args.batch_size}; numpy {np.__version__}, torch {torch.__version__}")
    print()
    print("| model | step | NumPy ms | PyTorch ms | NumPy / PyTorch |")
    print("| --- | --- | ---: | ---: | ---: |")
    with threadpool_limits(args.threads, user_api="blas"):
        for name, cfg in CONFIGS.items():
            for kind, (np_s, pt_s) in bench(cfg, args.batch_size, args.repeats).items():
                print(f"| {name} | {kind} | {np_s * 1e3:.2f} | {pt_s * 1e3:.2f} | {np_s / pt_s:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
