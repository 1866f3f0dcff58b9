"""vitkit zeroshot-head: the checkpoint it writes gives open_clip's zero-shot logits (a tiny random CLIP, float32,
<= 1e-5 relative), from open_clip's text tower or from text embeddings in a file, and bad input is one sentence."""

import json
import math
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from test_interop import images, randomize
from vitkit import cli
from vitkit.checkpoint import save_weights
from vitkit.model import VisionTransformer
from vitkit.predictor import Predictor

open_clip = pytest.importorskip("open_clip")
from open_clip import build_zero_shot_classifier  # noqa: E402
from open_clip.model import CLIP as OpenClip, CLIPTextCfg, CLIPVisionCfg  # noqa: E402

VISION = dict(layers=2, width=64, head_width=16, patch_size=8, image_size=32)
TEXT = dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1)  # open_clip's tokenizer's vocabulary
CLASSES = ["cat", "dog", "sea otter", "traffic light"]
TEMPLATES = ["a photo of a {}.", "a blurry photo of the {}.", "itap of a {}."]
SCALE = 37.5  # logit_scale = ln 37.5: neither CLIP's initial 1 / 0.07 nor its final 100


def rel_diff(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random open_clip CLIP (GELU, 4 heads) saved as a model folder, a class names file, a templates file."""
    root = tmp_path_factory.mktemp("zeroshot")
    clip = randomize(OpenClip(embed_dim=24, vision_cfg=CLIPVisionCfg(**VISION), text_cfg=CLIPTextCfg(**TEXT)))
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(SCALE))
    folder = root / "clip"
    folder.mkdir()
    torch.save(clip.state_dict(), folder / "open_clip_pytorch_model.bin")
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": {"embed_dim": 24, "vision_cfg": VISION, "text_cfg": TEXT},
        "preprocess_cfg": {"mean": mean, "std": std, "interpolation": "bicubic", "resize_mode": "shortest"}}))
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    classifier = build_zero_shot_classifier(clip, tokenizer, CLASSES, TEMPLATES)  # (E, C)
    x = torch.cat([class_images(clip, classifier), images(2, 32)])
    with torch.no_grad():
        image_features = clip.encode_image(x, normalize=True)  # (B, E)
        texts = tokenizer([t.format(c) for c in CLASSES for t in TEMPLATES])
        per_template = clip.encode_text(texts).reshape(len(CLASSES), len(TEMPLATES), -1)  # (C, K, E), un-normed
    return dict(root=root, folder=folder, clip=clip, x=x, classifier=classifier, image_features=image_features,
                per_template=per_template, mean=mean)


def class_images(clip, classifier, steps=15):
    """One image per class that open_clip assigns to it (a few Adam steps from noise): a random tower gives
    every noise image much the same embedding, so that the predicted classes would be equal trivially."""
    x = torch.randn(classifier.shape[1], 3, 32, 32, generator=torch.Generator().manual_seed(1)).requires_grad_()
    opt = torch.optim.Adam([x], lr=0.1)
    clip.requires_grad_(False)
    for _ in range(steps):
        logits = SCALE * clip.encode_image(x, normalize=True) @ classifier
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(x)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return x.detach()


def run(*argv) -> int:
    return cli.main(["zeroshot-head", *map(str, argv)])


def logits_of(path, x):
    with torch.no_grad():
        return Predictor.load(path).model(x)


def test_text_tower_gives_open_clips_zero_shot_logits(tiny, capsys):
    root, clip, x = tiny["root"], tiny["clip"], tiny["x"]
    out = root / "zs.safetensors"
    assert run("--checkpoint", tiny["folder"], "--classes", root / "classes.txt", "--templates",
               root / "templates.txt", "--text-tower", f"open_clip:local-dir:{tiny['folder']}", "--out", out) == 0
    assert "logit scale 37.5 (the text tower's exp(logit_scale))" in capsys.readouterr().out
    want = clip.logit_scale.exp() * tiny["image_features"] @ tiny["classifier"]  # CLIP.get_logits with T
    predictor = Predictor.load(out)
    ours = logits_of(out, x)
    assert rel_diff(ours, want) <= 1e-5 and torch.equal(ours.argmax(1), want.argmax(1))
    assert want.argmax(1)[:4].tolist() == [0, 1, 2, 3]  # every class is predicted once
    assert predictor.classes == CLASSES and list(predictor.preprocess.mean) == tiny["mean"]
    cfg = predictor.model.config
    assert cfg.head_l2norm and not cfg.head_bias and (cfg.head_hidden_dim, cfg.head_act) == (24, "identity")
    assert predictor.meta["zeroshot"]["templates"] == TEMPLATES
    # the normalisation matters: without it the logits differ
    unnormed = VisionTransformer(cfg.replace(head_l2norm=False))
    unnormed.load_state_dict(predictor.model.state_dict())
    with torch.no_grad():
        assert rel_diff(unnormed.eval()(x), want) > 1e-2
    # predict reads it as any checkpoint: its top class is the model's, on its own preprocessing
    from PIL import Image
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / "a.png")
    assert cli.main(["predict", str(root / "a.png"), "--checkpoint", str(out), "--json", "--top-k", "1"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top_k"][0]["class"]
    with torch.no_grad():
        assert top == CLASSES[predictor.model(predictor.inputs([root / "a.png"])).argmax().item()]


def test_text_tower_by_architecture_name_and_weights_file(tiny, monkeypatch, capsys):
    """open_clip:ARCH:FILE: a registered architecture with a bare state dict, which also holds logit_scale."""
    from open_clip import factory
    monkeypatch.setitem(factory._MODEL_CONFIGS, "vitkit-tiny-clip", {"embed_dim": 24, "vision_cfg": VISION,
                                                                     "text_cfg": TEXT})
    root, weights = tiny["root"], tiny["folder"] / "open_clip_pytorch_model.bin"
    out = root / "zs_arch.safetensors"
    assert run("--checkpoint", weights, "--set", "model.act=gelu", "model.num_heads=4", "--classes",
               root / "classes.txt", "--templates", root / "templates.txt", "--text-tower",
               f"open_clip:vitkit-tiny-clip:{weights}", "--out", out) == 0
    assert "(the text tower's exp(logit_scale))" in capsys.readouterr().out
    want = SCALE * tiny["image_features"] @ tiny["classifier"]
    assert rel_diff(logits_of(out, tiny["x"]), want) <= 1e-5


def test_text_embeddings_per_template_from_npy_equal_open_clips_classifier(tiny, capsys):
    """(C, K, E) un-normed embeddings, averaged as open_clip averages; the checkpoint's own logit_scale."""
    root = tiny["root"]
    np.save(root / "text.npy", tiny["per_template"].numpy())
    out = root / "zs_npy.safetensors"
    weights = tiny["folder"] / "open_clip_pytorch_model.bin"
    assert run("--checkpoint", weights, "--set", "model.act=gelu", "model.num_heads=4", "--classes",
               root / "classes.txt", "--text-embeddings", root / "text.npy", "--out", out) == 0
    assert "logit scale 37.5 (the checkpoint's exp(logit_scale))" in capsys.readouterr().out
    want = SCALE * tiny["image_features"] @ tiny["classifier"]
    assert rel_diff(logits_of(out, tiny["x"]), want) <= 1e-5
    # open_clip_train's zero-shot evaluation: 100 * image_features @ classifier
    assert run("--checkpoint", out, "--classes", root / "classes.txt", "--text-embeddings", root / "text.npy",
               "--logit-scale", 100, "--out", out) == 0  # a zero-shot checkpoint is an image tower too
    want = 100 * tiny["image_features"] @ tiny["classifier"]
    assert rel_diff(logits_of(out, tiny["x"]), want) <= 1e-5


def test_a_tower_without_projection_from_named_safetensors_by_hand(tmp_path, capsys):
    """A SigLIP-like tower (MAP pool, num_classes 0): logits = 100 * n(f) @ n(T)^T, computed by hand."""
    torch.manual_seed(0)
    tower = randomize(VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                                        num_classes=0, pool="map", class_token=False))
    save_weights(tower, tmp_path / "siglip.safetensors", {})
    text = torch.randn(3, 32)
    save_file({"text_embeddings": text, "other": torch.zeros(2)}, str(tmp_path / "text.safetensors"))
    (tmp_path / "c.txt").write_text("a\nb\nc\n")
    out = tmp_path / "zs.safetensors"
    assert run("--checkpoint", tmp_path / "siglip.safetensors", "--classes", tmp_path / "c.txt",
               "--text-embeddings", tmp_path / "text.safetensors", "--out", out) == 0
    assert "logit scale 100 (CLIP's final value" in capsys.readouterr().out
    x = images(2, 32)
    with torch.no_grad():
        f = tower(x)
    want = 100 * (f / f.norm(dim=1, keepdim=True)) @ (text / text.norm(dim=1, keepdim=True)).T
    ours = logits_of(out, x)
    assert rel_diff(ours, want) <= 1e-5 and Predictor.load(out).model.config.head_hidden_dim is None


def test_hugging_face_clip_model_folder_and_its_logit_scale(tmp_path, capsys):
    """A whole CLIPModel (its logit_scale beside the towers) by hand: s * n(visual_projection(pooled)) @ n(T)^T."""
    from transformers import CLIPConfig, CLIPModel
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=100,
                max_position_embeddings=8, bos_token_id=0, eos_token_id=1)
    full = randomize(CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=24)))
    with torch.no_grad():
        full.logit_scale.fill_(math.log(SCALE))
    full.save_pretrained(tmp_path / "hf")
    text_emb = torch.randn(2, 5, 24)  # (C, K, E)
    save_file({"text_embeddings": text_emb}, str(tmp_path / "t.safetensors"))
    (tmp_path / "c.txt").write_text("red\nblue\n")
    assert run("--checkpoint", tmp_path / "hf", "--classes", tmp_path / "c.txt", "--text-embeddings",
               tmp_path / "t.safetensors", "--out", tmp_path / "zs") == 0
    assert "logit scale 37.5 (the checkpoint's exp(logit_scale))" in capsys.readouterr().out
    x = images(2, 32)
    with torch.no_grad():
        image = full.visual_projection(full.vision_model(pixel_values=x).pooler_output)
    n = torch.nn.functional.normalize
    want = SCALE * n(image, dim=-1) @ n(n(text_emb, dim=-1).mean(1), dim=-1).T
    assert rel_diff(logits_of(tmp_path / "zs.safetensors", x), want) <= 1e-5


def _embeddings(shape=(3, 24), fill=None):
    def write(path):
        array = np.random.default_rng(0).standard_normal(shape).astype("f4")
        np.save(path, array if fill is None else np.full(shape, fill, "f4"))
        return path
    return write


def _bytes(name, data):
    def write(path):
        (path.parent / name).write_bytes(data)
        return path.parent / name
    return write


def _two_tensors(path):
    save_file({"a": torch.zeros(3, 24), "b": torch.zeros(3, 24)}, str(path.with_suffix(".safetensors")))
    return path.with_suffix(".safetensors")


# case: (class names file (None: no file), embeddings file writer or other text flags, the sentence)
NAMES = "a\nb\nc\n"
TOWER = ["--text-tower", "open_clip:local-dir:{folder}"]
BAD = {
    "no_names": (None, _embeddings(), "a file or folder does not exist for .*c.txt"),
    "empty": ("\n\n", _embeddings(), "class names file .* is empty"),
    "duplicate": ("cat\ndog\ndog\n", _embeddings(), "names 'dog' twice \\(lines 2 and 3\\)"),
    "blank": ("cat\n\ndog\n", _embeddings(), "has an empty line \\(line 2\\)"),
    "count": (NAMES, _embeddings((4, 24)), "has 4 rows but the class names file names 3 classes"),
    "transposed": (NAMES, _embeddings((24, 3)), "it looks transposed"),
    "width": (NAMES, _embeddings((3, 16)), "the text embeddings are 16 wide but the image embedding of .* is 24 wide"),
    "nan": (NAMES, _embeddings(fill=np.nan), "hold NaN or infinite values"),
    "zero": (NAMES, _embeddings(fill=0), "hold an all-zero embedding"),
    "garbage": (NAMES, _bytes("e.npy", b"not numpy at all"), "is not a readable .npy array"),
    "missing": (NAMES, lambda path: path.parent / "absent.npy", "text embeddings file .* does not exist"),
    "suffix": (NAMES, _bytes("e.txt", b"1 2 3"), "must be a .npy or .safetensors file"),
    "several": (NAMES, _two_tensors, "holds 2 tensors \\(a, b\\) and none named 'text_embeddings'"),
    "templates": (NAMES, ["--templates", "simple"], "--templates fills prompts for --text-tower"),
    "scale": (NAMES, ["--logit-scale", "-1"], "--logit-scale must be a positive number"),
    "tower_spec": (NAMES, ["--text-tower", "clip:ViT-B-32"], "--text-tower takes open_clip:ARCH"),
    "no_weights": (NAMES, ["--text-tower", "open_clip:ViT-B-32"], "say which weights"),
    "bad_folder": (NAMES, ["--text-tower", "open_clip:local-dir:{tmp}/nowhere"], "open_clip could not load"),
    "bad_template": (NAMES, [*TOWER, "--templates", "{tmp}/t.txt"], "line 1 \\('a photo'\\) needs one \\{\\}"),
    "no_open_clip": (NAMES, TOWER, "needs open_clip, which is not installed: pip install 'vitkit\\[clip\\]'"),
    # checkpoints whose head is not an image embedding
    "classifier": (NAMES, _embeddings(), "has a head of 24 outputs with a bias, so it is a trained classifier"),
    "mlp": (NAMES, _embeddings(), "has a hidden layer in its head"),
}


def _classifier(tmp_path, **kw):
    """A vitkit classifier as wide as the text embeddings, its head trained (a nonzero bias)."""
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=24, **kw)
    with torch.no_grad():
        model.head.bias.fill_(0.1)
    return save_weights(model, tmp_path / "classifier.safetensors", {})


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_sentence(tiny, tmp_path, monkeypatch, capsys, case):
    import re
    names, text, message = BAD[case]
    if names is not None:
        (tmp_path / "c.txt").write_text(names)
    (tmp_path / "t.txt").write_text("a photo\n")
    if callable(text):
        text = ["--text-embeddings", text(tmp_path / "e.npy")]
    text = [str(t).format(folder=tiny["folder"], tmp=tmp_path) for t in text]
    if case in ("templates", "scale"):
        text = ["--text-embeddings", _embeddings()(tmp_path / "e.npy"), *text]
    if case == "no_open_clip":
        monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip raises ImportError
    checkpoint = {"classifier": lambda: _classifier(tmp_path),
                  "mlp": lambda: _classifier(tmp_path, head_hidden_dim=24)}.get(case, lambda: tiny["folder"])()
    out = tmp_path / "o.safetensors"
    assert run("--checkpoint", checkpoint, "--classes", tmp_path / "c.txt", *text, "--out", out) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(message, err), err
    assert not out.exists()
