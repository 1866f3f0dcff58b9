"""vitkit.report: report.html is one self-contained page with the run's numbers, and a browser renders it."""

import base64
import io
import json
import re
import subprocess
import tempfile

import pytest
from conftest import chromium
import torch
import yaml
from PIL import Image

from vitkit import VisionTransformer
from vitkit.checkpoint import save_weights
from vitkit.data import ImageDataset, Preprocess, Splits
from vitkit.data.splits import eval_set
from vitkit.report import write_report
from vitkit.train import evaluate

CLASSES = ["zero", "one", "two", "three"]


def fake_run(root, relative=False):
    """A run folder as the trainer writes it, with a tiny untrained model, and an in-memory test set."""
    model = VisionTransformer(img_size=8, patch_size=2, in_channels=1, num_classes=4, embed_dim=16, depth=2,
                              num_heads=2, use_relative_position=relative).eval()
    run = root / "run"
    save_weights(model, run / "checkpoints" / "best",
                 {"classes": CLASSES, "mean": [0.4], "std": [0.3], "dataset": "digits"})
    (run / "config.yaml").write_text(yaml.safe_dump({
        "data": {"dataset": "digits"}, "model": model.config.to_dict(),
        "train": {"epochs": 3, "lr": 0.00123, "batch_size": 64}}, sort_keys=False))
    (run / "metrics.csv").write_text("epoch,train_loss,test_loss,train_accuracy,test_accuracy,lr\n"
                                     "1,1.4,1.3,0.30,0.35,0.001\n2,1.1,1.2,0.50,0.45,0.0005\n"
                                     "3,0.9,1.1,0.60,0.5321,0.0001\n")
    (run / "results.json").write_text(json.dumps({"test_accuracy": 0.5321, "test_loss": 1.1, "best_epoch": 3,
                                                  "confusion_matrix": [[1, 0], [0, 1]]}))
    g = torch.Generator().manual_seed(0)
    test = ImageDataset(torch.randint(0, 256, (120, 1, 8, 8), dtype=torch.uint8, generator=g), torch.arange(120) % 4,
                        CLASSES, (0.4,), (0.3,), name="digits")
    splits = Splits("digits", CLASSES, 1, {"test": test}, "test only", image_size=(8, 8), mean=(0.4,), std=(0.3,))
    ev = eval_set(splits, "test", Preprocess(8, (0.4,), (0.3,)), 32)
    predictions = evaluate(model, ev.loader, torch.nn.CrossEntropyLoss(), "cpu")["predictions"]
    return run, model, (ev, predictions)


def embedded_pngs(page):
    return [Image.open(io.BytesIO(base64.b64decode(b64)))
            for b64 in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The report of a fake run with a relative position bias, written once for the tests below."""
    torch.manual_seed(0)
    run, model, (ev, predictions) = fake_run(tmp_path_factory.mktemp("report"), relative=True)
    path = write_report(run, model, ev, predictions)
    assert path == run / "report.html"
    return path


def test_report_is_self_contained_and_shows_the_run(report):
    page = report.read_text()
    assert page.count("<img ") == 6  # curves, confusion, mistakes, attention, patch features, bias table
    pngs = embedded_pngs(page)
    assert len(pngs) == 6 and all(p.format == "PNG" and p.size[0] > 200 for p in pngs)
    assert not re.search(r'(src|href)="(?!data:)', page) and "<script" not in page  # nothing to fetch or run
    assert "53.21%" in page  # results.json's headline accuracy as a card
    assert "0.00123" in page and "digits" in page  # the config
    assert "all 120 images of the test split" in page and "Accuracy per class" in page
    assert all(page.count(f"<tr><th>{name}</th>") == 1 for name in CLASSES)  # one accuracy row per class
    assert "Relative position bias" in page and "Where the model looks" in page and "What the patch features see" in page


def test_report_without_a_test_set_or_results(tmp_path):
    run, model, _ = fake_run(tmp_path)
    (run / "results.json").unlink()
    page = write_report(run, model).read_text()
    assert page.count("<img ") == 1  # the curves only
    assert "scored no validation or test split" in page and "No results.json" in page
    assert "Relative position bias" not in page


def test_report_of_a_missing_run_is_a_data_error(tmp_path):
    from vitkit.errors import DataError
    with pytest.raises(DataError, match="does not exist"):
        write_report(tmp_path / "nope", VisionTransformer(img_size=8, patch_size=4, num_classes=2, embed_dim=8,
                                                          depth=1, num_heads=1))


CHECKS = """<script>
window.__errors = [];
window.addEventListener("error", e => __errors.push(e.message || ("failed to load " + (e.target.src || "").slice(0, 40))), true);
const __ce = console.error;
console.error = (...a) => { __errors.push(a.join(" ")); __ce(...a); };
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const out = document.createElement("pre");
  out.id = "__checks";
  out.textContent = JSON.stringify({images: imgs.length, widths: imgs.map(i => i.complete ? i.naturalWidth : 0),
                                    errors: __errors});
  document.body.appendChild(out);
});
</script>"""


def test_report_renders_in_chromium(report):
    """Every image decodes (natural width > 0) and the page logs no console errors.

    The page is loaded with a small checking script injected first in <head>: it records errors (script
    errors, resources that fail to load, console.error) and, on load, writes the images' natural widths into
    the DOM, which --dump-dom prints. Chromium's own console log (stderr) must hold no message either.
    """
    exe = chromium()
    page = report.read_text()
    probe = report.with_name("probe.html")
    probe.write_text(page.replace("<head>", "<head>" + CHECKS, 1))
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
             "--dump-dom", probe.resolve().as_uri()],
            capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="__checks">(.*?)</pre>', out.stdout)
    assert found, f"chromium printed no check result (rc {out.returncode}): {out.stderr[-2000:]}"
    checks = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert checks["images"] == page.count("<img ") == 6
    assert all(w > 0 for w in checks["widths"]), checks["widths"]
    assert checks["errors"] == []
    console = [line for line in out.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []


def test_top5_card_only_when_there_are_more_than_five_classes():
    from vitkit.report import _cards
    results = {"test_accuracy": 0.5, "test_top5": 1.0, "epochs": 3}
    assert "test top5" in _cards(results, num_classes=10) and "100.00%" in _cards(results, num_classes=10)
    assert "top5" not in _cards(results, num_classes=3) and "50.00%" in _cards(results, num_classes=3)
