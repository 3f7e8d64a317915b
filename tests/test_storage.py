"""Tests of core.storage against real files: record log recovery, atomic writes, the dir lock."""

from __future__ import annotations

import logging
import os
import signal
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from core.storage import (
    CorruptLogError,
    DataDirLock,
    DataDirLockedError,
    FatalStorageError,
    RecordLog,
    atomic_write,
    fsync_dir,
    read_file,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
HEADER_BYTES = 12


def frame(payload: bytes) -> bytes:
    """The on-disk encoding, written independently of the module under test."""
    return struct.pack("<IQ", len(payload), xxhash.xxh64_intdigest(payload)) + payload


def write_log(path: Path, payloads: list[bytes]) -> None:
    log, records = RecordLog.open(path)
    assert records == []
    log.append_many(payloads)
    log.close()


def reopen(path: Path, **kwargs: int) -> list[bytes]:
    log, records = RecordLog.open(path, **kwargs)
    log.close()
    return records


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


PAYLOADS = [b"alpha", b"", b"gamma" * 10, bytes(range(256))]


# --- round trip and format ---------------------------------------------------------------------


def test_round_trip_and_on_disk_format(tmp_path: Path) -> None:
    path = tmp_path / "log"
    log, records = RecordLog.open(path)
    assert records == [] and log.size == 0 and log.count == 0
    for p in PAYLOADS:
        log.append(p)
    assert log.count == len(PAYLOADS)
    assert log.size == path.stat().st_size
    log.close()
    assert path.read_bytes() == b"".join(frame(p) for p in PAYLOADS)


def test_records_survive_reopen_and_appends_continue(tmp_path: Path) -> None:
    path = tmp_path / "log"
    write_log(path, PAYLOADS[:2])
    log, records = RecordLog.open(path)
    assert records == PAYLOADS[:2]
    assert (log.count, log.size) == (2, path.stat().st_size)
    log.append(PAYLOADS[2])
    log.close()
    assert reopen(path) == PAYLOADS[:3]


def test_append_without_sync_then_sync(tmp_path: Path) -> None:
    path = tmp_path / "log"
    log, _ = RecordLog.open(path)
    log.append(b"a", sync=False)
    log.append_many([b"b", b"c"], sync=False)
    log.sync()
    log.close()
    assert reopen(path) == [b"a", b"b", b"c"]


def test_append_many_is_one_group(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with RecordLog.open(path)[0] as log:
        log.append(b"first")
        log.append_many(iter([b"x", b"yy", b"zzz"]))
        log.append_many([])
        assert log.count == 4
    assert reopen(path) == [b"first", b"x", b"yy", b"zzz"]


def test_closed_log_rejects_writes(tmp_path: Path) -> None:
    log, _ = RecordLog.open(tmp_path / "log")
    log.close()
    log.close()
    with pytest.raises(ValueError, match="closed"):
        log.append(b"x")


# --- torn tails and corruption -----------------------------------------------------------------


def test_torn_tail_of_every_length(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    full = b"".join(frame(p) for p in PAYLOADS)
    last_start = len(full) - len(frame(PAYLOADS[-1]))
    for cut in range(last_start + 1, len(full)):
        path = tmp_path / f"log{cut}"
        path.write_bytes(full[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="core.storage"):
            log, records = RecordLog.open(path)
        assert records == PAYLOADS[:-1], cut
        assert path.stat().st_size == last_start
        assert f"{cut - last_start} bytes" in caplog.text
        log.append(b"after")
        log.close()
        assert reopen(path) == PAYLOADS[:-1] + [b"after"]


def test_clean_log_logs_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "log"
    write_log(path, PAYLOADS)
    with caplog.at_level(logging.WARNING, logger="core.storage"):
        assert reopen(path) == PAYLOADS
    assert caplog.text == ""


@pytest.mark.parametrize("where", ["length", "checksum", "payload"])
def test_flipped_byte_in_middle_record_is_corruption(tmp_path: Path, where: str) -> None:
    path = tmp_path / "log"
    write_log(path, PAYLOADS)
    offset = len(frame(PAYLOADS[0])) + len(frame(PAYLOADS[1]))  # third record
    flip_byte(path, offset + {"length": 0, "checksum": 4, "payload": HEADER_BYTES + 3}[where])
    size_before = path.stat().st_size
    with pytest.raises(CorruptLogError) as info:
        RecordLog.open(path)
    assert info.value.offset == offset
    assert str(path) in str(info.value) and f"offset {offset}" in str(info.value)
    assert path.stat().st_size == size_before  # nothing truncated


def test_oversized_length_field_in_middle_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "log"
    write_log(path, PAYLOADS)
    flip_byte(path, 3)  # top byte of the first record's length: far past EOF
    with pytest.raises(CorruptLogError, match="offset 0: length field"):
        RecordLog.open(path)


@pytest.mark.parametrize("where", [0, 4, HEADER_BYTES, -1])
def test_flipped_byte_in_last_record_is_torn(tmp_path: Path, where: int) -> None:
    path = tmp_path / "log"
    write_log(path, PAYLOADS)
    last_start = path.stat().st_size - len(frame(PAYLOADS[-1]))
    flip_byte(path, last_start + where if where >= 0 else path.stat().st_size - 1)
    assert reopen(path) == PAYLOADS[:-1]
    assert path.stat().st_size == last_start


@settings(max_examples=150, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=80), max_size=12),
    cut_fraction=st.floats(min_value=0.0, max_value=1.0),
)
def test_reopen_after_truncation_yields_a_prefix(payloads: list[bytes],
                                                 cut_fraction: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "log"
        write_log(path, payloads)
        full_size = path.stat().st_size
        cut = round(full_size * cut_fraction)
        os.truncate(path, cut)
        ends = [0]
        for p in payloads:
            ends.append(ends[-1] + len(frame(p)))
        survivors = max(i for i, end in enumerate(ends) if end <= cut)
        log, records = RecordLog.open(path)
        assert records == payloads[:survivors]
        assert log.count == survivors and log.size == ends[survivors]
        assert path.stat().st_size == ends[survivors]
        log.close()


# --- limits ------------------------------------------------------------------------------------


def test_max_record_bytes_on_append(tmp_path: Path) -> None:
    path = tmp_path / "log"
    log, _ = RecordLog.open(path, max_record_bytes=8)
    log.append(b"12345678")
    with pytest.raises(ValueError, match="max_record_bytes"):
        log.append(b"123456789")
    with pytest.raises(ValueError):
        log.append_many([b"ok", b"123456789"])  # rejected as a whole
    log.close()
    assert reopen(path, max_record_bytes=8) == [b"12345678"]


def test_record_larger_than_new_limit_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "log"
    write_log(path, [b"x" * 100, b"y"])
    with pytest.raises(CorruptLogError, match="exceeds max_record_bytes 50"):
        RecordLog.open(path, max_record_bytes=50)
    assert reopen(path) == [b"x" * 100, b"y"]


def test_bad_limit_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        RecordLog.open(tmp_path / "log", max_record_bytes=0)
    with pytest.raises(ValueError):
        RecordLog.open(tmp_path / "log", max_record_bytes=2**32)


# --- compaction --------------------------------------------------------------------------------


def test_rewrite_compacts_and_appends_continue(tmp_path: Path) -> None:
    path = tmp_path / "log"
    log, _ = RecordLog.open(path)
    log.append_many([b"old%d" % i for i in range(50)])
    log.rewrite([b"snapshot", b"tail"])
    assert log.count == 2 and log.size == path.stat().st_size
    log.append(b"new")
    log.close()
    assert reopen(path) == [b"snapshot", b"tail", b"new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log"]


def test_rewrite_to_empty(tmp_path: Path) -> None:
    path = tmp_path / "log"
    write_log(path, PAYLOADS)
    log, _ = RecordLog.open(path)
    log.rewrite([])
    assert (log.count, log.size, path.stat().st_size) == (0, 0, 0)
    log.close()
    assert reopen(path) == []


def test_stale_rewrite_temp_file_is_removed_on_open(tmp_path: Path) -> None:
    path = tmp_path / "log"
    write_log(path, PAYLOADS)
    (tmp_path / ".log.tmp.deadbeef").write_bytes(b"half a compaction")
    assert reopen(path) == PAYLOADS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log"]


# --- fatal I/O errors --------------------------------------------------------------------------


def _failing_fsync(fd: int) -> None:
    raise OSError(5, "Input/output error")


def test_fsync_error_is_fatal_and_never_retried(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    log, _ = RecordLog.open(tmp_path / "log")
    log.append(b"durable")
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", _failing_fsync)
        with pytest.raises(FatalStorageError) as info:
            log.append(b"maybe")
        assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(FatalStorageError, match="not retrying"):
        log.sync()  # fsync works again, but the log stays failed
    with pytest.raises(FatalStorageError):
        log.append(b"more")
    log.close()


def test_write_error_is_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log, _ = RecordLog.open(tmp_path / "log")

    def enospc(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", enospc)
    with pytest.raises(FatalStorageError, match="No space left"):
        log.append(b"x")
    monkeypatch.undo()
    log.close()


def test_partial_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "log"
    log, _ = RecordLog.open(path)
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))
    log.append_many(PAYLOADS)
    monkeypatch.undo()
    log.close()
    assert reopen(path) == PAYLOADS


# --- atomic_write and helpers ------------------------------------------------------------------


def test_atomic_write_replaces_content_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "hwm"
    assert read_file(path) is None
    atomic_write(path, b"old")
    atomic_write(path, b"new")
    assert read_file(path) == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["hwm"]


def test_failed_atomic_write_keeps_old_content(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "hwm"
    atomic_write(path, b"old")
    monkeypatch.setattr(os, "fsync", _failing_fsync)
    with pytest.raises(FatalStorageError):
        atomic_write(path, b"new")
    monkeypatch.undo()
    assert read_file(path) == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["hwm"]


def test_fsync_dir(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    with pytest.raises(FatalStorageError):
        fsync_dir(tmp_path / "missing")


# --- data dir lock -----------------------------------------------------------------------------

HOLDER = """
import sys, time
from core.storage import DataDirLock
lock = DataDirLock.acquire(sys.argv[1])
print("locked", flush=True)
while True:
    time.sleep(3600)
"""

CONTENDER = """
import sys
from core.storage import DataDirLock, DataDirLockedError
try:
    DataDirLock.acquire(sys.argv[1])
except DataDirLockedError as exc:
    print(exc)
    sys.exit(3)
"""


def run_python(code: str, *args: str, **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, text=True, **kwargs)


def test_lock_held_by_another_process_until_it_is_killed(tmp_path: Path) -> None:
    data_dir = tmp_path / "data" / "node1"
    holder = run_python(HOLDER, str(data_dir))
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        assert data_dir.stat().st_mode & 0o777 == 0o700
        with pytest.raises(DataDirLockedError) as info:
            DataDirLock.acquire(data_dir)
        assert info.value.pid == holder.pid
        assert str(data_dir) in str(info.value) and f"pid {holder.pid}" in str(info.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    with DataDirLock.acquire(data_dir) as lock:
        assert lock.locked
        assert (data_dir / "LOCK").read_text() == f"{os.getpid()}\n"
    assert not lock.locked


def test_second_process_cannot_take_a_held_lock(tmp_path: Path) -> None:
    with DataDirLock.acquire(tmp_path):
        contender = run_python(CONTENDER, str(tmp_path))
        out, _ = contender.communicate()
        assert contender.returncode == 3
        assert f"pid {os.getpid()}" in out
    contender = run_python(CONTENDER, str(tmp_path))
    contender.communicate()
    assert contender.returncode == 0


def test_lock_is_per_open_file_even_in_one_process(tmp_path: Path) -> None:
    lock = DataDirLock.acquire(tmp_path)
    with pytest.raises(DataDirLockedError):
        DataDirLock.acquire(tmp_path)
    lock.release()
    lock.release()
    DataDirLock.acquire(tmp_path).release()
