"""Which table reads a source (its detected or forced layout, extended by a caller's ``rules=``), and what
to tell a person when tensors are left unplaced: those tensors grouped by block, the nearest known layout,
and a ready-to-edit rule table for them (Python for ``rules=``, YAML for ``vitkit inspect`` / ``convert``).

The error is a :class:`CheckpointError` whose first line is one sentence; the grouped tensors and the table
follow on the next lines (the command line prints the first line after ``vitkit CMD: error:`` and the rest
as it is)."""

from __future__ import annotations

import json
import re

import torch

from ..errors import CheckpointError, ConfigError
from .catalog import DETECTION_ORDER, FORMATS, SOURCE_ALIASES
from .convert import _strip, convert_state_dict, unplaced_keys, unwrap
from .rules import Format, custom_format, extend_format

Tensor = torch.Tensor
MAX_ROWS = 40  # rows of a ready table; vitkit inspect lists every tensor


def find_format(state: dict) -> str | None:
    """The first format (most specific first) whose marker keys the state dict has, or None."""
    return next((name for name in DETECTION_ORDER if _strip(state, FORMATS[name]) is not None), None)


def detect_format(state: dict) -> str:
    """The first format whose marker keys the state dict has; none: every tensor, grouped, in one error."""
    name = find_format(state)
    if name is None:
        raise undetected_error(state)
    return name


def choose_format(read, source: str = "auto", rules=None) -> Format:
    """The table that reads ``read`` (a :class:`~vitkit.interop.sources.Source`): the layout ``source`` names
    or its keys show, with ``rules`` in front (they add to and override what the layout places); ``rules``
    alone when no layout is found or ``source='rules'``. No layout and no rules: the grouped error."""
    if source not in SOURCE_ALIASES:
        raise ConfigError(f"unknown weights source {source!r}; expected one of: {', '.join(SOURCE_ALIASES)}")
    name = SOURCE_ALIASES[source]
    if name == "rules":
        if rules is None:
            raise ConfigError("source='rules' reads the weights with the rules= table alone, but no rules= "
                              "table was given")
        return custom_format(rules)
    if name == "auto":
        name = read.format or find_format(unwrap(read.state))
        if name is None:
            if rules is not None:
                return custom_format(rules)
            raise undetected_error(read.state)
    return FORMATS[name] if rules is None else extend_format(FORMATS[name], rules)


def _tensors(state: dict) -> dict:
    return {k: v for k, v in unwrap(state).items() if isinstance(v, Tensor)}


def nearest_layout(state: dict) -> tuple[str | None, int, int]:
    """The known format whose table places the most of ``state``'s tensors (markers aside): (name or None when
    none places any, how many it places, how many tensors there are)."""
    total, best = len(_tensors(state)), (None, 0)
    for name in DETECTION_ORDER:
        try:
            converted, _, _ = convert_state_dict(state, name)
        except Exception:  # a table whose facts do not fit these keys places nothing
            continue
        placed = total - len(unplaced_keys(converted))
        if placed > best[1]:
            best = (name, placed)
    return best[0], best[1], total


def _few(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _block_patterns(spec: Format | None, keys: list[str]) -> list[re.Pattern]:
    """Regexes (prefix, index, rest) for the block keys: the prefixes of the table's ``{i}`` rules (a
    placeholder such as ``{enc}`` matching any text) and vitkit's ``blocks.``; for an unknown layout, the
    numbered prefix most keys share."""
    prefixes = {re.escape("blocks.")}
    for rule in spec.rules if spec else ():
        for t in rule.theirs:
            if "{i}" in t:
                parts = re.split(r"\{\w+\}", t.split("{i}")[0])
                prefixes.add(".*?".join(re.escape(p) for p in parts))
    counts: dict[str, set] = {}
    for k in keys:
        for m in re.finditer(r"(?:^|\.)(\d+)\.", k):
            counts.setdefault(k[:m.start(1)], set()).add(m.group(1))
    common = max(((p, len(v)) for p, v in counts.items() if len(v) > 2), key=lambda pv: pv[1], default=None)
    known = [re.compile(f"^({p})(\\d+)\\.(.+)$") for p in sorted(prefixes, key=len, reverse=True)]
    if common and not any(rx.match(k) for rx in known for k in keys):
        known.append(re.compile(f"^({re.escape(common[0])})(\\d+)\\.(.+)$"))
    return known


def block_span(indices: list[int]) -> str:
    """``blocks 0-11`` for a run of indices, else ``block 3`` / ``blocks 0, 2, 5``."""
    if len(indices) > 1 and indices == list(range(indices[0], indices[-1] + 1)):
        return f"blocks {indices[0]}-{indices[-1]}"
    return ("block " if len(indices) == 1 else "blocks ") + ", ".join(map(str, indices))


def group_keys(keys: list[str], spec: Format | None = None) -> tuple[dict, list[str]]:
    """``({their key with {i}: block indices}, other keys)``: block tensors once per template."""
    patterns = _block_patterns(spec, keys)
    templates: dict[str, list[int]] = {}
    other = []
    for k in keys:
        m = next((m for rx in patterns if (m := rx.match(k))), None)
        if m is None:
            other.append(k)
        else:
            templates.setdefault(f"{m.group(1)}{{i}}.{m.group(3)}", []).append(int(m.group(2)))
    return {t: sorted(set(v)) for t, v in templates.items()}, other


def grouped_lines(keys: list[str], spec: Format | None = None, shapes: dict | None = None) -> list[str]:
    """One line per set of blocks ("blocks 0-11: encoder.layers.{i}.foo.weight, ...") and one for the rest."""
    templates, other = group_keys(keys, spec)
    by_span: dict[str, list[str]] = {}
    for t, idx in templates.items():
        by_span.setdefault(block_span(idx), []).append(t)
    shape = (lambda k: f" {tuple(shapes[k])}" if shapes and k in shapes else "")
    lines = [f"  {span}: " + ", ".join(ts) for span, ts in by_span.items()]
    return lines + (["  not in a block: " + ", ".join(f"{k}{shape(k)}" for k in other)] if other else [])


def rule_table(keys: list[str], spec: Format | None = None, shapes: dict | None = None, yaml: bool = False,
               limit: int | None = MAX_ROWS) -> str:
    """A ready-to-edit table placing ``keys``: each row maps a placeholder (``?`` and their key's name, to be
    replaced by the vitkit key that tensor is) to their key, with its shape as a comment; at most ``limit``
    rows (None: all)."""
    templates, other = group_keys(keys, spec)
    rows = []
    for t, idx in templates.items():
        rest = t.split("{i}.", 1)[1]
        first = t.replace("{i}", str(idx[0]))
        rows.append((f"blocks.{{i}}.?{rest}", t, first))
    rows += [(f"?{k}", k, k) for k in other]
    shape = (lambda k: f"  # {tuple(shapes[k])}" if shapes and k in shapes else "")
    more = []
    if limit is not None and len(rows) > limit:
        more, rows = [f"    # ... and {len(rows) - limit} more (vitkit inspect lists them all)"], rows[:limit]
    if yaml:
        head = "# rules.yaml: vitkit key: their key(s); replace each '?...' key with the vitkit key that tensor is"
        return "\n".join([head] + [f"{json.dumps(o)}: {json.dumps(t)}{shape(f)}" for o, t, f in rows]
                         + [m.strip() for m in more])
    return "\n".join(["rules = {  # vitkit key: their key(s); replace each '?...' key with the vitkit key that "
                      "tensor is"] + [f"    {json.dumps(o)}: {json.dumps(t)},{shape(f)}" for o, t, f in rows]
                     + more + ["}"])


def _error(sentence: str, how: str, keys: list[str], spec: Format | None, shapes: dict, nearest: str | None
           ) -> CheckpointError:
    """The sentence (``HOW`` standing for ``how``), then (next lines) the nearest layout, the tensors by block
    and the table. For the command line the error also keeps ``cli_sentence`` (HOW: a rules file) and
    ``yaml_details`` (the table in YAML)."""
    near = f"\nthe nearest known layout: {nearest}" if nearest else ""
    listed = f"{near}\nunplaced:\n" + "\n".join(grouped_lines(keys, spec, shapes)) + "\n"
    err = CheckpointError(sentence.replace("\0HOW\0", how) + listed + rule_table(keys, spec, shapes))
    err.sentence = sentence.replace("\0HOW\0", how)
    err.cli_sentence = sentence.replace("\0HOW\0", "a rules file (--rules RULES.yaml; source='NAME' below is "
                                        "--source NAME)")
    err.yaml_details = listed + rule_table(keys, spec, shapes, yaml=True)
    err.listed, err.unplaced, err.shapes = listed, keys, shapes
    return err


def unplaced_error(name: str, spec: Format, lost: list[str], state: dict, raw: dict) -> CheckpointError:
    """The tensors no rule placed, in one sentence, then grouped, with the nearest layout and a table."""
    shapes = {k: v.shape for k, v in state.items() if isinstance(v, Tensor)}
    placed = len(_tensors(raw)) - len(lost)
    nearest = f"{spec.label or spec.name} (source={spec.name!r}), which places the other {placed}"
    if spec.name == "custom" or placed < len(lost):  # another layout may do better
        near, count, total = nearest_layout(raw)
        if near != spec.name:
            nearest = (f"{FORMATS[near].label or near} (source={near!r} places {count} of the {total} tensors; "
                       "rules= then need only name the rest)") if near else None
    return _error(f"{name} read as the {spec.label or spec.name} layout leaves {len(lost)} tensor(s) no vitkit "
                  f"key fits ({_few(lost)}); give just those a vitkit key with \0HOW\0, starting from the table "
                  "below, as examples/load_custom_vit.py shows",
                  "from_pretrained(..., rules={vitkit key: their key(s)})", lost, spec, shapes, nearest)


def undetected_error(state: dict) -> CheckpointError:
    """No layout's markers are in ``state``: every tensor, grouped, the nearest layout and a full table."""
    tensors = _tensors(state)
    keys = list(tensors)
    near, count, total = nearest_layout(state)
    nearest = (f"{FORMATS[near].label or near} (source={near!r} places {count} of the {total} tensors; rules= "
               "then need only name the rest)") if near else None
    return _error(f"cannot tell the format of these weights: no layout vitkit knows (docs/formats.md) places "
                  f"{_few(keys) or 'them'}; map them to vitkit's keys with \0HOW\0, starting from the table below, "
                  "as examples/load_custom_vit.py shows",
                  "from_pretrained(..., rules={'blocks.{i}.attn.qkv.weight': ('enc.{i}.q.weight', 'enc.{i}.k.weight', "
                  "'enc.{i}.v.weight'), ...})", keys, None, {k: v.shape for k, v in tensors.items()}, nearest)
