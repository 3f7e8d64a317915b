"""bench/README.md's tables are generated from the committed bench/results/*.json, and the
`make bench` tooling (bench/suite.py, bench/tables.py, bench.common's results) keeps its
promises.

Strategy: the committed README must equal what bench.tables renders from the committed JSON
(so a figure edited by hand, or left behind by a newer run, fails here), and every results
file must record its settings, date, load and goal outcome. The marker parser is fuzzed with
hypothesis. The suite runner is driven with two tiny fake benchmarks written into a
temporary directory (one meets its goal, one misses it): no real benchmark runs here.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import suite, tables
from bench.common import Figure, Skipped, exit_status, goal_outcome, write_results

ROOT = Path(__file__).resolve().parent.parent
BENCH_README = ROOT / "bench" / "README.md"
MAIN_README = ROOT / "README.md"


def squash(text: str) -> str:
    """Whitespace-insensitive form of README prose (lines wrap anywhere)."""
    return " ".join(text.split())


# -- the committed tables and JSON -------------------------------------------------------


def test_readme_tables_equal_what_the_committed_json_gives() -> None:
    text = BENCH_README.read_text()
    assert tables.generate(text, tables.RESULTS) == text, (
        "bench/README.md's tables differ from bench/results/*.json: "
        "run .venv/bin/python -m bench.tables")


def test_every_benchmark_of_the_suite_has_a_table() -> None:
    names = tables.marker_names(BENCH_README.read_text())
    assert [e.name for e in suite.SUITE if e.name not in names] == []
    assert len({e.name for e in suite.SUITE}) == len(suite.SUITE)


def committed_results() -> list[Path]:
    names = tables.marker_names(BENCH_README.read_text())
    return [tables.RESULTS / f"{n}.json" for n in names if (tables.RESULTS / f"{n}.json").exists()]


@pytest.mark.parametrize("path", committed_results(), ids=lambda p: p.name)
def test_each_results_file_records_settings_date_load_and_outcome(path: Path) -> None:
    doc = json.loads(path.read_text())
    assert doc["date"] and doc["started"] and isinstance(doc["settings"], dict)
    assert doc["uptime"] and doc["machine"]["git_commit"]
    outcome = doc["outcome"]
    assert set(outcome) >= {"met", "goals", "missed", "not_measured"}
    missed = [f for f in doc["figures"] if f["met"] is False]
    assert outcome["met"] == (not missed and not doc["skipped"])


def test_suite_modules_have_a_main_taking_out_and_quick() -> None:
    for entry in suite.SUITE:
        module = importlib.import_module(entry.module)
        assert callable(module.main), entry
        assert "--quick" in entry.quick_args


# -- rendering ---------------------------------------------------------------------------


def sample_document() -> dict[str, object]:
    figures = [
        Figure("1 a", "met row", 120.0, "ops/s", "peer", 100.0, 1.0, ">= 1.0x"),
        Figure("1 a", "missed row", 50.0, "ops/s", "peer", 100.0, 1.0, ">= 1.0x"),
        Figure("1 a", "informational", 5.0, "ms", "limit", 20.0, None, "-"),
    ]
    skipped = [Skipped("2 b", "gone", "all runs failed: boom")]
    doc = {"benchmark": "x", "started": "2026-12-07T18:00:00+00:00", "quick": False,
           "figures": figures,
           "plan": {"rounds": 3, "jobs": [100, 1000]}, "skipped": skipped,
           "machine": {"git_commit": "abc1234", "cpu_count": 2, "cpu_model": "cpu",
                       "loadavg_at_start": [1.5, 1, 1], "loadavg_at_end": [2.0, 1, 1]}}
    return {"figures": figures, "doc": doc}


def test_write_results_records_the_outcome_and_the_exit_status_follows_it(tmp_path: Path
                                                                           ) -> None:
    sample = sample_document()
    doc, figures = sample["doc"], sample["figures"]
    write_results(tmp_path, "x", "20261207-180000", doc, figures, "title")  # type: ignore[arg-type]
    written = json.loads((tmp_path / "x.json").read_text())
    assert written["outcome"]["missed"] == ["1 a missed row"]
    assert written["outcome"]["not_measured"] == ["2 b gone: all runs failed: boom"]
    assert written["settings"] == {"rounds": 3, "jobs": [100, 1000]}
    assert exit_status(written) == 1
    block = tables.render(written)
    assert "| 1 a | met row | 120 ops/s | peer 100 | 1.200 | >= 1.0x | yes |" in block
    assert "| 1 a | missed row | 50 ops/s | peer 100 | 0.500 | >= 1.0x | **NO** |" in block
    assert "| 2 b | gone | not measured |" in block
    assert "at commit `abc1234`" in block and "Settings: rounds=3 jobs=100,1000" in block
    assert "goals missed: 1 a missed row" in block


def test_all_goals_met_exits_zero() -> None:
    met = [Figure("s", "f", 2.0, "/s", "peer", 1.0, 1.0, ">= 1x")]
    assert goal_outcome(met, [])["met"] is True
    assert exit_status({"outcome": goal_outcome(met, [])}) == 0
    assert exit_status({"outcome": goal_outcome(met, [Skipped("s", "g", "r")])}) == 1


# -- the marker parser (fuzzed) ----------------------------------------------------------

NAMES = st.sampled_from(["idgen", "kvcache", "x_1", "Bad", ""])
TOKENS = st.one_of(
    st.text(alphabet="ab <->!\n|", max_size=12),
    NAMES.map(lambda n: f"<!-- bench:{n} -->"),
    NAMES.map(lambda n: f"<!-- /bench:{n} -->"),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(TOKENS, max_size=12))
def test_marker_parser_either_pairs_markers_or_says_why(tokens: list[str]) -> None:
    text = "".join(tokens)
    try:
        names = tables.marker_names(text)
    except tables.MarkerError as exc:
        assert "marker" in str(exc)
        return
    blocks = {n: f"table of {n}" for n in names}
    once = tables.fill(text, blocks)
    assert tables.marker_names(once) == names
    assert tables.fill(once, blocks) == once  # regenerating changes nothing
    for name in names:
        assert f"<!-- bench:{name} -->\ntable of {name}\n<!-- /bench:{name} -->" in once


@pytest.mark.parametrize(("text", "message"), [
    ("<!-- bench:a -->", "is not closed"),
    ("<!-- /bench:a -->", "closes nothing"),
    ("<!-- bench:a --><!-- bench:b -->", "opens inside"),
    ("<!-- bench:a --><!-- /bench:b -->", "is not closed"),
    ("<!-- bench:a --><!-- /bench:a --><!-- bench:a --><!-- /bench:a -->", "two marker"),
    ("<!-- bench:A --><!-- /bench:A -->", "bad benchmark name"),
])
def test_bad_markers_get_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(tables.MarkerError, match=message):
        tables.marker_names(text)


def test_tables_check_exits_1_on_a_stale_table(tmp_path: Path) -> None:
    sample = sample_document()
    write_results(tmp_path, "x", "s", sample["doc"], sample["figures"], "t")  # type: ignore[arg-type]
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- bench:x -->\n| stale | 1 |\n<!-- /bench:x -->\n")
    assert tables.main(["--readme", str(readme), "--results", str(tmp_path), "--check"]) == 1
    assert tables.main(["--readme", str(readme), "--results", str(tmp_path)]) == 0
    assert tables.main(["--readme", str(readme), "--results", str(tmp_path), "--check"]) == 0
    assert "| stale |" not in readme.read_text()


def test_a_run_into_bench_results_rewrites_its_own_readme_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.common

    readme = tmp_path / "README.md"
    readme.write_text("<!-- bench:x -->\nold\n<!-- /bench:x -->\n<!-- bench:y -->\nkept\n"
                      "<!-- /bench:y -->\n")
    monkeypatch.setattr(bench.common, "DEFAULT_OUT", tmp_path)
    monkeypatch.setattr(tables, "README", readme)
    sample = sample_document()
    write_results(tmp_path, "x", "s", sample["doc"], sample["figures"], "t")  # type: ignore[arg-type]
    text = readme.read_text()
    assert "old" not in text and "| 1 a | met row |" in text and "\nkept\n" in text
    assert squash("""A benchmark run by itself into `bench/results/` rewrites its own table
        too""") in squash(BENCH_README.read_text())


# -- the suite runner --------------------------------------------------------------------

FAKE = '''
import json, sys
from pathlib import Path
out = Path(sys.argv[sys.argv.index("--out") + 1])
print("fake progress line", file=sys.stderr)
met = {met}
(out / "{name}.json").write_text(json.dumps({{"outcome": {{"met": met}}}}))
sys.exit(0 if met else 1)
'''


def test_a_failed_benchmark_is_reported_the_rest_still_run_and_the_suite_fails(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, met in (("fake_miss", False), ("fake_ok", True)):
        (tmp_path / f"{name}.py").write_text(FAKE.format(name=name, met=met))
    out = tmp_path / "results"
    entries = [suite.Entry("fake_miss", "fake_miss"), suite.Entry("fake_ok", "fake_ok")]
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}"}
    outcomes = suite.run_suite(entries, out, quick=True, env=env)
    assert [(o.entry.name, o.exit_code, o.wrote_json) for o in outcomes] == [
        ("fake_miss", 1, True), ("fake_ok", 0, True)]
    assert suite.report(outcomes) == 1
    err = capsys.readouterr().err
    assert "1/2 fake_miss: FAILED (exit 1" in err and "2/2 fake_ok: ok" in err
    assert "1 of 2 benchmarks failed: fake_miss" in err
    assert suite.report(outcomes[1:]) == 0


def test_a_benchmark_that_writes_no_json_fails(tmp_path: Path) -> None:
    (tmp_path / "fake_silent.py").write_text("import sys\nsys.exit(0)\n")
    outcomes = suite.run_suite([suite.Entry("fake_silent", "fake_silent")], tmp_path / "r",
                               quick=True, env={"PYTHONPATH": f"{tmp_path}:{ROOT}"})
    assert not outcomes[0].ok and suite.report(outcomes) == 1


def test_quick_mode_passes_quick_and_unknown_names_are_refused() -> None:
    entry = suite.SUITE[0]
    assert suite.command(entry, Path("/tmp/r"), quick=True)[-1] == "--quick"
    assert "--quick" not in suite.command(entry, Path("/tmp/r"), quick=False)
    assert suite.command(entry, Path("/tmp/r"), quick=False)[:3] == [
        sys.executable, "-m", entry.module]
    with pytest.raises(ValueError, match="unknown benchmark nope"):
        suite.select("idgen,nope")


# -- README promises ---------------------------------------------------------------------


def test_the_readmes_say_what_make_bench_does() -> None:
    bench = squash(BENCH_README.read_text())
    assert squash("""A failed benchmark is reported and the rest still run; `make bench` then
        regenerates the tables of this page from the JSON files (`bench/tables.py`) and exits
        non-zero if any benchmark failed.""") in bench
    assert "`make bench` runs every benchmark" in squash(MAIN_README.read_text())
