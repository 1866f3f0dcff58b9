"""``vitkit export``: a checkpoint to ONNX or torch.export (pt2), checked against the eager model."""

from __future__ import annotations

import argparse

from ..export import FORMATS, export


def main(argv: list[str] | None = None) -> int:
    """``vitkit export``: write the file, then print the parity check; exit 1 if it exceeds the tolerance."""
    parser = argparse.ArgumentParser(prog="vitkit export", description="Export a checkpoint to ONNX or "
                                     "torch.export (pt2) and check it against the eager model.")
    parser.add_argument("--checkpoint", required=True, help="run folder, RUN/checkpoints/best or a .safetensors file")
    parser.add_argument("--format", choices=list(FORMATS), default="onnx")
    parser.add_argument("--output", help="output file (default: the checkpoint's path with .onnx / .pt2)")
    parser.add_argument("--dynamic-batch", action="store_true", help="a symbolic batch dimension")
    parser.add_argument("--img-size", type=int, help="export for this input size (resamples the position "
                        "embedding)")
    parser.add_argument("--batch-size", type=int, default=1, help="the fixed batch size without --dynamic-batch")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest acceptable max abs difference")
    args = parser.parse_args(argv)
    path, diffs = export(args.checkpoint, args.format, args.output, args.dynamic_batch, args.img_size,
                         args.batch_size, args.opset)
    runtime = "onnxruntime" if args.format == "onnx" else "exported program"
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    worst = max(diffs.values())
    details = ", ".join(f"batch {b}: {d:.2e}" for b, d in diffs.items())
    verdict = "ok" if worst <= args.tolerance else f"FAILED (tolerance {args.tolerance:g})"
    print(f"parity ({runtime} vs eager, max abs difference): {details} -> {verdict}")
    return 0 if worst <= args.tolerance else 1
