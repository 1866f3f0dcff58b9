"""Throughput benchmark: images/s, ms per step, achieved TFLOP/s, MFU and peak memory, against timm.

A *step* is one forward pass under ``torch.inference_mode`` (``mode="infer"``) or forward + cross-entropy
backward + AdamW step (``mode="train"``), on synthetic data already on the device. Models being compared are
timed **alternately in the same process** in short windows (the order flips every window), after a warm-up,
and each reports the median of its windows, so that a machine shared with other work slows both alike.

FLOPs come from :func:`vitkit.flops_per_image` (the standard ViT formula, 2 FLOPs per multiply-add; training
counts 3x the forward). MFU divides the achieved rate by a matmul peak measured on the same device and dtype
(:func:`measure_matmul_peak`), not by a datasheet figure.

    >>> report = benchmark("vit_tiny_patch16_224", mode="infer", batch_size=32, compare="timm", device="cpu")
    >>> print(format_report(report))

On CUDA: ``dtype="bf16"`` runs under bf16 autocast, timing uses CUDA events, AdamW is the fused kernel, and
peak memory is ``torch.cuda.max_memory_allocated`` during the model's own warm-up, less what was allocated
before the model was built (so the other model's memory is not counted).
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MODES = ("train", "infer")
QUIET = 0.8  # a window at >= 80% of its library's best rate counts as uncontended (shared machines)
LIBRARIES = ("vitkit", "timm")


@dataclass
class Measurement:
    """One library's figures for one model, mode and setting."""

    library: str
    images_per_s: float  # median over the timed windows
    ms_per_step: float  # median over the timed windows
    tflops: float  # achieved: images/s x FLOPs per image (3x forward when training)
    mfu: float  # tflops / the measured matmul peak
    peak_memory_mb: float | None  # None on CPU (no reliable per-model figure there)
    window_images_per_s: list[float] = field(default_factory=list)


@dataclass
class Report:
    """Everything one benchmark run measured, and the conditions it ran under."""

    model: str
    mode: str
    device: str
    dtype: str
    batch_size: int
    compiled: bool
    steps_per_window: int
    windows: int
    warmup_steps: int
    fwd_gflops_per_image: float
    peak_tflops: float  # measured dense matmul peak, same device and dtype
    results: list[Measurement]
    ratio: float | None = None  # vitkit images/s / timm images/s (medians)
    paired_ratios: list[float] = field(default_factory=list)  # per window: vitkit / timm, adjacent in time
    paired_ratio: float | None = None  # their median: robust when the machine's load drifts during the run
    quiet_ratio: float | None = None  # median over the pairs where both windows ran at >= 80% of their best rate
    quiet_pairs: int = 0  # how many such uncontended pairs there were
    max_logit_diff: float | None = None  # same weights, same input: how far apart the two models' logits are
    compile_mode: str | None = None
    conditions: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------------------
# Device helpers


def resolve_device(device: str | None) -> torch.device:
    """``None`` picks CUDA when present, else the CPU; asking for CUDA without one is a ConfigError."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("CUDA was asked for but this machine has no usable CUDA device; use --device cpu")
    return torch.device(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_calls(fn, calls: int, device: torch.device) -> float:
    """Seconds taken by ``calls`` calls of ``fn``: CUDA events on a GPU, the wall clock on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return time.perf_counter() - t0


class MatmulPeak:
    """Dense matmul FLOP/s of a device in a dtype, measured in short windows that can be interleaved with the
    model's windows: ``window()`` times one, ``flops`` is the best so far (the ceiling MFU is measured against,
    so the best window rather than the median; on a shared machine the best window is the uncontended one).

    Defaults: 8192^2 bf16 on a GPU (about 1.1 TFLOP a call), 1024^2 on the CPU (2.1 GFLOP a call).
    """

    def __init__(self, device: torch.device, dtype: torch.dtype, size: int | None = None, calls: int | None = None):
        gpu = device.type == "cuda"
        self.device, self.size = device, size or (8192 if gpu else 1024)
        self.calls = calls or (20 if gpu else 4)
        self.a = torch.randn(self.size, self.size, device=device, dtype=dtype)
        self.b = torch.randn(self.size, self.size, device=device, dtype=dtype)
        self.out = torch.empty(self.size, self.size, device=device, dtype=dtype)
        self.flops = 0.0
        _time_calls(self._mm, 2, device)  # warm-up: cuBLAS / oneDNN heuristics, caches

    def _mm(self):
        torch.mm(self.a, self.b, out=self.out)

    def window(self) -> float:
        rate = 2 * self.size**3 * self.calls / _time_calls(self._mm, self.calls, self.device)
        self.flops = max(self.flops, rate)
        return rate


def measure_matmul_peak(device: torch.device, dtype: torch.dtype, size: int | None = None, calls: int | None = None,
                        windows: int = 5) -> float:
    """Dense matmul FLOP/s of this device in ``dtype``: the best of ``windows`` windows (see MatmulPeak)."""
    peak = MatmulPeak(device, dtype, size, calls)
    for _ in range(windows):
        peak.window()
    return peak.flops


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def conditions(device: torch.device) -> dict:
    """Hardware, software and load: what a reader needs to judge the figures."""
    import importlib.metadata as md

    info = {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "threads": torch.get_num_threads(), "cpu": _cpu_name(), "cpu_count": os.cpu_count()}
    for pkg in ("vitkit", "timm"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = None
    if hasattr(os, "getloadavg"):
        info["loadavg_1min"] = round(os.getloadavg()[0], 2)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


# ----------------------------------------------------------------------------------------------------------------
# Models and steps


# Config fields that timm's VisionTransformer takes under the same name, so a shrunken preset can be compared.
TIMM_OVERRIDES = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "num_classes",
                  "qkv_bias")


def build_model(library: str, name: str, device: torch.device, state_dict: dict | None = None,
                **overrides) -> nn.Module:
    """vitkit's or timm's model of this (timm) name on ``device``, optionally with given weights (in the
    library's own keys, so both libraries can run the very same network). ``overrides`` change the preset
    (timm: TIMM_OVERRIDES)."""
    if library == "vitkit":
        from .pretrained import create_model
        model = create_model(name, **overrides)
    elif library == "timm":
        try:
            import timm
        except ImportError:
            raise ConfigError("comparing with timm needs timm installed (pip install timm)") from None
        unknown = sorted(set(overrides) - set(TIMM_OVERRIDES))
        if unknown:
            raise ConfigError(f"override(s) {', '.join(unknown)} cannot be passed to timm; compare with only "
                              f"{', '.join(TIMM_OVERRIDES)}")
        model = timm.create_model(name, pretrained=False, **overrides)
    else:
        raise ConfigError(f"library must be one of {', '.join(LIBRARIES)}, got {library!r}")
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    return model.to(device)


class Runner:
    """One model's step on fixed synthetic data: ``step()`` runs one training or inference step."""

    def __init__(self, library: str, model: nn.Module, mode: str, batch_size: int, device: torch.device,
                 dtype: torch.dtype, compile: bool = False, img_size: int = 224, num_classes: int = 1000,
                 seed: int = 0, compile_mode: str | None = None):
        self.library, self.mode, self.device, self.dtype = library, mode, device, dtype
        gen = torch.Generator().manual_seed(seed)  # the same images for every library
        self.images = torch.randn(batch_size, 3, img_size, img_size, generator=gen).to(device)
        # a headless backbone (num_classes 0) trains on the mean square of its pooled features
        self.labels = torch.randint(0, num_classes, (batch_size,), generator=gen).to(device) if num_classes else None
        self.model = model.train(mode == "train")
        self.forward = torch.compile(model, mode=compile_mode) if compile else model
        self.optimizer = None
        if mode == "train":  # fused AdamW on a GPU (one kernel for all parameters); foreach elsewhere
            self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05,
                                               fused=device.type == "cuda")

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def step(self) -> None:
        if self.mode == "infer":
            with torch.inference_mode(), self._autocast():
                self.forward(self.images)
            return
        with self._autocast():
            out = self.forward(self.images)
            loss = F.cross_entropy(out, self.labels) if self.labels is not None else out.float().pow(2).mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def window(self, steps: int) -> float:
        """Seconds for ``steps`` steps, synchronised at both ends."""
        return _time_calls(self.step, steps, self.device)


def _max_logit_diff(a: nn.Module, b: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> float:
    """Largest absolute difference of the two models' logits on images ``x`` (eval mode, same weights)."""
    device = x.device
    modes = a.training, b.training
    a.eval(), b.eval()
    ctx = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    with torch.inference_mode(), ctx:
        diff = (a(x).float() - b(x).float()).abs().max().item()
    a.train(modes[0]), b.train(modes[1])
    return diff


# ----------------------------------------------------------------------------------------------------------------
# The benchmark


def benchmark(model: str = "vit_base_patch16_224", mode: str = "infer", batch_size: int = 32, dtype: str = "fp32",
              compile: bool = False, compare: str | None = None, device: str | None = None, steps: int = 2,
              windows: int = 5, warmup: int = 2, peak_tflops: float | None = None, compile_mode: str | None = None,
              **overrides) -> Report:
    """Measure ``model`` (a preset name) in ``mode``; with ``compare="timm"`` also timm's same model, with the
    same weights, data, dtype, optimizer and compile setting, timed in alternating windows.

    ``steps`` steps make a window; each library gets ``warmup`` untimed steps first, then ``windows`` timed
    windows. ``peak_tflops`` skips the matmul-peak measurement (e.g. when a sweep has measured it once).
    ``compile_mode`` is torch.compile's mode ("reduce-overhead" adds CUDA graphs, "max-autotune" kernel search).
    ``overrides`` go to the model config (e.g. ``img_size=32`` for a quick run of a small model).
    """
    from .presets import get_preset
    from .model import flops_per_image

    if mode not in MODES:
        raise ConfigError(f"mode must be 'train' or 'infer', got {mode!r}")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be 'fp32' or 'bf16', got {dtype!r}")
    if compare not in (None, "timm"):
        raise ConfigError(f"compare must be 'timm' (or left out), got {compare!r}")
    for name, value in (("batch_size", batch_size), ("steps", steps), ("windows", windows)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"warmup must be a non-negative integer, got {warmup!r}")
    cfg = get_preset(model, **overrides)  # an unknown name is a ConfigError naming close matches
    dev = resolve_device(device)
    torch_dtype = DTYPES[dtype]

    libraries = ["vitkit"] + (["timm"] if compare else [])
    runners, memory, weights = [], {}, {}
    if compare:  # both start from timm's weights (on the CPU), vitkit's converted from its keys (Eva's differ)
        from .interop import load_pretrained
        source = build_model("timm", model, torch.device("cpu"), None, **overrides)
        weights = {"timm": source.state_dict(), "vitkit": load_pretrained(source, source="timm").state}
    for lib in libraries:
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        net = build_model(lib, model, dev, weights.get(lib), **overrides)
        runner = Runner(lib, net, mode, batch_size, dev, torch_dtype, compile, cfg.img_size
                        if isinstance(cfg.img_size, int) else cfg.img_size[0], cfg.num_classes,
                        compile_mode=compile_mode)
        for _ in range(max(warmup, 1 if compile or dev.type == "cuda" else 0)):  # compiling, peak memory: untimed
            runner.step()
        _sync(dev)
        if dev.type == "cuda":  # params + grads + optimizer state + activations of this model alone
            memory[lib] = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
        runners.append(runner)

    max_diff = None
    if compare:
        max_diff = _max_logit_diff(runners[0].model, runners[1].model, runners[0].images[:2], torch_dtype)

    peak = MatmulPeak(dev, torch_dtype) if peak_tflops is None else None
    times = {r.library: [] for r in runners}
    for w in range(windows):
        order = runners if w % 2 == 0 else runners[::-1]  # neither library always goes first
        for r in order:
            times[r.library].append(r.window(steps))
        if peak is not None:  # the peak under the same conditions, window by window
            peak.window()
    if peak is not None:
        peak_tflops = peak.flops / 1e12
        del peak
    fwd = flops_per_image(cfg)
    step_flops = fwd * (3 if mode == "train" else 1)
    results = []
    for r in runners:
        ips = [batch_size * steps / t for t in times[r.library]]
        med = statistics.median(ips)
        tflops = med * step_flops / 1e12
        results.append(Measurement(r.library, med, 1e3 * statistics.median(times[r.library]) / steps, tflops,
                                   tflops / peak_tflops, memory.get(r.library), ips))
    report = Report(model, mode, str(dev), dtype, batch_size, compile, steps, windows, warmup, fwd / 1e9,
                    peak_tflops, results, max_logit_diff=max_diff, conditions=conditions(dev),
                    compile_mode=compile_mode if compile else None)
    if compare:
        report.ratio = results[0].images_per_s / results[1].images_per_s
        report.paired_ratios = [a / b for a, b in zip(results[0].window_images_per_s, results[1].window_images_per_s)]
        report.paired_ratio = statistics.median(report.paired_ratios)
        a, b = results[0].window_images_per_s, results[1].window_images_per_s
        quiet = [x / y for x, y in zip(a, b) if x >= QUIET * max(a) and y >= QUIET * max(b)]
        report.quiet_pairs = len(quiet)
        report.quiet_ratio = statistics.median(quiet) if quiet else None
    return report


# ----------------------------------------------------------------------------------------------------------------
# Output

TABLE_HEADER = ("| model | mode | batch | dtype | compile | library | images/s | ms/step | TFLOP/s | MFU | peak MB "
                "| vitkit/timm: medians; paired median [range]; uncontended pairs |")
TABLE_RULE = "|---|---|---|---|---|---|---|---|---|---|---|---|"


def table_rows(report: Report) -> list[str]:
    """Markdown rows, one per library. On vitkit's row: the ratio of the two median rates; the median and range of
    the per-window ratios (each vitkit window against the timm window beside it in time); and the median over
    the uncontended pairs (both windows at >= 80% of their best rate), with their count."""
    rows = []
    for m in report.results:
        ratio = ""
        if report.ratio is not None and m.library == "vitkit":
            quiet = f"{report.quiet_ratio:.3f} (n={report.quiet_pairs})" if report.quiet_pairs else "none"
            ratio = (f"{report.ratio:.3f}; {report.paired_ratio:.3f} "
                     f"[{min(report.paired_ratios):.2f}-{max(report.paired_ratios):.2f}]; {quiet}")
        mem = "n/a" if m.peak_memory_mb is None else f"{m.peak_memory_mb:,.0f}"
        rows.append(f"| {report.model} | {report.mode} | {report.batch_size} | {report.dtype} | "
                    f"{(report.compile_mode or 'yes') if report.compiled else 'no'} | {m.library} | {m.images_per_s:,.1f} | "
                    f"{m.ms_per_step:,.1f} | {m.tflops:.3f} | {100 * m.mfu:.1f}% | {mem} | {ratio} |")
    return rows


def format_conditions(report: Report) -> str:
    c = report.conditions
    where = c.get("gpu") or f"{c['cpu']}, {c['threads']} threads"
    load = f", load {c['loadavg_1min']}" if "loadavg_1min" in c else ""
    return (f"{where}; torch {c['torch']}, timm {c.get('timm')}, vitkit {c.get('vitkit')}{load}; "
            f"matmul peak (best window) {report.peak_tflops * 1e3:,.1f} GFLOP/s ({report.dtype}); "
            f"{report.windows} windows x {report.steps_per_window} steps after {report.warmup_steps} warm-up")


def format_report(report: Report) -> str:
    lines = [TABLE_HEADER, TABLE_RULE, *table_rows(report), "", format_conditions(report)]
    if report.max_logit_diff is not None:
        lines.append(f"same weights and input: max |logit difference| vitkit vs timm = {report.max_logit_diff:.2e}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Command line
