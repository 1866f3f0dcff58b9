"""Train the NumPy ViT of vitkit.numpy_vit on a real data set: scikit-learn's handwritten digits.

    python examples/scratch_digits.py [--epochs 30] [--patch-size 2]

1,797 grey 8x8 images of the digits 0-9 (bundled with scikit-learn, no download), 80% for training and 20%
held out. With 4x4 patches an image is 4 tokens plus [CLS] (with ``--patch-size 2``, 16 tokens plus [CLS]).
Nothing but NumPy runs the model: the forward pass, the hand-written backward pass and the SGD updates all
come from vitkit.numpy_vit. See BENCHMARKS.md for the accuracy and time measured.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from vitkit.numpy_vit import ViTClassifier, accuracy, blas_threads, train_classifier


def load_data(seed: int = 0):
    """Digits as (N, 8, 8, 1) float32 images, standardised with the training set's mean and deviation."""
    digits = load_digits()
    images = digits.images.astype(np.float32)[..., None]  # (1797, 8, 8, 1), values 0..16
    train_x, test_x, train_y, test_y = train_test_split(images, digits.target, test_size=0.2,
                                                        stratify=digits.target, random_state=seed)
    mean, std = train_x.mean(), train_x.std()
    return (train_x - mean) / std, train_y, (test_x - mean) / std, test_y


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patch-size", type=int, default=4, choices=(2, 4))
    parser.add_argument("--dim-model", type=int, default=64)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--dim-ff", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    train_x, train_y, test_x, test_y = load_data(args.seed)
    model = ViTClassifier(image_size=8, patch_size=args.patch_size, in_channels=1, dim_model=args.dim_model,
                          num_heads=args.num_heads, dim_ff=args.dim_ff, num_layers=args.num_layers,
                          num_classes=10, rng=args.seed)
    print(f"digits: {len(train_x)} training and {len(test_x)} test images; NumPy ViT with "
          f"{sum(p.size for p in model.named_parameters().values()):,} parameters")

    def on_epoch(epoch: int, loss: float, lr: float) -> None:
        if epoch % 5 == 0 or epoch == args.epochs:
            print(f"epoch {epoch:3d}/{args.epochs}  train_loss {loss:.4f}  "
                  f"test_accuracy {accuracy(model, test_x, test_y):.4f}  ({time.perf_counter() - start:.1f} s)")

    with blas_threads(1):  # small matrices: one BLAS thread is fastest (see vitkit.numpy_vit.runner.blas_threads)
        train_loss = train_classifier(model, train_x, train_y, epochs=args.epochs, batch_size=args.batch_size,
                                      learning_rate=args.lr, rng=args.seed + 1, on_epoch=on_epoch)
        test_accuracy = accuracy(model, test_x, test_y)
    results = {"train_loss": train_loss, "test_accuracy": test_accuracy,
               "seconds": round(time.perf_counter() - start, 1)}
    print(f"test accuracy {results['test_accuracy']:.4f} in {results['seconds']} s")
    return results


if __name__ == "__main__":
    main()
