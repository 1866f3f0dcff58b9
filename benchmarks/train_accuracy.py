"""Accuracy and wall time of the packaged training recipes, measured end to end as a user runs them.

    python benchmarks/train_accuracy.py                      # the default `vitkit train` (digits)
    python benchmarks/train_accuracy.py digits fashion-mnist --set report=false

Each recipe runs as ``vitkit train --config NAME`` in a fresh process (so start-up and data loading count),
in a temporary run folder. Prints a markdown table: recipe, test accuracy, best accuracy, epochs, training
time (results.json), wall time of the whole command, and the machine's load average before and after (the
CPU may be shared, which slows CPU runs a lot). Never run by CI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_recipe(name: str, sets: list[str], out_dir: Path) -> dict:
    command = [sys.executable, "-m", "vitkit", "train", "--config", name, "--set", f"out_dir={out_dir}",
               *[a for s in sets for a in ("--set", s)]]
    load_before = os.getloadavg()[0]
    t0 = time.time()
    proc = subprocess.run(command, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    results = json.loads((out_dir / name / "results.json").read_text())
    return {"recipe": name, "results": results, "wall": wall, "load": (load_before, os.getloadavg()[0]),
            "command": " ".join(["vitkit", *command[3:5], *[a for s in sets for a in ("--set", s)]])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", default=["digits"])
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override for every run")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.recipes:
            rows.append(run_recipe(name, args.sets, Path(tmp)))
    print(f"{os.cpu_count()} CPUs visible; load average is the 1-minute value before / after each run\n")
    print("| recipe | test accuracy | best accuracy | epochs | training s | command wall s | load before/after |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        res = r["results"]
        print(f"| {r['recipe']} | {res['test_accuracy']:.4f} | {res['best_accuracy']:.4f} | {res['epochs']} | "
              f"{res['wall_time']:.1f} | {r['wall']:.1f} | {r['load'][0]:.1f} / {r['load'][1]:.1f} |")


if __name__ == "__main__":
    main()
