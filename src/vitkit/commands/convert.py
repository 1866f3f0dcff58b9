"""``vitkit convert``: a foreign weights file (any from_pretrained reads, with a rules file for the tensors no
layout places) written as an ordinary vitkit checkpoint, which ``predict``, ``eval``, ``serve`` and ``train
--set model.init=`` read like one of vitkit's own."""

from __future__ import annotations

import argparse

from .args import model_settings, read_rules
from .inspect import add_source_options, describe


def main(argv: list[str] | None = None) -> int:
    from ..checkpoint import save_weights
    from ..geometry import pair
    from ..data.preprocess import Preprocess
    from ..errors import CheckpointError
    from ..model import VisionTransformer

    p = argparse.ArgumentParser(prog="vitkit convert", description="Write a weights file of another layout as a "
                                "vitkit checkpoint (.safetensors with its architecture), exactly: what no layout "
                                "places needs a rule in --rules (vitkit inspect FILE prints a table to start from).")
    add_source_options(p)
    p.add_argument("--out", required=True, metavar="OUT.safetensors", help="the vitkit checkpoint to write")
    args = p.parse_args(argv)
    rules, settings = read_rules(args.rules), model_settings(args.sets)
    try:
        model = VisionTransformer.from_pretrained(args.file, args.source, rules=rules, **settings)
    except CheckpointError as e:  # the ready table in YAML, for a rules file
        if getattr(e, "yaml_details", None):
            raise CheckpointError(e.cli_sentence + e.yaml_details) from None
        raise
    meta = {"converted_from": str(args.file), "rules": args.rules, "source": args.source}
    if model.pretrained_classes:
        meta["classes"] = list(model.pretrained_classes)
    if model.pretrained_preprocess:  # how the source's images were prepared, when it says
        prep = Preprocess(pair(model.config.img_size), **model.pretrained_preprocess)
        meta.update(preprocess=prep.to_dict(), mean=list(prep.mean), std=list(prep.std))
    path = save_weights(model, args.out, meta)
    print(f"wrote {path}: {describe(model.config)}")
    return 0
