"""The benchmark harness: its FLOP count, a tiny end-to-end run in both modes, and the CLI's argument errors."""

import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import vitkit
from vitkit.commands.benchmark import main as benchmark_main
from vitkit import benchmark as bm
from vitkit.cli import main as vitkit_main
from vitkit.errors import ConfigError

TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)


def test_flops_formula_by_hand_and_by_flop_counter():
    cfg = vitkit.get_preset("vit_tiny_patch16_224", **TINY)
    n_p, t, d, m, k = 16, 17, 48, 192, 10  # 4x4 patches, +1 [CLS]; MLP 4x; 10 classes
    by_hand = 2 * (n_p * 3 * 8 * 8 * d  # patch projection (a 3*8*8 -> 48 linear map per patch)
                   + 2 * (t * 3 * d * d + t * d * d + 2 * t * d * m + 2 * t * t * d)  # 2 blocks
                   + d * k)  # head
    assert vitkit.flops_per_image(cfg) == by_hand

    model = vitkit.VisionTransformer(cfg).eval()
    # The CPU's fused attention kernel is not counted by FlopCounterMode; the math backend's bmm's are.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(3, 3, 32, 32))
    assert counter.get_total_flops() == 3 * by_hand


@pytest.mark.parametrize("name, gmacs", [("vit_tiny_patch16_224", 1.254), ("vit_small_patch16_224", 4.599),
                                         ("vit_base_patch16_224", 17.564), ("vit_large_patch16_224", 61.555)])
def test_flops_match_the_published_vit_figures(name, gmacs):
    # vit-records.md section 3: forward GMACs of ViT-Ti/S/B/L at 224 px, patch 16 (timm lists 1.26/4.61/17.58/61.6).
    assert round(vitkit.flops_per_image(vitkit.get_preset(name)) / 2e9, 3) == gmacs


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_tiny_run_against_timm_is_well_formed(mode):
    pytest.importorskip("timm")
    report = bm.benchmark("vit_tiny_patch16_224", mode=mode, batch_size=2, compare="timm", device="cpu",
                          steps=1, windows=3, warmup=1, peak_tflops=0.1, **TINY)
    assert [m.library for m in report.results] == ["vitkit", "timm"]
    fwd = vitkit.flops_per_image(vitkit.get_preset("vit_tiny_patch16_224", **TINY))
    for m in report.results:
        assert len(m.window_images_per_s) == 3 and all(math.isfinite(v) and v > 0 for v in m.window_images_per_s)
        assert m.images_per_s == sorted(m.window_images_per_s)[1]  # the median window
        assert m.ms_per_step == pytest.approx(1e3 * 2 / m.images_per_s)  # that window: one step of 2 images
        assert m.tflops == pytest.approx(m.images_per_s * fwd * (3 if mode == "train" else 1) / 1e12)
        assert m.mfu == pytest.approx(m.tflops / 0.1)
        assert m.peak_memory_mb is None  # not measured on the CPU
    assert report.ratio == pytest.approx(report.results[0].images_per_s / report.results[1].images_per_s)
    assert report.paired_ratios == pytest.approx(
        [a / b for a, b in zip(*(m.window_images_per_s for m in report.results))])
    assert report.paired_ratio == sorted(report.paired_ratios)[1]
    if mode == "infer":
        assert report.max_logit_diff == 0.0  # same weights, same ops: timm's logits to the bit
    else:  # training mode on a CPU embeds patches with a matrix product instead of timm's convolution
        assert 0.0 <= report.max_logit_diff <= 1e-5
    text = bm.format_report(report)
    assert text.count("| vit_tiny_patch16_224 |") == 2 and "vitkit vs timm" in text


def test_train_steps_update_the_weights():
    model = vitkit.VisionTransformer(vitkit.get_preset("vit_tiny_patch16_224", **TINY))
    before = model.head.weight.detach().clone()
    runner = bm.Runner("vitkit", model, "train", 2, torch.device("cpu"), torch.float32, img_size=32, num_classes=10)
    runner.step()
    assert not torch.equal(before, model.head.weight) and model.head.weight.grad is None


def test_matmul_peak_is_positive_and_finite():
    flops = bm.measure_matmul_peak(torch.device("cpu"), torch.float32, size=64, calls=2, windows=2)
    assert math.isfinite(flops) and flops > 0


@pytest.mark.parametrize("argv, words", [
    (["--mode", "fit"], "invalid choice: 'fit'"),
    (["--batch-size", "0"], "positive integer"),
    (["--dtype", "fp16"], "invalid choice: 'fp16'"),
    (["--compare", "torchvision"], "invalid choice"),
    (["--model", "vit_tiny_patch16_244"], "unknown model name"),
    (["--device", "tpu"], "device must be"),
    (["--warmup", "-1"], "--warmup"),
    (["--bogus"], "unrecognized arguments"),
])
def test_cli_argument_errors_exit_2_with_one_line(argv, words, capsys):
    assert vitkit_main(["benchmark", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err and err.startswith("vitkit benchmark: error:")


def test_cuda_without_a_gpu_is_a_config_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="no usable CUDA"):
        bm.resolve_device("cuda")


def test_cli_prints_a_table(capsys, monkeypatch):
    # The smallest preset at its real size would take seconds; shrink it through the library call instead.
    calls = {}
    real = bm.benchmark

    def small(*args, **kwargs):
        calls["args"] = args
        return real(*args, peak_tflops=0.1, **TINY)

    monkeypatch.setattr(bm, "benchmark", small)
    assert benchmark_main(["--model", "vit_tiny_patch16_224", "--mode", "infer", "--batch-size", "2", "--device", "cpu",
                        "--steps", "1", "--windows", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "| vit_tiny_patch16_224 | infer | 2 | fp32 | no | vitkit |" in out and " threads; torch " in out
    assert calls["args"][:4] == ("vit_tiny_patch16_224", "infer", 2, "fp32")


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_a_headless_rotary_backbone_runs_against_timm_with_the_same_weights(mode):
    """DINOv3 (no head, timm's Eva keys): vitkit runs timm's weights converted, a headless model trains on the
    mean square of its features; in inference the two compute the same features to the bit."""
    pytest.importorskip("timm")
    report = bm.benchmark("vit_small_patch16_dinov3", mode=mode, batch_size=2, compare="timm", device="cpu",
                          steps=1, windows=1, warmup=1, peak_tflops=0.1, img_size=32, embed_dim=64, depth=2,
                          num_heads=2)
    assert [m.library for m in report.results] == ["vitkit", "timm"]
    assert all(m.images_per_s > 0 for m in report.results)
    assert report.max_logit_diff <= (0.0 if mode == "infer" else 1e-5)
