"""vitkit.visualize: the figures show the model's numbers, in the model's order; the CLI writes them."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vitkit import RelativePositionBias, VisionTransformer, visualize as viz
from vitkit.checkpoint import save_weights
from vitkit.errors import DataError
from vitkit.cli import main as cli
from vitkit.commands.visualize import main as visualize_main
from vitkit import attention_maps


def tiny(**kw):
    args = dict(img_size=16, patch_size=4, in_channels=1, num_classes=3, embed_dim=16, depth=2, num_heads=2)
    args.update(kw)
    return VisionTransformer(**args).eval()


def images_of(fig):
    return [ax.get_images() for ax in fig.axes if ax.get_visible() and ax.get_images()]


def test_importing_vitkit_does_not_import_matplotlib():
    code = "import sys, vitkit, vitkit.visualize, vitkit.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------------------------------------------
# Attention weights, position bias, bias table


def test_attention_weights_one_panel_per_head_with_the_weights():
    attn = torch.rand(2, 3, 5, 5).softmax(-1)  # (B, H, N, N)
    fig = viz.visualize_attention_weights(attn, batch_index=1)
    panels = images_of(fig)
    assert len(panels) == 3
    for h, ims in enumerate(panels):
        np.testing.assert_allclose(ims[0].get_array(), attn[1, h].numpy(), rtol=1e-6)
    one = viz.visualize_attention_weights(attn, head=-1)
    (ims,) = images_of(one)
    np.testing.assert_allclose(ims[0].get_array(), attn[0, 2].numpy(), rtol=1e-6)
    single = viz.visualize_attention_weights(attn[0, 0])  # (N, N)
    assert len(images_of(single)) == 1
    with pytest.raises(ValueError, match="heads"):
        viz.visualize_attention_weights(attn, head=3)


def test_relative_position_bias_figure_is_the_bias_centred_on_zero(tmp_path):
    rpb = RelativePositionBias(num_heads=2, window_size=(2, 3), num_prefix_tokens=1, init_std=1.0)
    fig = viz.visualize_relative_position_bias(rpb, save_path=tmp_path / "bias.png")
    bias = rpb().detach()  # (H, T, T)
    panels = images_of(fig)
    assert len(panels) == 2
    for h, ims in enumerate(panels):
        np.testing.assert_allclose(ims[0].get_array(), bias[h].numpy(), rtol=1e-6)
        lo, hi = ims[0].get_clim()
        assert lo == pytest.approx(-hi) and hi == pytest.approx(bias.abs().max().item())
    assert (tmp_path / "bias.png").stat().st_size > 1000


@pytest.mark.parametrize("prefix", [0, 1])
def test_bias_table_figure_is_the_table_laid_out_by_offset(prefix):
    h, w = 3, 4
    rpb = RelativePositionBias(num_heads=3, window_size=(h, w), num_prefix_tokens=prefix, init_std=1.0)
    table = rpb.relative_position_bias_table.detach()  # (num_positions, H)
    bias = rpb().detach()  # (H, T, T)
    fig = viz.visualize_bias_table(rpb, head=1)
    (ims,) = images_of(fig)
    grid = ims[0].get_array()
    assert grid.shape == (2 * h - 1, 2 * w - 1)
    num_grid = (2 * h - 1) * (2 * w - 1)
    np.testing.assert_allclose(grid, table[:num_grid, 1].reshape(2 * h - 1, 2 * w - 1).numpy(), rtol=1e-6)
    # The cell at offset (dy, dx) is the bias the model adds between patches that far apart.
    for q in range(h * w):
        for k in range(h * w):
            dy, dx = q // w - k // w, q % w - k % w
            assert grid[dy + h - 1, dx + w - 1] == pytest.approx(bias[1, prefix + q, prefix + k].item())
    if prefix:
        assert f"{table[num_grid, 1].item():+.3f}" in fig.axes[0].get_xlabel()  # the cls->patch entry


def test_bias_table_of_a_raw_table_has_one_panel_per_head():
    table = torch.randn(7, 4)  # a 1-d bias over 4 tokens: offsets -3..3
    fig = viz.visualize_bias_table(table)
    panels = images_of(fig)
    assert len(panels) == 4
    for h, ims in enumerate(panels):
        np.testing.assert_allclose(ims[0].get_array(), table[:, h].numpy()[None], rtol=1e-6)
    with pytest.raises(ValueError, match="offsets"):
        viz.visualize_bias_table(table, window_size=(3, 3))


# --------------------------------------------------------------------------------------------------------------
# Attention on the image


def test_attention_on_image_overlays_each_heads_map():
    model = tiny(img_size=(12, 20), patch_size=4)
    x = torch.randn(1, 12, 20)
    fig = viz.visualize_attention_on_image(model, x, class_names=["a", "b", "c"])
    maps = attention_maps.cls_attention_maps(model, x)[0]  # (H, gh, gw)
    panels = images_of(fig)
    assert len(panels) == 2 + 2  # input, rollout, one per head
    for h in range(2):
        base, heat = panels[2 + h]
        want = viz.upsample_map(maps[h], (12, 20))  # (H, W)
        want = (want - want.min()) / (want.max() - want.min())
        assert heat.get_array().shape == (12, 20)
        np.testing.assert_allclose(heat.get_array(), want, atol=1e-5)
    assert "predicted" in fig._suptitle.get_text()


def test_upsample_map_keeps_constant_maps_and_the_image_size():
    up = viz.upsample_map(np.full((3, 5), 0.25), (12, 20))
    assert up.shape == (12, 20)
    np.testing.assert_allclose(up, 0.25)


# --------------------------------------------------------------------------------------------------------------
# Patches


def test_patch_numbers_match_the_models_sequence_order():
    model = tiny(img_size=(12, 20), patch_size=4, in_channels=3)
    x = torch.rand(1, 3, 12, 20)  # already in [0, 1]: displayed as is
    fig = viz.visualize_patches(x[0], model.patch_embed.patch_size)
    ax = fig.axes[1]
    canvas = ax.get_images()[0].get_array()  # (H', W', 3)
    unfolded = F.unfold(x, kernel_size=4, stride=4)[0]  # (C*p*p, N), N in patch_embed's order
    tokens = model.patch_embed(x)[0]  # (N, D)
    numbers = {int(t.get_text()): t.get_position() for t in ax.texts}
    assert sorted(numbers) == list(range(15))
    w = model.patch_embed.proj.weight.reshape(16, -1)  # (D, C*p*p)
    for k, (cx, cy) in numbers.items():
        r0, c0 = int(round(cy - 1.5)), int(round(cx - 1.5))  # the label sits at the patch centre
        patch = torch.as_tensor(np.asarray(canvas[r0:r0 + 4, c0:c0 + 4]), dtype=torch.float32)  # (p, p, C)
        flat = patch.permute(2, 0, 1).reshape(-1)  # (C*p*p,) in unfold's order
        torch.testing.assert_close(flat, unfolded[:, k])
        torch.testing.assert_close(w @ flat + model.patch_embed.proj.bias, tokens[k], atol=1e-5, rtol=1e-5)


def test_image_patches_and_display_undo_normalisation():
    img = np.arange(2 * 4 * 6, dtype=np.float64).reshape(4, 6, 2)[..., 0] / 48  # (4, 6)
    patches, grid = viz.image_patches(img, 2)
    assert grid == (2, 3)
    np.testing.assert_array_equal(patches[4], img[2:4, 2:4])  # row 1, column 1
    x = torch.rand(3, 4, 6)
    mean, std = np.array([0.5, 0.4, 0.3]), np.array([0.2, 0.25, 0.3])
    normed = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    np.testing.assert_allclose(viz.to_display(normed.float(), mean, std), x.permute(1, 2, 0).numpy(), atol=1e-6)
    u8 = (x * 255).to(torch.uint8)
    np.testing.assert_allclose(viz.to_display(u8), u8.permute(1, 2, 0).numpy() / 255)


# --------------------------------------------------------------------------------------------------------------
# Runs: curves, confusion matrix, mistakes


def test_training_curves_plot_the_columns_by_name(tmp_path):
    csv = tmp_path / "metrics.csv"
    csv.write_text("lr,test_accuracy,epoch,train_loss,test_loss,seconds\n"
                   "0.001,0.5,1,2.0,2.1,3\n0.0005,,2,1.5,1.7,3\n0.00001,0.8,3,1.0,1.2,3\n")
    fig = viz.plot_training_curves(csv)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "accuracy", "learning rate"]
    lines = {ln.get_label(): ln for ax in fig.axes for ln in ax.get_lines()}
    np.testing.assert_array_equal(lines["train_loss"].get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(lines["test_loss"].get_ydata(), [2.1, 1.7, 1.2])
    np.testing.assert_array_equal(lines["test_accuracy"].get_xdata(), [1, 3])  # the empty cell is skipped
    np.testing.assert_array_equal(lines["lr"].get_ydata(), [0.001, 0.0005, 0.00001])
    assert fig.axes[2].get_yscale() == "log"
    no_lr = viz.plot_training_curves({"epoch": [1, 2], "train_loss": [1.0, 0.5]})
    assert [ax.get_title() for ax in no_lr.axes] == ["loss"]
    with pytest.raises(DataError, match="columns are: epoch, seconds"):
        viz.plot_training_curves({"epoch": [1], "seconds": [3]})


def test_a_figure_that_cannot_be_written_leaves_the_earlier_file(tmp_path, monkeypatch):
    """A full disk while saving a plot is an OSError naming the file, and the file of an earlier run of
    `vitkit visualize` is left whole (no half-written PNG, no temporary beside it)."""
    import errno
    import os

    from matplotlib.figure import Figure

    path = tmp_path / "curves.png"
    fig = viz.plot_training_curves({"epoch": [1, 2], "train_loss": [1.0, 0.5]}, path)
    before = path.read_bytes()

    def full(self, fname, **kwargs):
        open(fname, "wb").write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(fname))

    monkeypatch.setattr(Figure, "savefig", full)
    with pytest.raises(OSError) as e:
        viz.save_figure(fig, path)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def test_an_empty_column_is_not_drawn(tmp_path):
    """metrics.csv of a 3-class run leaves val_top5 empty (every image is in its top 5): the accuracy panel
    shows val_accuracy alone, with no line or legend entry for val_top5."""
    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,train_loss,val_accuracy,val_top5\n1,2.0,0.5,\n2,1.5,0.7,\n")
    fig = viz.plot_training_curves(csv)
    labels = [ln.get_label() for ax in fig.axes for ln in ax.get_lines()]
    assert labels == ["train_loss", "val_accuracy"]


def test_confusion_matrix_counts_and_figure():
    labels = [0, 0, 1, 2, 2, 2]
    preds = [0, 1, 1, 2, 0, 2]
    cm = viz.confusion_matrix(labels, preds, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    fig = viz.plot_confusion_matrix(cm, ["cat", "dog", "eel"])
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.get_images()[0].get_array(), cm / cm.sum(1, keepdims=True))
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert cells == {(0, 0): "1", (0, 1): "1", (1, 1): "1", (2, 0): "1", (2, 2): "2"}
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "eel"]
    assert "66.7%" in ax.get_title()


def test_mistakes_are_the_most_confident_wrong_predictions():
    labels = np.array([0, 1, 2, 0, 1])
    probs = torch.tensor([[0.9, 0.1, 0.0],   # right
                          [0.7, 0.2, 0.1],   # wrong, 0.7
                          [0.05, 0.9, 0.05],  # wrong, 0.9
                          [0.2, 0.6, 0.2],   # wrong, 0.6
                          [0.1, 0.8, 0.1]])  # right
    np.testing.assert_array_equal(viz.most_confident_mistakes(labels, probs, k=2), [2, 1])
    images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    fig = viz.plot_mistakes(images, labels, probs, ["cat", "dog", "eel"])
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in shown] == ["true eel", "true dog", "true cat"]
    assert [ax.get_xlabel() for ax in shown] == ["pred dog (90%)", "pred cat (70%)", "pred dog (60%)"]
    np.testing.assert_allclose(shown[0].get_images()[0].get_array(), images[2, 0].numpy() / 255)
    none = viz.plot_mistakes(images[:1], labels[:1], probs[:1])
    assert "No mistakes" in none.texts[0].get_text()


def test_mistakes_figure_shows_the_most_confident_mistakes_with_their_files():
    import types
    images = torch.arange(4 * 1 * 2 * 2, dtype=torch.uint8).view(4, 1, 2, 2) * 10  # (4, 1, 2, 2)
    eval_set = types.SimpleNamespace(classes=["cat", "dog"], sources=[f"img/{i}.png" for i in range(4)],
                                     view=lambda idx: images[list(idx)])
    predictions = {"label": torch.tensor([0, 1, 0, 1]), "pred": torch.tensor([1, 1, 1, 0]),
                   "confidence": torch.tensor([0.6, 0.9, 0.8, 0.7])}
    fig = viz.mistakes_figure(eval_set, predictions)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in shown] == ["true cat", "true dog", "true cat"]  # images 2, 3, 0: 80%, 70%, 60%
    assert [ax.get_xlabel() for ax in shown] == ["pred dog (80%)\nimg/2.png", "pred cat (70%)\nimg/3.png",
                                                 "pred dog (60%)\nimg/0.png"]
    np.testing.assert_allclose(shown[0].get_images()[0].get_array(), images[2, 0].numpy() / 255)
    none = viz.mistakes_figure(eval_set, {**predictions, "pred": predictions["label"]})
    assert "No mistakes" in none.texts[0].get_text()


# --------------------------------------------------------------------------------------------------------------
# vitkit visualize


@pytest.fixture
def checkpoint(tmp_path):
    model = tiny(img_size=8, patch_size=2, num_classes=10, use_relative_position=True)
    return save_weights(model, tmp_path / "run" / "checkpoints" / "best",
                        {"classes": [str(i) for i in range(10)], "mean": [0.3], "std": [0.2], "dataset": "digits"})


def test_cli_image_views(tmp_path, checkpoint, capsys):
    img = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(img)
    out = tmp_path / "views"
    assert cli(["visualize", "--checkpoint", str(checkpoint), "--image", str(img), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["attention.png", "bias.png", "bias_table.png", "features.png", "patches.png", "rollout.png"]
    with Image.open(out / "patches.png") as im:
        assert im.size[0] > 300
    assert str(out / "attention.png") in capsys.readouterr().out


def test_cli_run_plots(tmp_path, checkpoint):
    run = checkpoint.parents[1]
    (run / "config.yaml").write_text("data:\n  dataset: digits\n")
    (run / "metrics.csv").write_text("epoch,train_loss,test_accuracy\n1,2.0,0.3\n2,1.0,0.6\n")
    assert cli(["visualize", "--run", str(run), "--out", str(tmp_path / "plots")]) == 0
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["confusion.png", "curves.png",
                                                                      "mistakes.png"]


@pytest.mark.parametrize("args, message", [
    (["--run", "{tmp}/nope"], "run folder {tmp}/nope does not exist"),
    (["--checkpoint", "{tmp}/nope", "--image", "{tmp}/x.png"], "checkpoint {tmp}/nope not found"),
    (["--checkpoint", "{ckpt}", "--image", "{tmp}/missing.png"], "does not exist"),
    (["--checkpoint", "{ckpt}", "--image", "{tmp}/bad.png"], "unreadable"),
    (["--checkpoint", "{ckpt}", "--image", "{tmp}/bad.png", "--layer", "5"], "--layer 5 does not exist"),
])
def test_cli_user_errors_are_one_sentence_and_exit_2(tmp_path, checkpoint, capsys, args, message):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    fill = lambda s: s.format(tmp=tmp_path, ckpt=checkpoint)  # noqa: E731
    assert cli(["visualize", *map(fill, args)]) == 2
    err = capsys.readouterr().err
    assert fill(message) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_needs_a_run_or_an_image(capsys):
    with pytest.raises(SystemExit) as e:
        visualize_main([])
    assert e.value.code == 2
    assert "--run RUN_DIR" in capsys.readouterr().err


def test_feature_pca_is_scikit_learns_pca_scaled_to_unit_range():
    """The colours are scikit-learn's PCA of all the patches of all the images (fitted together), each
    component min-max scaled; signs follow scikit-learn's convention, so the picture does not flip."""
    from sklearn.decomposition import PCA

    from vitkit.visualize import feature_pca

    dense = torch.randn(2, 12, 3, 5, generator=torch.Generator().manual_seed(0))  # (B, D, h, w)
    rgb = feature_pca(dense)
    assert rgb.shape == (2, 3, 5, 3)
    want = PCA(3, svd_solver="full").fit_transform(dense.permute(0, 2, 3, 1).reshape(30, 12).double().numpy())
    want = (want - want.min(0)) / (want.max(0) - want.min(0))
    np.testing.assert_allclose(rgb.reshape(30, 3), want, atol=1e-10)
    np.testing.assert_allclose(feature_pca(dense[0]), feature_pca(dense[:1])[0])
    two = feature_pca(torch.randn(2, 4, 1, 1, generator=torch.Generator().manual_seed(1)))  # 2 patches: 1 component
    assert two.shape == (2, 1, 1, 3) and np.all(two[..., 1:] == 0) and sorted(two[:, 0, 0, 0]) == [0.0, 1.0]


def test_visualize_feature_pca_shows_each_image_and_its_colours():
    from vitkit.visualize import visualize_feature_pca

    model = tiny(img_size=8, patch_size=2, num_classes=3).eval()
    fig = visualize_feature_pca(model, torch.randn(3, 1, 8, 8), captions=["a", "b", "c"])
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["a", "features (PCA)", "b", "features (PCA)", "c", "features (PCA)"]
    shown = [ax.images[0].get_array() for ax in fig.axes if ax.get_title() == "features (PCA)"]
    assert shown[0].shape == (4, 4, 3)  # one colour per patch of the 4x4 grid
