"""bench/README.md's figure tables, generated from bench/results/<name>.json.

    .venv/bin/python -m bench.tables            # rewrite the tables in bench/README.md
    .venv/bin/python -m bench.tables --check    # exit 1 when the README differs from the JSON

Strategy: the README holds, for each benchmark, a pair of markers

    <!-- bench:NAME -->
    ...generated, never edited by hand...
    <!-- /bench:NAME -->

and this module replaces what lies between them with the table rendered from
`bench/results/NAME.json` (the file bench.common.write_results writes): one line saying
when, at which commit, how (quick or full, the settings), on what load and whether the goals
were met, then every figure with its value, its peer or limit from the same run, the ratio,
the goal and whether it was met. `make bench` runs it after the benchmarks, and
tests/test_bench_tables.py checks that the committed README equals what this renders from
the committed JSON, so a stale figure cannot survive. No I/O outside `main`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "bench" / "README.md"
RESULTS = ROOT / "bench" / "results"
NAME_PATTERN = r"[a-z][a-z0-9_]*"
OPEN = "<!-- bench:{} -->"
CLOSE = "<!-- /bench:{} -->"
MARKER = re.compile(r"<!-- (/?)bench:([^ >]*) -->")
ERR_UNCLOSED = "marker <!-- bench:{} --> is not closed by <!-- /bench:{} -->"
ERR_STRAY_CLOSE = "marker <!-- /bench:{} --> closes nothing"
ERR_NESTED = "marker <!-- bench:{} --> opens inside <!-- bench:{} -->"
ERR_BAD_NAME = "bad benchmark name {!r} in a marker (want {})"
ERR_TWICE = "benchmark {!r} has two marker pairs"
MISSING = "_No results yet: `bench/results/{}.json` does not exist (run `make bench`)._"
HEADER = ("section", "figure", "value", "peer / limit", "ratio", "goal", "met")
SETTINGS_SKIP = frozenset({"node_args", "described", "date"})  # shown otherwise
# (a multi-line setting, such as a config file's text, stays in the JSON only)


class MarkerError(ValueError):
    """The README's markers do not pair up (the message says which and how)."""


def spans(text: str) -> Iterator[tuple[str, int, int]]:
    """(name, start, end) of the generated part between each marker pair, in order: the
    text from just after `<!-- bench:NAME -->` to just before `<!-- /bench:NAME -->`.
    MarkerError for a bad name, an unclosed, nested, stray or repeated marker."""
    open_name: str | None = None
    open_end = 0
    seen: set[str] = set()
    for match in MARKER.finditer(text):
        closing, name = match.group(1) == "/", match.group(2)
        if not re.fullmatch(NAME_PATTERN, name):
            raise MarkerError(ERR_BAD_NAME.format(name, NAME_PATTERN))
        if not closing:
            if open_name is not None:
                raise MarkerError(ERR_NESTED.format(name, open_name))
            if name in seen:
                raise MarkerError(ERR_TWICE.format(name))
            open_name, open_end = name, match.end()
            continue
        if open_name != name:
            if open_name is not None:
                raise MarkerError(ERR_UNCLOSED.format(open_name, open_name))
            raise MarkerError(ERR_STRAY_CLOSE.format(name))
        seen.add(name)
        yield name, open_end, match.start()
        open_name = None
    if open_name is not None:
        raise MarkerError(ERR_UNCLOSED.format(open_name, open_name))


def marker_names(text: str) -> list[str]:
    """The benchmarks the README has tables for, in order."""
    return [name for name, _, _ in spans(text)]


def fill(text: str, blocks: dict[str, str]) -> str:
    """`text` with the part between each marker pair replaced by blocks[name] (framed by
    newlines); names without a block keep their part."""
    out = []
    pos = 0
    for name, start, end in list(spans(text)):
        out.append(text[pos:start])
        out.append(f"\n{blocks[name].strip()}\n" if name in blocks else text[start:end])
        pos = end
    out.append(text[pos:])
    return "".join(out)


# -- rendering ---------------------------------------------------------------------------


def number(value: float) -> str:
    """A figure as the tables print it: thousands separated from 100 up, else 3 digits."""
    if value != value:  # nan: not measured
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _setting(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(_setting(v) for v in value) or "-"
    if isinstance(value, dict):
        return ",".join(f"{k}:{_setting(v)}" for k, v in value.items())
    return str(value)


def settings_text(settings: dict[str, Any]) -> str:
    """`key=value` pairs of the run's settings, in their recorded order."""
    pairs = [f"{k}={_setting(v)}" for k, v in settings.items()
             if k not in SETTINGS_SKIP and not (isinstance(v, str) and "\n" in v)]
    text = " ".join(pairs) or "defaults"
    if "described" in settings:
        text = f"{settings['described']} ({text})"
    return text


def _load_text(doc: dict[str, Any]) -> str:
    machine = doc.get("machine", {})
    start = machine.get("loadavg_at_start", [None])[0]
    end = machine.get("loadavg_at_end", [None])[0]
    parts = []
    if start is not None:
        parts.append(f"load average {start:.2f} at the start")
    if end is not None:
        parts.append(f"{end:.2f} at the end")
    others = machine.get("others_cores_mean")
    if others is not None:
        parts.append(f"other processes {others:.2f} cores during the timed windows")
    return ", ".join(parts) or "load not recorded"


def _outcome_text(outcome: dict[str, Any]) -> str:
    if outcome["met"]:
        return f"all {outcome['goals']} goals met, every figure measured"
    parts = []
    if outcome["missed"]:
        parts.append("goals missed: " + "; ".join(outcome["missed"]))
    if outcome["not_measured"]:
        parts.append("not measured: " + "; ".join(outcome["not_measured"]))
    return "**" + " / ".join(parts) + "**"


def summary(doc: dict[str, Any]) -> str:
    """The line above a table: when, which commit, how, on what load, and the outcome."""
    machine = doc.get("machine", {})
    when = str(doc["started"])[:16].replace("T", " ")
    kind = "`--quick` run" if doc.get("quick") else "full run"
    dirty = machine.get("git_uncommitted") or []
    commit = f"`{machine.get('git_commit', '?')}`" + (
        f" plus {len(dirty)} files of uncommitted work" if dirty else "")
    return (f"{kind} of {when} UTC at commit {commit}, "
            f"{machine.get('cpu_count', '?')} cpus ({machine.get('cpu_model', '?')}); "
            f"{_load_text(doc)}. Settings: {settings_text(doc['settings'])}. "
            f"Outcome: {_outcome_text(doc['outcome'])}.")


def _row(figure: dict[str, Any]) -> str:
    met = figure["met"]
    cells = (
        figure["section"], figure["label"], f"{number(figure['value'])} {figure['unit']}",
        f"{figure['peer_label']} {number(figure['peer_value'])}", f"{figure['ratio']:.3f}",
        figure["goal_text"], "-" if met is None else ("yes" if met else "**NO**"),
    )
    return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"


def render(doc: dict[str, Any]) -> str:
    """The markdown block for one results document."""
    lines = [summary(doc), "", "| " + " | ".join(HEADER) + " |",
             "|---|---|---:|---|---:|---|---|"]
    lines += [_row(f) for f in doc.get("figures", [])]
    for skipped in doc.get("skipped", []):
        lines.append(f"| {skipped['section']} | {skipped['label']} | not measured | - | - | - "
                     f"| **NO** |")
    return "\n".join(lines)


def blocks_for(names: list[str], results: Path) -> dict[str, str]:
    """Each name's block from `results/<name>.json` (a note when the file is missing)."""
    blocks = {}
    for name in names:
        path = results / f"{name}.json"
        blocks[name] = render(json.loads(path.read_text())) if path.exists() else \
            MISSING.format(name)
    return blocks


def generate(readme_text: str, results: Path) -> str:
    """The README text with every marked table rendered from `results`."""
    return fill(readme_text, blocks_for(marker_names(readme_text), results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tables",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=README, help="the README to fill")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the JSON directory")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 when the README's tables are stale")
    parser.add_argument("--print", dest="show", action="store_true",
                        help="print the generated tables instead of writing the README")
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    try:
        new = generate(text, args.results)
    except (MarkerError, KeyError, ValueError) as exc:
        print(f"bench.tables: {args.readme}: {exc}", file=sys.stderr)
        return 2
    if args.show:
        for name, block in blocks_for(marker_names(text), args.results).items():
            print(f"## {name}\n\n{block}\n")
        return 0
    if args.check:
        if new != text:
            print(f"{args.readme}: tables differ from {args.results}/*.json "
                  "(run .venv/bin/python -m bench.tables)", file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.readme.write_text(new)
    print(f"bench.tables: {len(marker_names(text))} tables in {args.readme} from "
          f"{args.results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
