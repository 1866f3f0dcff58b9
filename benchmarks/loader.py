"""Images per second delivered for CIFAR-10 training batches of 512 with crop(pad 4) + flip + normalise.

Compares vitkit's DeviceLoader (whole set on the device as uint8, batched augmentation) with a
torch.utils.data.DataLoader over the same uint8 tensors with per-sample torchvision.transforms.v2
transforms in 2 worker processes. Prints a Markdown table (median of --repeats runs of --batches batches).

    VITKIT_DATA=/work/shared/data python benchmarks/loader.py [--device cpu] [--threads 1] [--batches 40]
"""

import argparse
import os
import platform
import statistics
import time

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from vitkit.data import BatchAugment, DeviceLoader, load_dataset


class PerSample(Dataset):
    """The same uint8 tensors, transformed one sample at a time as a classic pipeline does."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def timed(loader, batches, device):
    """Seconds to pull ``batches`` batches and have them on ``device`` (after one warm-up batch)."""
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        x, y = next(it)
        x = x.to(device, non_blocking=True)
        n += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, main process")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ds = load_dataset("cifar10", split="train")
    batch = 512
    results = {}

    aug = BatchAugment(crop_padding=4, hflip=True)
    dev_rates = []
    for r in range(args.repeats):
        loader = DeviceLoader(ds, batch, device=device, augment=aug, drop_last=True)
        loader.set_epoch(r)
        dev_rates.append(timed(loader, args.batches, device))
    results["DeviceLoader (batched crop+flip+normalise on device)"] = dev_rates

    tf = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize(list(ds.mean), list(ds.std))])
    per_rates = []
    for r in range(args.repeats):
        loader = DataLoader(PerSample(ds.images, ds.labels, tf), batch, shuffle=True, num_workers=args.workers,
                            drop_last=True, pin_memory=device.type == "cuda",
                            generator=torch.Generator().manual_seed(r))
        per_rates.append(timed(loader, args.batches, device))
        del loader
    results[f"DataLoader, per-sample v2 transforms, {args.workers} workers"] = per_rates

    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"CIFAR-10 train, batch {batch}, {args.batches} batches per run, median of {args.repeats} runs; "
          f"device {device} ({hw}); {os.cpu_count()} CPUs visible, {args.threads} torch threads in the main process; "
          f"torch {torch.__version__}\n")
    print("| loader | images/s (median) | runs |")
    print("| --- | ---: | --- |")
    for name, rates in results.items():
        print(f"| {name} | {statistics.median(rates):,.0f} | {', '.join(f'{r:,.0f}' for r in rates)} |")
    speedup = statistics.median(dev_rates) / statistics.median(per_rates)
    print(f"\nDeviceLoader / DataLoader: {speedup:.1f}x")


if __name__ == "__main__":
    main()
