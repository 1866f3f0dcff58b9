"""What a resume trains with: the run's own saved config, changed only where a change has a defined meaning
mid-run (:data:`~vitkit.train.config.RESUMABLE_CHANGES`), which run a ``--resume`` names, and which of its
training state files it continues from. :func:`resolve_resume` is the entry: ``vitkit train`` (for
``--print-config`` too) and :func:`vitkit.train.train` both call it.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..typed_config import apply_overrides, load_config
from ..errors import CheckpointError, ConfigError
from ..runs import Run
from .checkpoint import find_resumable, load_training_state, resolve_state_path
from .config import RESUMABLE_CHANGES, RunConfig, load_run_config, validate


def resolve_resume(cfg: RunConfig, resume: str, overrides: list[str] | None = None, *, run_dir=None,
                   judge: bool = True) -> tuple[RunConfig, Run, list[tuple[str, object, object]]]:
    """A resume's (config, run, changes): the run ``resume`` names (``run_dir`` when given), and the config
    :func:`resume_config` makes of ``cfg`` with the changes it allows. ``overrides`` are the command line's
    ``--set`` values: given, they apply to the run's saved config, so a recipe (or none) only names the run.
    ``judge=False`` returns that config unjudged, and no changes: ``vitkit train`` passes it to
    :func:`~vitkit.train.trainer.train`, which judges it once it holds the run's lock (a run in use is said
    before anything about its config). On a config it returned, it returns the same."""
    run = Run(run_dir) if run_dir is not None else Run(resume_folder(cfg, resume))
    if overrides is not None and run.config_path.is_file():
        cfg = load_run_config(run.config_path, overrides)
    if not judge:
        return cfg, run, []
    cfg, changes = resume_config(cfg, run)
    return cfg, run, changes


def resume_config(cfg: RunConfig, run: Run) -> tuple[RunConfig, list[tuple[str, object, object]]]:
    """The config a resume of ``run`` trains with: the run's saved config.yaml, with the changes ``cfg`` makes
    to it applied when they are in :data:`RESUMABLE_CHANGES`; any other change is one ConfigError naming the
    keys. Returns (config, [(key, saved value, new value)])."""
    if not run.config_path.is_file():
        return cfg, []
    saved_raw = load_config(run.config_path)
    saved = _leaves(validate(saved_raw).to_dict())
    new = _leaves(cfg.to_dict())
    changes = [(k, saved.get(k), v) for k, v in new.items()
               if k in saved and v != saved[k] and not (v is None and (k == "data.channels" or k.startswith("model.")))]
    refused = [f"{k} {old!r} -> {value!r}" for k, old, value in changes if k not in RESUMABLE_CHANGES]
    if refused:
        raise ConfigError(f"a resume trains with the run's own config ({run.config_path}), but this one changes "
                          f"{'; '.join(refused)}; start a new run (without --resume), or fine-tune from this one "
                          f"with --set model.init={run.best_weights}")
    return validate(apply_overrides(saved_raw, [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}"
                                                for k, _, v in changes])), changes


WHOLE = ("train.lora",)  # compared as one value: null -> {rank: 8, ...} is a change, not a new key


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and f"{prefix}{k}" not in WHOLE:
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


def resume_folder(cfg: RunConfig, resume: str) -> Path:
    """The run a ``--resume`` names: ``auto`` is ``out_dir/name``; a path is a run folder or a file in it."""
    if resume == "auto":
        return Path(cfg.out_dir) / cfg.name
    p = Path(resume)
    run = Run.of_checkpoint(p) or (Run(p) if Run(p).has_checkpoints() else None)
    if run is None:
        run = Run(resolve_state_path(resume).resolve().parent.parent)
    return run.path


def load_resume_state(resume: str, checkpoint_dir: Path) -> tuple[Path, dict] | None:
    """The training state a resume continues from, as (its file, its contents): the file ``resume`` names,
    else (``auto`` or a run folder) the run's newest valid one; None when an ``auto`` run has none yet."""
    if resume == "auto" or Path(resume).is_dir():
        found = find_resumable(checkpoint_dir)
        if found is None and resume != "auto":
            raise CheckpointError(f"cannot resume from {resume}: {checkpoint_dir} holds no training state")
        return found
    path = resolve_state_path(resume)
    return path, load_training_state(path)
