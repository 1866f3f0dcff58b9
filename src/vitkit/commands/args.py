"""What the commands share: argument types, and the one way they load a checkpoint for inference."""

from __future__ import annotations

import argparse


def positive(text: str) -> int:
    value = integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative(text: str) -> int:
    value = integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def load_predictor(checkpoint: str, device: str):
    from ..predictor import Predictor
    from ..train.distributed import pick_device
    return Predictor.load(checkpoint, pick_device(device, no_gpu="use --device cpu (or auto)"))
