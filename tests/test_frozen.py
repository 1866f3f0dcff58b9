"""Frozen-backbone evaluation: the k-NN vote against a brute-force NumPy computation, the probe against
scikit-learn fitted here, the feature cache (a second call runs no backbone; a damaged entry is recomputed),
and `vitkit features | knn | probe` end to end on a tiny digits run, whose probe run `vitkit eval` re-scores."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import train_tiny_digits
from vitkit.cli import main
from vitkit.frozen.knn import check_knn, knn_scores, ranked
from vitkit.frozen.probe import ProbeSettings, fit_probe
from vitkit.predictor import Predictor


def brute_force_knn(train, train_labels, queries, k, T, num_classes):
    """DINO's vote, one query at a time: nearest by (-cosine, index); scores per class; ranks by (-score, class)."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores, ranks = [], []
    for q in queries:
        sims = [float(np.dot(q, x)) for x in train]
        nearest = sorted(range(len(train)), key=lambda j: (-sims[j], j))[:k]
        s = [0.0] * num_classes
        for j in nearest:
            s[train_labels[j]] += math.exp(sims[j] / T)
        scores.append(s)
        ranks.append(sorted(range(num_classes), key=lambda c: (-s[c], c)))
    return np.array(scores), np.array(ranks)


def test_knn_equals_a_brute_force_vote():
    rng = np.random.default_rng(0)
    train, queries = rng.normal(size=(40, 6)), rng.normal(size=(13, 6))
    labels = rng.integers(0, 7, size=40)
    for k in (1, 3, 8, 40):
        got = knn_scores(torch.from_numpy(train), torch.from_numpy(labels), torch.from_numpy(queries), [k], 0.07, 7,
                         chunk=4)[k]  # chunks of 4 queries
        want, want_ranks = brute_force_knn(train, labels, queries, k, 0.07, 7)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)
        assert (ranked(got).numpy() == want_ranks).all()  # the top-1 and top-5 order


def four_hot(rng, n):
    """Rows of four +-1 entries among 8: unit length after halving, so every cosine (a multiple of 1/4) is exact
    in any summation order, and ties are exact ties."""
    rows = np.zeros((n, 8))
    for r in rows:
        r[rng.choice(8, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
    return rows


def test_knn_ties_are_broken_by_training_index_then_class_index():
    from vitkit.frozen.knn import nearest

    rng = np.random.default_rng(3)
    train, queries = four_hot(rng, 60), four_hot(rng, 20)
    labels = rng.integers(0, 7, size=60)
    unit = lambda a: torch.from_numpy(a / 2)  # noqa: E731  (|row| = 2)
    for k in (1, 5, 17, 60):
        sim, idx = nearest(unit(train), unit(queries), k)
        for q in range(len(queries)):
            sims = [float(np.dot(queries[q], x)) / 4 for x in train]
            order = sorted(range(len(train)), key=lambda j: (-sims[j], j))[:k]
            assert idx[q].tolist() == order and sim[q].tolist() == [sims[j] for j in order]
        got = knn_scores(torch.from_numpy(train), torch.from_numpy(labels), torch.from_numpy(queries), [k], 0.5, 7,
                         chunk=7)[k]
        np.testing.assert_allclose(got.numpy(), brute_force_knn(train, labels, queries, k, 0.5, 7)[0], rtol=1e-12)
    # equal class scores: the lower class index ranks first
    assert ranked(torch.tensor([[0.5, 2.0, 2.0, 1.0, 2.0]])).tolist() == [[1, 2, 4, 3, 0]]
    # a tie on the k-th place: of two identical training rows only the first fits in k=1
    tied = knn_scores(torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64), torch.tensor([1, 0]),
                      torch.tensor([[1.0, 0.0]], dtype=torch.float64), [1], 0.1, 2)[1]
    assert tied[0, 1] > 0 and tied[0, 0] == 0


@pytest.mark.parametrize("ks, T, n, words", [([0], 0.07, 10, "1 or more"), ([5], 0.0, 10, "above 0"),
                                              ([11], 0.07, 10, "at most 10")])
def test_knn_refuses_bad_settings_in_one_sentence(ks, T, n, words):
    from vitkit.errors import ConfigError
    with pytest.raises(ConfigError, match=words):
        check_knn(ks, T, n)


def test_probe_is_scikit_learns_logistic_regression_with_the_scaler_folded_in():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    centers = rng.normal(size=(4, 8)) * 2
    def draw(n):
        y = np.arange(n) % 4
        return (centers[y] + rng.normal(size=(n, 8)) * 1.5 + 3).astype(np.float32), y
    (x, y), (xv, yv) = draw(120), draw(60)
    settings = ProbeSettings(Cs=[0.001, 0.1, 10.0])
    probe = fit_probe(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(xv), torch.from_numpy(yv),
                      settings, 4)
    val_accuracy = {}
    for C in settings.Cs:  # the grid, fitted independently
        ref = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000)).fit(x.astype(np.float64), y)
        val_accuracy[C] = float((ref.predict(xv.astype(np.float64)) == yv).mean())
    assert [r["val_accuracy"] for r in probe.grid] == [val_accuracy[C] for C in settings.Cs]
    best = max(settings.Cs, key=lambda C: (val_accuracy[C], -C))  # the smaller C among equal accuracies
    assert probe.C == best
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=best, max_iter=1000)).fit(x.astype(np.float64), y)
    lr = ref[-1]
    scaler = ref[0]
    np.testing.assert_allclose(probe.classifier.coef_, lr.coef_, rtol=1e-6, atol=1e-8)
    # the folded head on raw features = the pipeline's decision function
    logits = torch.from_numpy(xv) @ probe.weight.T + probe.bias
    np.testing.assert_allclose(logits.numpy(), ref.decision_function(xv.astype(np.float64)), rtol=1e-4, atol=1e-4)
    assert (logits.argmax(1).numpy() == ref.predict(xv.astype(np.float64))).all()
    np.testing.assert_allclose(probe.mean, scaler.mean_)


@pytest.mark.parametrize("pool, kind", [("mean", "mean"), ("mean", "cls"), ("cls", "mean"), ("cls", "cls_mean")])
def test_the_probe_checkpoint_computes_exactly_the_probed_features(pool, kind):
    """A pool-'mean' backbone normalises after pooling (fc_norm): its 'mean' features are unnormed tokens'
    mean, and the probe model must compute exactly that (probe_model checks it on the batch, else raises)."""
    from vitkit.frozen.head import probe_model
    from vitkit.model import VisionTransformer

    backbone = VisionTransformer(img_size=8, patch_size=4, in_channels=1, num_classes=3, embed_dim=16, depth=1,
                                 num_heads=2, pool=pool).eval()
    with torch.no_grad():  # a norm that is not the identity
        for norm in (backbone.norm, backbone.fc_norm):
            if hasattr(norm, "weight"):
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.5, 0.5)
    predictor = Predictor(backbone, ["a", "b", "c"], None, {}, "mem", torch.device("cpu"))
    x = torch.randn(5, 1, 8, 8)
    features = predictor.features(x, kind)
    w, b = torch.randn(4, features.shape[1]), torch.randn(4)
    model = probe_model(backbone, kind, w, b, x, features)
    torch.testing.assert_close(model(x), features @ w.T + b, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# End to end on a tiny digits run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_tiny_digits(tmp_path_factory.mktemp("frozen"), depth=2, epochs=1)[0]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VITKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "features"


def cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def count_features(monkeypatch):
    calls = []
    original = Predictor.features
    def counted(self, batch, kind="pooled"):
        calls.append(len(batch))
        return original(self, batch, kind)
    monkeypatch.setattr(Predictor, "features", counted)
    return calls


def test_features_are_cached_and_a_damaged_entry_is_recomputed(run, cache, tmp_path, monkeypatch, capsys):
    from vitkit.frozen.store import FeatureSet

    calls = count_features(monkeypatch)
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    args = ["features", "digits", "--checkpoint", str(run), "--embedding", "cls_mean", "--batch-size", "500"]
    assert cli(capsys, *args, "--out", str(first))[0] == 0
    assert sum(calls) == 1797 and len(list(cache.iterdir())) == 3  # one entry per split
    calls.clear()
    assert cli(capsys, *args, "--out", str(second))[0] == 0
    assert calls == []  # the backbone did not run
    a, b = FeatureSet.load(first), FeatureSet.load(second)
    assert torch.equal(a.features, b.features) and a.sources == b.sources and a.splits == b.splits
    assert a.features.shape == (1797, 64) and a.splits.count("val") == 142 and a.meta["embedding"] == "cls_mean"
    assert a.classes == [str(i) for i in range(10)]
    # the cached features are the model's
    predictor = Predictor.load(run)
    splits = predictor.splits()
    from vitkit.data.splits import eval_set
    images, labels = next(iter(eval_set(splits, "test", predictor.preprocess, 50).loader))
    test_x, test_y = a.part("test")
    torch.testing.assert_close(test_x[:50], predictor.features(images, "cls_mean"))
    assert torch.equal(test_y[:50], labels)
    # a damaged entry: one warning, recomputed, never trusted
    victim = sorted(cache.iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:200])
    calls.clear()
    with pytest.warns(UserWarning, match="unusable .* recomputing it") as caught:
        assert cli(capsys, *args, "--out", str(second))[0] == 0
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert 0 < sum(calls) < 1797
    assert torch.equal(FeatureSet.load(second).features, a.features)


def test_an_unwritable_cache_is_said_once_and_the_features_still_come(run, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("VITKIT_CACHE", str(blocker))  # features/ cannot be made under a file
    with pytest.warns(UserWarning, match="is not writable"):
        code, out, _ = cli(capsys, "features", "digits", "--checkpoint", str(run), "--split", "val",
                           "--out", str(tmp_path / "v.safetensors"))
    assert code == 0 and "142 embeddings" in out


def test_features_of_files_dense_maps_and_earlier_blocks(run, cache, tmp_path, capsys):
    from PIL import Image

    from vitkit.frozen.store import FeatureSet

    for i in range(3):
        Image.fromarray((np.arange(64).reshape(8, 8) * (i + 1) % 256).astype(np.uint8)).save(tmp_path / f"{i}.png")
    out = tmp_path / "d.safetensors"
    code, text, _ = cli(capsys, "features", str(tmp_path / "0.png"), str(tmp_path / "1.png"), str(tmp_path / "2.png"),
                        "--checkpoint", str(run), "--dense", "--layers", "0", "-1", "--out", str(out))
    assert code == 0 and "3 embeddings of shape 32x2x2" in text
    fs = FeatureSet.load(out)
    predictor = Predictor.load(run)
    batch = predictor.inputs([tmp_path / f"{i}.png" for i in range(3)])
    torch.testing.assert_close(fs.features, predictor.features(batch, "dense"))
    torch.testing.assert_close(fs.layers[1], fs.features)  # the last block through the final norm: the dense map
    _, inter = predictor.model.forward_intermediates(batch, [0], norm=True)
    torch.testing.assert_close(fs.layers[0], inter[0])
    assert fs.labels.tolist() == [-1, -1, -1] and fs.splits == ["files"] * 3


def test_knn_json_equals_the_brute_force_vote_on_the_written_features(run, cache, tmp_path, capsys):
    from vitkit.frozen.store import FeatureSet

    out = tmp_path / "f.safetensors"
    assert cli(capsys, "features", "digits", "--checkpoint", str(run), "--embedding", "cls", "--out", str(out))[0] == 0
    code, text, _ = cli(capsys, "knn", "--checkpoint", str(run), "--k", "1", "20", "--json")
    assert code == 0
    result = json.loads(text)
    fs = FeatureSet.load(out)
    train_x, train_y = (t.double().numpy() for t in fs.part("train"))
    for split in ("val", "test"):
        qx, qy = (t.double().numpy() for t in fs.part(split))
        for k in (1, 20):
            _, ranks = brute_force_knn(train_x, train_y.astype(int), qx, k, 0.07, 10)
            got = result["results"][split][str(k)]
            assert got["n"] == len(qy)
            assert abs(got["top1"] - (ranks[:, 0] == qy).mean()) <= 1 / len(qy)  # float32 vs float64 near-ties
            assert abs(got["top5"] - (ranks[:, :5] == qy[:, None]).any(1).mean()) <= 1 / len(qy)
    assert result["best_k_on_val"] in (1, 20) and result["embedding"] == "cls"


def test_probe_writes_a_run_that_eval_predict_and_the_report_read(run, cache, tmp_path, monkeypatch, capsys):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from vitkit.frozen.cache import split_features

    out = tmp_path / "probes"
    code, text, err = cli(capsys, "probe", "--checkpoint", str(run), "--embedding", "mean", "--out-dir", str(out),
                          "--set", "probe.Cs=[0.01, 1, 100]")
    assert code == 0, err
    folder = out / "probe-mean"
    results = json.loads((folder / "results.json").read_text())
    grid = results["probe"]["grid"]
    assert [r["C"] for r in grid] == [0.01, 1.0, 100.0] and results["chosen_on"] == "val"
    assert results["probe"]["C"] == max(grid, key=lambda r: (r["val_accuracy"], -r["C"]))["C"]
    assert (folder / "report.html").is_file() and (folder / "predictions" / "test.csv").is_file()
    # scikit-learn on the same (cached) features predicts what the run recorded
    predictor = Predictor.load(run)
    splits = predictor.splits()
    feats = {s: split_features(predictor, splits, s, "mean").part(s) for s in ("train", "val", "test")}
    scaler = StandardScaler().fit(feats["train"][0].double().numpy())
    lr = LogisticRegression(C=results["probe"]["C"], max_iter=1000).fit(
        scaler.transform(feats["train"][0].double().numpy()), feats["train"][1].numpy())
    for split in ("val", "test"):
        x, y = feats[split]
        accuracy = (lr.predict(scaler.transform(x.double().numpy())) == y.numpy()).mean()
        assert results[f"{split}_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    # vitkit eval re-scores the checkpoint from images: the recorded figures
    for extra, split in (([], "val"), (["--split", "test"], "test")):
        code, text, _ = cli(capsys, "eval", "--checkpoint", str(folder), *extra)
        assert code == 0 and f"top-1 {results[f'{split}_accuracy']:.4f}" in text
    from PIL import Image
    Image.fromarray((np.arange(64).reshape(8, 8) * 4).astype(np.uint8)).save(tmp_path / "x.png")
    code, text, _ = cli(capsys, "predict", str(tmp_path / "x.png"), "--checkpoint", str(folder / "checkpoints" / "best"),
                        "--json")
    assert code == 0 and len(json.loads(text)[0]["top_k"]) == 5


def test_bad_input_is_one_sentence_and_exit_2(run, cache, tmp_path, capsys):
    from vitkit.checkpoint import save_weights
    from vitkit.model import VisionTransformer

    nocls = VisionTransformer(img_size=8, patch_size=4, in_channels=1, num_classes=10, embed_dim=16, depth=1,
                              num_heads=2, class_token=False, pool="mean")
    path = save_weights(nocls, tmp_path / "nocls", {"classes": [str(i) for i in range(10)], "dataset": "digits",
                                                     "data": {"dataset": "digits", "val_fraction": 0.1}})
    for argv, words in [
        (["knn", "--checkpoint", str(path), "--embedding", "cls"], "[CLS]"),
        (["probe", "--checkpoint", str(run), "--embedding", "pixels"], "must be one of"),
        (["knn", "--checkpoint", str(run), "--k", "0"], "1 or more"),
        (["knn", "--checkpoint", str(run), "--temperature", "-1"], "above 0"),
        (["knn", "--checkpoint", str(run), "--k", "2000"], "at most 1295"),
        (["probe", "--checkpoint", str(run), "--set", "probe.Cs=[]"], "probe.Cs"),
        (["knn", "--checkpoint", str(run), "--data", "no-such-set"], "unknown data set"),
    ]:
        code, _, err = cli(capsys, *argv)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, argv
    # a model without [CLS] defaults to mean features
    code, text, _ = cli(capsys, "knn", "--checkpoint", str(path), "--k", "5", "--json")
    assert code == 0 and json.loads(text)["embedding"] == "mean"
