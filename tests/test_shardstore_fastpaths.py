"""The hot path's shortcuts in shardstore/commands.py answer and write exactly as the
general path does: a plain `SET key value` applied without reading the old record, and
GET's read runner reading the record without a View (hypothesis over the key's prior
state: missing, a string, a hash, with an expiry still ahead or already passed)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shardstore import cmd_strings, commands
from shardstore.kvview import DictKV, View
from shardstore.values import encode_hash, encode_string

NOW_MS = 1_000_000
KEY = st.sampled_from([b"k", b"", b"\x00\xff"])
EXPIRY = st.sampled_from([0, NOW_MS - 1, NOW_MS, NOW_MS + 1])
PRIOR = st.one_of(
    st.none(),
    st.tuples(st.binary(max_size=6).map(encode_string), EXPIRY),
    st.tuples(st.dictionaries(st.binary(max_size=2), st.binary(max_size=2), max_size=2)
              .map(encode_hash), EXPIRY),
)


def _store(key: bytes, prior: Any) -> DictKV:
    kv = DictKV()
    if prior is not None:
        kv.write([(key, prior[0], prior[1])], applied_index=1)
    return kv


def _shown(reply: Any) -> Any:
    return (type(reply), str(reply)) if isinstance(reply, Exception) else reply


@settings(max_examples=80, deadline=None)
@given(KEY, PRIOR, st.binary(max_size=8), st.sampled_from([b"SET", b"set", b"SeT"]))
def test_a_plain_set_writes_and_answers_as_cmd_set(key: bytes, prior: Any, value: bytes,
                                                   name: bytes) -> None:
    fast, general = _store(key, prior), _store(key, prior)
    got = commands.execute_write(fast, NOW_MS, [name, key, value], 7)
    view = View(general, NOW_MS, writable=True)
    expected = cmd_strings.cmd_set(view, [name, key, value])
    general.write(view.batch(), 7)
    assert got == expected
    assert fast.data == general.data and fast.sorted_keys == general.sorted_keys
    assert fast.applied_index == general.applied_index == 7
    assert fast.writes == general.writes  # exactly one write call, as every command


@settings(max_examples=80, deadline=None)
@given(KEY, PRIOR)
def test_get_s_runner_answers_as_execute_read(key: bytes, prior: Any) -> None:
    kv = _store(key, prior)
    runner = commands.read_runner("get")
    assert runner is not None
    got = runner(kv, NOW_MS, [b"GET", key])
    expected = commands.execute_read(kv, NOW_MS, [b"GET", key])
    assert _shown(got) == _shown(expected)
