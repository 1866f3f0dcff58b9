"""Peak memory and time of one training step (forward and backward) with and without gradient checkpointing.

    python benchmarks/grad_checkpointing.py                          # ViT-B/16 at 224, batch 64, CPU
    python benchmarks/grad_checkpointing.py --batch 16 --threads 2

Each way runs in a fresh process, so the peak resident set size (``getrusage``'s ``ru_maxrss``) is that step's
alone. "before the step" is the peak after building the model and the batch; the step's own memory is the
difference (activations kept for backward, gradients). Checkpointing keeps only each block's input and
recomputes the rest in backward: less memory for about one more forward pass. Prints a markdown table. Never
run by CI.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def one_step(args) -> dict:
    """Build the model and a random batch, then time one forward and backward; memory in MiB."""
    import torch
    import torch.nn.functional as F

    from vitkit import create_model

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.model, img_size=args.img_size).train()
    model.set_grad_checkpointing(args.checkpointing)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    y = torch.randint(0, model.num_classes, (args.batch,))
    before = peak_mib()
    start = time.perf_counter()
    F.cross_entropy(model(x), y).backward()
    seconds = time.perf_counter() - start
    return {"before": before, "peak": peak_mib(), "seconds": seconds, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: PyTorch's default")
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)  # the child's switch
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_step(args)))
        return

    own = sys.argv[1:]
    rows = []
    for checkpointing in (False, True):
        cmd = [sys.executable, __file__, *own, "--child"] + (["--checkpointing"] if checkpointing else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append((checkpointing, json.loads(out.strip().splitlines()[-1])))

    print(f"`python benchmarks/{' '.join(['grad_checkpointing.py', *own])}`: {args.model} at {args.img_size}, "
          f"batch {args.batch}, one forward + backward on the CPU ({platform.processor() or platform.machine()}, "
          f"{rows[0][1]['threads']} threads), each in a fresh process\n")
    print("| grad checkpointing | peak RSS (MiB) | before the step (MiB) | step's own (MiB) | time (s) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for checkpointing, r in rows:
        print(f"| {'on' if checkpointing else 'off'} | {r['peak']:.0f} | {r['before']:.0f} | "
              f"{r['peak'] - r['before']:.0f} | {r['seconds']:.1f} |")
    off, on = rows[0][1], rows[1][1]
    print(f"\nCheckpointing: step memory x{(on['peak'] - on['before']) / (off['peak'] - off['before']):.2f}, "
          f"time x{on['seconds'] / off['seconds']:.2f}.")


if __name__ == "__main__":
    main()
