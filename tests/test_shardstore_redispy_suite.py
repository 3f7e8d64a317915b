"""redis-py's own string and hash tests against a one-node shardstore (tests/redispy_suite.py).

The suite comes from the installed redis-py version's sdist, downloaded with pip into
.venv/cache/ on first use; the module skips, saying so, only when the package registry
cannot be reached. Every selected test must pass except the EXPECTED_FAILURES, which must
fail (each has its reason in the runner); every test of the two sections is selected or
deselected with a reason in the runner's docstring.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests import redispy_suite as suite_runner
from tests.redispy_suite import (
    EXPECTED_FAILURES,
    SELECTED_CLUSTER,
    SELECTED_STANDALONE,
    SUITE_FILE,
    Outcome,
    SuiteUnavailable,
)


@pytest.fixture(scope="module")
def suite() -> Path:
    try:
        return suite_runner.fetch_suite()
    except SuiteUnavailable as exc:
        if exc.unreachable:
            pytest.skip(f"the package registry is unreachable, so redis-py's suite could not "
                        f"be downloaded: {exc}")
        raise


@pytest.fixture(scope="module")
def outcomes(suite: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        dict[str, Outcome]]:
    tmp = tmp_path_factory.mktemp("redispy")
    (tmp / "cluster").mkdir()
    (tmp / "standalone").mkdir()
    with suite_runner.single_node(tmp / "cluster") as cluster, \
            suite_runner.single_node(tmp / "standalone") as standalone:
        yield suite_runner.run_side_by_side(suite, cluster.address, standalone.address, tmp)


def test_selected_tests_pass_and_the_expected_failures_fail(
        outcomes: dict[str, Outcome]) -> None:
    wrong = {name: outcomes.get(name) for name, want in suite_runner.expectations().items()
             if outcomes.get(name, Outcome("missing")).outcome != want}
    assert not wrong, suite_runner.table(outcomes)


def test_every_test_of_the_sections_is_selected_or_deselected_with_a_reason(
        suite: Path) -> None:
    names = suite_runner.section_tests((suite / SUITE_FILE).read_text())
    assert len(names) > 100  # the section markers were found
    chosen = set(SELECTED_CLUSTER) | set(SELECTED_STANDALONE)
    unaccounted = [n for n in names if n not in chosen and n not in suite_runner.deselected()]
    assert not unaccounted
    assert not chosen & suite_runner.deselected()
    assert set(EXPECTED_FAILURES) <= chosen


def test_an_unreachable_registry_is_told_from_other_pip_failures() -> None:
    offline = ("WARNING: Retrying ... Failed to establish a new connection: [Errno 101] "
               "Network is unreachable\nERROR: No matching distribution found for redis==8")
    assert suite_runner.registry_unreachable(offline)
    assert not suite_runner.registry_unreachable(
        "ERROR: No matching distribution found for redis==99.0")


@given(st.text(max_size=200))
def test_the_outcome_reader_reads_or_says_why_not(text: str) -> None:
    try:
        read = suite_runner.read_outcomes(text)
    except ValueError as exc:
        assert "outcome file" in str(exc)
    else:
        assert all(o.outcome in suite_runner.OUTCOMES for o in read.values())


@given(st.dictionaries(st.text(max_size=20),
                       st.fixed_dictionaries({"outcome": st.sampled_from(suite_runner.OUTCOMES),
                                              "reason": st.text(max_size=30)})))
def test_the_outcome_reader_reads_what_the_plugin_writes(entries: dict[str, dict[str, str]]
                                                          ) -> None:
    read = suite_runner.read_outcomes(json.dumps(entries))
    assert read == {k: Outcome(v["outcome"], v["reason"]) for k, v in entries.items()}


@given(st.lists(st.sampled_from(["# BASIC KEY COMMANDS", "# LIST COMMANDS", "# HASH COMMANDS",
                                 "# SORT", "    def test_a(self, r):", "def test_b(r):",
                                 "x = 1", ""]), max_size=30))
def test_section_tests_finds_only_tests_inside_the_sections(lines: list[str]) -> None:
    names = suite_runner.section_tests("\n".join(lines))
    assert set(names) <= {"test_a", "test_b"}
    if not any(line.startswith("# ") for line in lines):
        assert names == []
