"""The shardstore engine's on-disk formats: frame and piece codecs against arbitrary bytes
(hypothesis), and hint files (a hint gives the keydir a scan gives; opening reads keys, not
values)."""

from __future__ import annotations

from pathlib import Path

import hypothesis.strategies as st
from hypothesis import given, settings

from shardstore.engine import CorruptStore, Engine, OsFiles
from shardstore.engine.records import ENTRY_HEADER, encode_frame, scan_segment
from shardstore.engine.snapshot import decode_piece, encode_piece
from tests.test_shardstore_engine import (
    Model,
    apply_model,
    disk_bytes,
    expiries,
    keys,
    model_scan,
    values,
)

# -- the codecs against arbitrary bytes ----------------------------------------------------------


entries_strategy = st.lists(st.tuples(st.binary(max_size=20), st.one_of(st.none(), values),
                                      st.integers(0, 2**64 - 1), st.integers(1, 2**64 - 1)),
                            max_size=5)


@settings(max_examples=200, deadline=None)
@given(frames=st.lists(st.tuples(entries_strategy, st.one_of(st.none(), st.integers(0, 2**62))),
                       max_size=4))
def test_frames_round_trip(frames: list[tuple[list[tuple[bytes, bytes | None, int, int]],
                                              int | None]]) -> None:
    data = b""
    for items, applied_index in frames:
        frame, offsets = encode_frame(items, applied_index, len(data))
        data += frame
        for (_key, value, _expire, _seq), offset in zip(items, offsets, strict=True):
            if value is not None:
                assert data[offset:offset + len(value)] == value
    result = scan_segment(Path("mem"), lambda n, off: data[off:off + n], len(data),
                          tail_ok=False)
    assert result.good_end == len(data) and not result.torn
    found = [(e.key, e.seq, e.expire_at_ms, e.tombstone) for e in result.entries]
    assert found == [(k, s, x, v is None) for items, _ in frames for k, v, x, s in items]
    indices = [a for _, a in frames if a is not None]
    assert result.applied_index == max(indices, default=-1)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), tail_ok=st.booleans())
def test_scanning_garbage_only_ever_raises_corrupt_store(data: bytes, tail_ok: bool) -> None:
    try:
        result = scan_segment(Path("mem"), lambda n, off: data[off:off + n], len(data),
                              tail_ok=tail_ok)
    except CorruptStore as exc:
        assert 0 <= exc.offset < len(data)
    else:
        assert result.good_end <= len(data)


@settings(max_examples=300, deadline=None)
@given(piece=st.binary(max_size=200))
def test_decoding_a_garbage_piece_only_ever_raises_corrupt_store(piece: bytes) -> None:
    try:
        decode_piece(piece, 0)
    except CorruptStore:
        pass


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(st.tuples(keys, values, expiries), max_size=8))
def test_pieces_round_trip(rows: list[tuple[bytes, bytes, int]]) -> None:
    body = b"".join(ENTRY_HEADER.pack(0, 0, e, len(k), len(v)) + k + v for k, v, e in rows)
    assert decode_piece(encode_piece(body), 0) == rows


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(entries_strategy, min_size=1, max_size=4), data=st.data())
def test_a_damaged_segment_yields_a_prefix_or_corrupt_store(
        frames: list[list[tuple[bytes, bytes | None, int, int]]], data: st.DataObject) -> None:
    segment = b""
    for items in frames:
        segment += encode_frame(items, None, len(segment))[0]
    damaged = bytearray(segment)
    position = data.draw(st.integers(0, len(segment) - 1))
    damaged[position] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(position + 1, len(segment)))
    damaged = damaged[:cut]
    expected = [(k, s) for items in frames for k, _v, _x, s in items]
    try:
        result = scan_segment(Path("mem"), lambda n, off: bytes(damaged[off:off + n]),
                              len(damaged), tail_ok=True)
    except CorruptStore:
        return
    found = [(e.key, e.seq) for e in result.entries]
    assert found == expected[:len(found)]
    assert result.good_end <= position


# -- hint files ----------------------------------------------------------------------------------


class CountingFiles(OsFiles):
    """The real file layer, counting the bytes read with pread."""

    def __init__(self) -> None:
        self.read = 0

    def pread(self, handle: object, length: int, offset: int) -> bytes:
        data = super().pread(handle, length, offset)  # type: ignore[arg-type]
        self.read += len(data)
        return data


def compacted_store(directory: Path) -> Model:
    engine = Engine.open(directory, fsync="no", max_segment_bytes=64 * 1024,
                         background_compaction=False)
    model: Model = {}
    for i in range(400):
        batch = [(b"k%03d" % (i % 150), bytes([i % 256]) * 1000, i), (b"d%d" % (i % 9), None, 0)]
        engine.write(batch, i + 1)
        apply_model(model, batch)
    engine.compact()
    engine.close()
    return model


def keydir_of(directory: Path) -> tuple[dict[bytes, object], dict[str, int]]:
    engine = Engine.open(directory, background_compaction=False)
    try:
        stats = engine.stats
        return {k: engine.locate(k) for k, _, _ in engine.scan()}, {
            k: stats[k] for k in ("keys", "live_bytes", "dead_bytes", "segments",
                                  "applied_index")}
    finally:
        engine.close()


def test_opening_a_compacted_store_reads_hints_not_values(tmp_path: Path) -> None:
    model = compacted_store(tmp_path)
    assert any(p.suffix == ".hint" for p in tmp_path.iterdir())
    layer = CountingFiles()
    engine = Engine.open(tmp_path, file_layer=layer, background_compaction=False)
    assert layer.read < disk_bytes(tmp_path) // 10
    assert engine.scan() == model_scan(model, b"", None, None)
    engine.close()


def test_a_hint_gives_the_keydir_a_scan_gives_and_a_bad_one_is_ignored(tmp_path: Path) -> None:
    compacted_store(tmp_path)
    with_hints = keydir_of(tmp_path)
    hints = sorted(p for p in tmp_path.iterdir() if p.suffix == ".hint")
    damaged = bytearray(hints[0].read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    hints[0].write_bytes(bytes(damaged))
    assert keydir_of(tmp_path) == with_hints
    for hint in hints:
        hint.unlink()
    assert keydir_of(tmp_path) == with_hints
    (tmp_path / "000000-0000009999.hint").write_bytes(b"orphan")
    keydir_of(tmp_path)
    assert not (tmp_path / "000000-0000009999.hint").exists()
