"""``vitkit inspect``: how vitkit reads a weights file: the layout it detected, what each tensor became
(grouped by block), what no rule places (with a ready YAML rules table), what was assumed, and the
architecture inferred. Exit 0 when the file loads as given, 1 when it does not (the report says why)."""

from __future__ import annotations

import argparse
import re
import sys
import warnings

from .args import model_settings, read_rules


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitkit inspect", description="Show how vitkit reads a weights file (any "
                                "from_pretrained reads): the detected layout, what each tensor became, what is "
                                "unplaced, what was assumed and the architecture.")
    add_source_options(p)
    return p


def add_source_options(p: argparse.ArgumentParser) -> None:
    """FILE, --rules, --source and --set, as inspect and convert share them."""
    p.add_argument("file", metavar="FILE", help="a weights file or model folder")
    p.add_argument("--rules", metavar="RULES.yaml", help="vitkit key: their key(s) (block index as {i}, transforms "
                   "by name, e.g. 'patches(stem.weight)'); they add to and override the detected layout")
    p.add_argument("--source", default="auto", help="force the layout (a format name of docs/formats.md), or "
                   "'rules': the rules file alone is the layout (default: detected from the keys)")
    p.add_argument("--set", dest="sets", action="extend", nargs="+", default=[], metavar="model.KEY=VALUE",
                   help="what the weights cannot tell, e.g. --set model.num_heads=4 model.norm_style=pre")


def placed_lines(trace: dict, kept: list[str]) -> list[str]:
    """``vitkit key <- transform(their keys)``, one line per key; a block's keys once for all blocks alike."""
    from ..interop.placement import block_span
    rows: dict[tuple[str, str], list[int]] = {}
    plain = []
    for ours, (theirs, fn) in trace.items():
        made = ", ".join(theirs) if fn in ("same", "cat") and len(theirs) <= 1 else f"{fn}({', '.join(theirs)})"
        m = re.match(r"^blocks\.(\d+)\.(.+)$", ours)
        if m:
            i = m.group(1)
            rows.setdefault((m.group(2), re.sub(rf"(^|\.){i}\.", r"\1{i}.", made)), []).append(int(i))
        else:
            plain.append(f"  {ours} <- {made}")
    by_span: dict[str, list[str]] = {}
    for (ours, made), idx in rows.items():
        by_span.setdefault(block_span(sorted(idx)), []).append(f"    {ours} <- {made}")
    lines = [line for span, group in by_span.items() for line in [f"  {span}:", *group]]
    lines += plain
    if kept:
        lines.append("  already vitkit's keys: " + ", ".join(_compact(kept)))
    return lines


def _compact(keys: list[str]) -> list[str]:
    """``blocks.0.norm1.weight ... blocks.11.norm1.weight`` -> ``blocks.{0-11}.norm1.weight``."""
    groups: dict[str, list[int]] = {}
    out = []
    for k in keys:
        m = re.match(r"^blocks\.(\d+)\.(.+)$", k)
        if m:
            groups.setdefault(m.group(2), []).append(int(m.group(1)))
        else:
            out.append(k)
    return [f"blocks.{{{min(v)}-{max(v)}}}.{rest}" if len(v) > 1 else f"blocks.{v[0]}.{rest}"
            for rest, v in groups.items()] + out


def describe(cfg) -> str:
    """The architecture in one line: the fields that shape the model, and those unlike ViTConfig's defaults."""
    from ..config import ViTConfig
    base = ViTConfig().to_dict()
    shape = ("embed_dim", "depth", "num_heads", "patch_size", "img_size", "num_classes")
    d = cfg.to_dict()
    other = [f"{k}={v!r}" for k, v in d.items() if k not in shape and v != base.get(k)]
    return ", ".join([f"{k}={d[k]}" for k in shape] + other)


def main(argv: list[str] | None = None) -> int:
    import torch

    from ..errors import CheckpointError, VitkitError
    from ..interop import load_pretrained, read_source
    from ..interop.convert import VITKIT_MODULES, convert_state_dict, unplaced_keys
    from ..interop.placement import choose_format, grouped_lines, rule_table

    args = parser().parse_args(argv)
    rules, settings = read_rules(args.rules), model_settings(args.sets)
    read = read_source(args.file)
    try:
        spec = choose_format(read, args.source, rules)
    except CheckpointError as e:  # no layout, no rules: every tensor, and the table, in YAML
        if getattr(e, "yaml_details", None):
            print(f"{read.name}: no layout vitkit knows{e.listed}" + rule_table(e.unplaced, None, e.shapes, yaml=True,
                                                                                limit=None))
            print(f"vitkit inspect: {read.name} would not load as it is: no layout vitkit knows places its tensors; "
                  "write the table above to a rules file and pass --rules", file=sys.stderr)
            return 1
        raise
    trace: dict = {}
    converted, pre_logits, _ = convert_state_dict(read.state, spec, trace)
    lost = unplaced_keys(converted)
    kept = [k for k in converted if k not in trace and k.startswith(VITKIT_MODULES)]
    n = sum(isinstance(v, torch.Tensor) for v in converted.values()) + len(pre_logits)
    print(f"{read.name}: read as the {spec.label or spec.name} layout ({spec.name})")
    print("placed:")
    print("\n".join(placed_lines(trace, kept)))
    if pre_logits:  # load_pretrained places it as pre_logits.fc: head(tanh(pre_logits.fc(x)))
        print("  pre_logits.fc <- " + ", ".join(pre_logits) + " (the representation layer, computed)")
    if lost:
        shapes = {k: v.shape for k, v in converted.items() if isinstance(v, torch.Tensor)}
        print(f"unplaced ({len(lost)} of {n}):")
        print("\n".join(grouped_lines(lost, spec, shapes)))
        print(rule_table(lost, spec, shapes, yaml=True, limit=None))
        print(f"vitkit inspect: {read.name} would not load as it is: {len(lost)} tensor(s) no rule places; add "
              "them to a rules file (the table above) and pass --rules", file=sys.stderr)
        return 1
    print("unplaced: none")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            found = load_pretrained(read, args.source, rules=rules, **settings)
            problem = fit_problem(found)
        except VitkitError as e:
            found, problem = None, str(e).splitlines()[0]
    for w in caught:
        print(f"assumed: {w.message}")
    if found is not None:
        print(f"architecture: {describe(found.config)}")
    if problem:
        print(f"vitkit inspect: {read.name} would not load as it is: {problem}", file=sys.stderr)
        return 1
    return 0


def fit_problem(found) -> str | None:
    """Whether the converted tensors fit the inferred model (built on the meta device: no memory), filled as
    :func:`vitkit.pretrained.load` fills it."""
    import torch

    from ..checkpoint import check_state_dict
    from ..errors import CheckpointError
    from ..model import VisionTransformer

    with torch.device("meta"):
        model = VisionTransformer(found.config)
    try:
        check_state_dict(model, found.state_for(model), found.label)
    except CheckpointError as e:
        return str(e)
    return None
