"""``vitkit train``: a run from a recipe, YAML and ``--set`` overrides, or a resume."""

from __future__ import annotations

import argparse
from pathlib import Path


def training_recipes() -> list[str]:
    """Names of the packaged recipes that are training configs (the folder also holds other tools' configs)."""
    import dataclasses

    import yaml

    from ..train.config import RunConfig, packaged_config_dir
    keys = {f.name for f in dataclasses.fields(RunConfig)}
    names = []
    for path in sorted(packaged_config_dir().glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        if isinstance(data, dict) and set(data) <= keys:
            names.append(path.stem)
    return names


def recipe_path(config: str | None) -> Path | None:
    """``--config``: a YAML file, or the name of a packaged recipe (a folder of the same name, such as the
    data folder ``fashion-mnist/``, does not hide the recipe)."""
    from ..errors import ConfigError
    from ..train.config import packaged_config_dir

    if config is None or Path(config).is_file():
        return None if config is None else Path(config)
    packaged = packaged_config_dir() / f"{config}.yaml"
    if packaged.is_file():
        return packaged
    raise ConfigError(f"config {config!r} is neither a file nor a recipe; recipes: {', '.join(training_recipes())}")


def check_config(cfg, split_file=None) -> None:
    """What training checks before it builds anything (:func:`vitkit.train.plan.plan_run`), in this
    single process: ``--print-config`` prints only a config that training would take."""
    import warnings

    from ..data.datasets import SHAPES, canonical_name, is_on_disk
    from ..train.config import resolve_model_config
    from ..devices import pick_device
    from ..train.distributed import NO_GPU_TRAINING, Context
    from ..train.memory import check_fits
    from ..train.plan import plan_run

    ctx = Context(0, 1, 0, pick_device(cfg.device, 0, NO_GPU_TRAINING))
    name = canonical_name(cfg.data.dataset)
    if name not in SHAPES or cfg.data.download or is_on_disk(name, cfg.data.root):
        plan_run(cfg, ctx, split_file)
        return
    channels, side, classes = SHAPES[name]  # not fetched yet: the model section against the set's known shape
    if not cfg.model.init:  # (model.init: the weights decide, checked when training loads them)
        model = resolve_model_config(cfg.model, in_channels=channels, num_classes=classes, img_size=side)
        check_fits(model, cfg.data.batch_size, ctx.device, ema=bool(cfg.train.ema_decay),
                   grad_checkpointing=cfg.train.grad_checkpointing)
    warnings.warn(f"data set {name} is not on this machine, so the model section was checked against its shape "
                  f"({channels}x{side}x{side}, {classes} classes) and the data section was not read", stacklevel=2)


def main(argv: list[str] | None = None) -> int:
    import yaml

    from ..train.config import load_run_config
    from ..train.resume import resolve_resume
    from ..train.trainer import train

    parser = argparse.ArgumentParser(
        prog="vitkit train", description="Train a ViT from a YAML recipe. With no arguments: the digits recipe "
        "(a small ViT on scikit-learn's 8x8 digits, CPU, under a minute).",
        epilog=f"recipes: {', '.join(training_recipes())} (pass --config configs/NAME.yaml or just --config NAME); "
        "every key: vitkit config")
    parser.add_argument("--config", help="YAML recipe (a path, or the name of a packaged recipe)")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[],
                        metavar="SECTION.KEY=VALUE", help="override config values (YAML syntax), e.g. --set "
                        "optim.lr=3e-4 train.epochs=20; repeatable")
    parser.add_argument("--resume", metavar="auto|PATH",
                        help="'auto': continue runs/NAME from its newest valid checkpoint (or start it); "
                        "PATH: a run folder or checkpoint to continue. A resume keeps the run's config; "
                        "--set may change train.epochs and a few other keys (see 'vitkit config')")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (recipe < YAML < --set, every default filled in) and exit")
    args = parser.parse_args(argv)

    cfg = load_run_config(recipe_path(args.config), args.overrides)
    split_file = None
    if args.resume is not None:  # a resume starts from the run's own config, --set applied to it
        cfg, run, _ = resolve_resume(cfg, args.resume, args.overrides, judge=args.print_config)
        split_file = run.split_path if run.split_path.is_file() else None
    if args.print_config:  # the model section as given: the rest comes from the preset, the data or the defaults
        check_config(cfg, split_file)
        print(yaml.safe_dump({**cfg.to_dict(), "model": cfg.model.given()}, sort_keys=False), end="")
        print("# model: keys not listed take the preset's (model.name) or ViTConfig's defaults; in_channels, "
              "num_classes and img_size come from the data")
        return 0
    return train(cfg, resume=args.resume)
