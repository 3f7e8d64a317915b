"""Every option of every command line has help text (issue 15).

Strategy: build each package's parser (`build_parser()` of idgen, kvcache, scheduler,
shardstore and dfs's __main__), walk it and every subcommand's parser down to the leaves,
and check: each option and positional has non-empty help, each subcommand has a summary in
its parent's listing, and `--help` renders (a stray `%` in a help string breaks argparse
only when help is printed). Hidden options (argparse.SUPPRESS) are allowed only for the
test-only knobs named in TEST_ONLY, each hidden on purpose; a new hidden option fails here.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Iterator

import pytest

PACKAGES = ("idgen", "kvcache", "scheduler", "shardstore", "dfs")
# options only tests pass (a shifted clock, small steps to kill a node mid-way): hidden
TEST_ONLY = frozenset({"--clock-offset-ms", "--compaction-margin", "--move-batch-keys"})

Parser = argparse.ArgumentParser


def build(package: str) -> Parser:
    parser = importlib.import_module(f"{package}.__main__").build_parser()
    assert isinstance(parser, Parser)
    return parser


def parsers(parser: Parser, path: tuple[str, ...]) -> Iterator[tuple[str, Parser]]:
    """(command path, parser) of `parser` and of every subcommand under it (aliases once)."""
    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield from parsers(sub, (*path, name))


def all_parsers() -> list[tuple[str, Parser]]:
    return [item for package in PACKAGES for item in parsers(build(package), (package,))]


def undocumented(parser: Parser) -> list[str]:
    """The options and positionals of `parser` without help (hidden test knobs aside)."""
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        if action.help == argparse.SUPPRESS:
            if not set(action.option_strings) & TEST_ONLY:
                missing.append(f"{name} (hidden)")
        elif not (action.help or "").strip():
            missing.append(name)
    return missing


def unsummarised(parser: Parser) -> list[str]:
    """The subcommands of `parser` without a summary in its listing (argparse lists a
    subcommand only when it was added with help; an alias names the same parser)."""
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {choice.dest: choice.help for choice in action._choices_actions}
            seen: set[int] = set()
            for name, sub in action.choices.items():  # a parser's first name, then aliases
                if id(sub) not in seen:
                    seen.add(id(sub))
                    if not (summaries.get(name) or "").strip():
                        missing.append(name)
    return missing


def test_every_package_has_subcommands_to_walk() -> None:
    for package in PACKAGES:
        assert len(list(parsers(build(package), (package,)))) > 1, package


@pytest.mark.parametrize("package", PACKAGES)
def test_every_option_has_help_text(package: str) -> None:
    missing = {path: gaps for path, parser in parsers(build(package), (package,))
               if (gaps := undocumented(parser))}
    assert not missing, f"options without help text: {missing}"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_subcommand_has_a_summary(package: str) -> None:
    missing = {path: gaps for path, parser in parsers(build(package), (package,))
               if (gaps := unsummarised(parser))}
    assert not missing, f"subcommands without a summary: {missing}"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_help_page_renders(package: str) -> None:
    for path, parser in parsers(build(package), (package,)):
        text = parser.format_help()
        assert text.startswith("usage: "), path


def test_the_test_only_options_exist_and_stay_hidden() -> None:
    hidden = {option for _, parser in all_parsers() for action in parser._actions
              if action.help == argparse.SUPPRESS for option in action.option_strings}
    assert hidden == TEST_ONLY


def test_an_option_without_help_is_caught() -> None:
    parser = argparse.ArgumentParser(prog="x")
    sub = parser.add_subparsers()
    leaf = sub.add_parser("leaf")
    leaf.add_argument("--bare")
    leaf.add_argument("--secret", help=argparse.SUPPRESS)
    leaf.add_argument("--clock-offset-ms", help=argparse.SUPPRESS)
    leaf.add_argument("--ok", help="documented")
    [(_, top), (_, child)] = parsers(parser, ("x",))
    assert undocumented(top) == []
    assert undocumented(child) == ["--bare", "--secret (hidden)"]
    assert unsummarised(top) == ["leaf"]
