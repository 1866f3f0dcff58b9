"""``vitkit zeroshot-head``: a CLIP / SigLIP image tower written as a vitkit checkpoint whose head classifies
by text embeddings of class names (see :mod:`vitkit.zeroshot`): logits = s * n(P f(x)) @ T^T, T (C, E) the
twice-normalised mean of each class's prompt embeddings, so ``predict``, ``serve`` and ``eval`` use it as it is."""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import model_settings


def build_parser() -> argparse.ArgumentParser:
    from ..zeroshot import DEFAULT_LOGIT_SCALE, EMBEDDINGS_KEY

    p = argparse.ArgumentParser(prog="vitkit zeroshot-head", description="Write a CLIP or SigLIP image tower as a "
                                "vitkit checkpoint whose head is a zero-shot classifier: logits = s * "
                                "normalize(image embedding) @ T^T, T the normalised mean of each class's "
                                "normalised prompt embeddings (open_clip's build_zero_shot_classifier).")
    p.add_argument("--checkpoint", required=True, help="the image tower: any weights from_pretrained reads (an "
                   "open_clip / Hugging Face / timm CLIP or SigLIP file or folder, a vitkit checkpoint)")
    p.add_argument("--classes", required=True, metavar="NAMES.txt", help="one class name a line")
    text = p.add_mutually_exclusive_group(required=True)
    text.add_argument("--text-embeddings", metavar="E", help="a .npy or .safetensors tensor (classes, width) or "
                      f"(classes, templates, width), rows in the order of --classes (a .safetensors file of several "
                      f"tensors: the one named {EMBEDDINGS_KEY!r})")
    text.add_argument("--text-tower", metavar="open_clip:ARCH[:PRETRAINED_OR_FILE]", help="compute them with "
                      "open_clip's text tower (pip install 'vitkit[clip]'): open_clip:ViT-B-32:FILE_OR_TAG, "
                      "open_clip:local-dir:FOLDER (with open_clip_config.json) or open_clip:hf-hub:ORG/NAME")
    p.add_argument("--templates", default=None, help="with --text-tower: openai (open_clip's 80 ImageNet prompts, "
                   "the default), simple (its 7) or a file of one template a line, {} for the name")
    p.add_argument("--logit-scale", type=float, default=None, metavar="S", help="s (default: the text tower's "
                   f"exp(logit_scale), else the checkpoint's, else {DEFAULT_LOGIT_SCALE:g} as CLIP ends training)")
    p.add_argument("--set", dest="sets", action="extend", nargs="+", default=[], metavar="model.KEY=VALUE",
                   help="what the image weights cannot tell, e.g. --set model.act=gelu model.num_heads=12")
    p.add_argument("--device", default="auto", help="where the text tower runs (auto, cpu, cuda)")
    p.add_argument("--out", required=True, metavar="OUT.safetensors", help="the vitkit checkpoint to write")
    return p


def main(argv: list[str] | None = None) -> int:
    from .. import zeroshot as zs
    from ..checkpoint import save_weights
    from ..errors import ConfigError
    from .inspect import describe

    args = build_parser().parse_args(argv)
    if args.templates is not None and args.text_tower is None:
        raise ConfigError("--templates fills prompts for --text-tower; --text-embeddings are already embedded")
    if args.logit_scale is not None:
        zs.check_logit_scale(args.logit_scale)
    classes = zs.read_class_names(args.classes)
    tower, meta, stored_scale = load_image_tower(args.checkpoint, model_settings(args.sets))
    zs.image_projection(tower, args.checkpoint)  # a classifier is refused before any text is embedded

    templates, text_scale = None, None
    if args.text_embeddings is not None:
        embeddings = zs.read_text_embeddings(args.text_embeddings)  # (C, E) or (C, K, E)
        zs.check_rows(embeddings, classes, args.text_embeddings)
        weights, text = zs.class_weights(embeddings), f"text embeddings {args.text_embeddings}"
    else:
        from ..devices import pick_device
        device = pick_device(args.device, no_gpu="use --device cpu (or auto)")
        zs.import_open_clip()
        templates = zs.read_templates(args.templates or "openai")
        model, tokenizer = zs.open_clip_text_tower(args.text_tower, device)
        weights = zs.open_clip_class_weights(model, tokenizer, classes, templates, device)
        text_scale, text = model.logit_scale.detach().exp().item(), f"{args.text_tower}, {len(templates)} templates"

    scale, said = next((s, why) for s, why in (
        (args.logit_scale, "--logit-scale"), (text_scale, "the text tower's exp(logit_scale)"),
        (stored_scale, "the checkpoint's exp(logit_scale)"),
        (zs.DEFAULT_LOGIT_SCALE, "CLIP's final value; neither the checkpoint nor a text tower gave one"))
        if s is not None)
    model = zs.zero_shot_model(tower, weights, scale, args.checkpoint)
    meta.update(classes=classes, zeroshot={"image_tower": str(args.checkpoint), "text": text, "templates": templates,
                                           "logit_scale": scale, "logit_scale_from": said})
    path = save_weights(model, args.out, meta)
    print(f"wrote {path}: {len(classes)}-class zero-shot head ({text}) on {describe(model.config)}")
    print(f"logit scale {scale:.6g} ({said})")
    return 0


def load_image_tower(checkpoint: str, settings: dict):
    """(model, metadata to keep, stored exp(logit_scale) or None) of an image tower's weights. The metadata is
    its preprocessing (a vitkit file's own record, else what the source says); a head that loading replaced
    (a classifier on other features) is refused."""
    from ..geometry import pair
    from ..data.preprocess import Preprocess
    from ..errors import CheckpointError
    from ..interop import load_pretrained
    from ..interop.sources import read_source
    from ..model import VisionTransformer
    from ..zeroshot import stored_logit_scale

    read = read_source(checkpoint)
    found = load_pretrained(read, **settings)
    if found.fresh_head:
        raise CheckpointError(f"{checkpoint} has a classifier head rather than an image embedding, so it is not a "
                              "CLIP image tower")
    model = VisionTransformer(found.config)
    model.load_state_dict(found.state)
    model.eval()
    cfg, scale = found.config, stored_logit_scale(read.state)
    if read.format == "vitkit" and Path(read.name).is_file():
        own = read.metadata  # the file's own record, read with its tensors
        prep = Preprocess.from_metadata(own, cfg.img_size, cfg.in_channels)
        if scale is None:  # a zero-shot head built before, given other classes
            scale = (own.get("zeroshot") or {}).get("logit_scale")
    elif found.preprocess:
        prep = Preprocess(pair(cfg.img_size), **found.preprocess)
    else:
        return model, {}, scale
    return model, {"preprocess": prep.to_dict(), "mean": list(prep.mean), "std": list(prep.std)}, scale
