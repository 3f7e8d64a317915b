"""bench.kvcache_workloads: a --quick run of two workloads writes the JSON every results file
has, a value damaged between rounds fails the round that reads it, and the value check
catches any damage (hypothesis)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import kvcache_workload_client as wc
from bench import kvcache_workloads as bench
from bench.kvcache_bench import memcached_server

needs_memcached = pytest.mark.skipif(shutil.which("memcached") is None,
                                     reason="memcached is not installed")


@needs_memcached
def test_quick_run_writes_figures_per_workload(tmp_path: Path) -> None:
    code = bench.main(["--quick", "--workloads", "multiget,incr_decr", "--out", str(tmp_path)])
    doc = json.loads((tmp_path / "kvcache_workloads.json").read_text())
    assert code == (0 if doc["outcome"]["met"] else 1)
    assert doc["benchmark"] == "kvcache_workloads" and doc["quick"] is True
    assert {"date", "settings", "uptime", "outcome", "machine"} <= set(doc)
    assert set(doc["workloads"]) == {"multiget", "incr_decr"}
    sections = {f["section"] for f in doc["figures"]}
    assert {"multiget", "incr_decr", "rss"} <= sections
    for name in ("multiget", "incr_decr"):
        runs = doc["sections"][name]["runs"]
        assert sorted(r["side"] for r in runs) == ["kvcache", "memcached"]
        assert all(not r["failed"] and r["errors"] == 0 for r in runs), runs
        assert all(r["ops"] > 0 and "client_bound" in r for r in runs)
    ratio = next(f for f in doc["figures"] if f["section"] == "multiget")
    assert ratio["goal_ratio"] == bench.GOAL and len(ratio["detail"]["per_round_ratio"]) == 1


@needs_memcached
def test_a_value_damaged_between_rounds_fails_the_round() -> None:
    spec = wc.Spec("getset", b"t:", 20, 100, 4, 2, get_share=1.0)
    workload = bench.Workload("t", "t", "ops/s", spec)
    plan = bench.Plan(0.5, 1, 1, 1.0)
    with memcached_server(16) as mc:
        wc.preload(mc.host, mc.port, spec)
        clean = bench.run_side(mc, workload, plan, seed=1)
        assert not clean["failed"] and clean["hits"] == clean["gets"] > 0
        key = wc.key_of(spec, 7)
        good = wc.make_value(key, spec.value_size)
        wc.overwrite(mc.host, mc.port, key, good[:-1] + b"y")
        damaged = bench.run_side(mc, workload, plan, seed=2)
    assert damaged["failed"] and damaged["errors"] > 0
    assert damaged["first_errors"][0] == wc.ERR_BAD_VALUE.format(key)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=40), st.integers(wc.MIN_VALUE_BYTES, 400),
       st.integers(0, 2**40), st.data())
def test_any_damage_to_a_value_is_caught(key: bytes, size: int, version: int,
                                         data: st.DataObject) -> None:
    key = key[: size - wc.MIN_VALUE_BYTES + 8] or b"k"
    value = wc.make_value(key, size, version)
    assert len(value) == size and wc.check_value(key, value)
    at = data.draw(st.integers(0, size - 1))
    flip = data.draw(st.integers(1, 255))
    damaged = value[:at] + bytes([value[at] ^ flip]) + value[at + 1:]
    assert not wc.check_value(key, damaged)
    assert not wc.check_value(key + b"!", value)


@given(st.binary(max_size=80), st.binary(max_size=200))
def test_check_value_refuses_any_bytes_without_raising(key: bytes, value: bytes) -> None:
    assert wc.check_value(key, value) in (True, False)


def test_bad_options_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--workloads", "nope"], ["--rounds", "0"], ["--seconds", "-1"]):
        with pytest.raises(SystemExit) as exc:
            bench.parse_args(argv)
        assert exc.value.code == 2
    assert "subset of multiget" in capsys.readouterr().err


def _parse(data: bytes) -> dict[bytes, bytes]:
    async def go() -> dict[bytes, bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await wc.read_values(reader, wc.Tally())

    return asyncio.run(go())


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.binary(min_size=1, max_size=20).filter(
    lambda k: not any(c in k for c in b" \r\n\t\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0")),
    st.binary(max_size=300), max_size=5))
def test_get_replies_parse_back(items: dict[bytes, bytes]) -> None:
    reply = b"".join(b"VALUE %s 0 %d\r\n%s\r\n" % (k, len(v), v) for k, v in items.items())
    assert _parse(reply + wc.REPLY_END) == items


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_give_items_or_a_clear_error(data: bytes) -> None:
    try:
        assert isinstance(_parse(data), dict)
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
