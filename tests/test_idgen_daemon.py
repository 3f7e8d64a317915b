"""One idgen daemon as a real process: its data directory, restarts, clock steps, signals,
the hwm.log on disk, configuration and the command line.

Every daemon runs as `python -m idgen serve` (tests/procs.py) on a loopback address of its
own. Restarts reuse the data directory and address; each process writes its own log file so
a test reads what that very process said. Waits poll a condition; deadlines catch hangs only.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import redis
import xxhash
from redis.backoff import NoBackoff
from redis.retry import Retry

from idgen.layout import DEFAULT_EPOCH_MS, MAX_ID, parse
from tests.conftest import find_free_port
from tests.procs import ROOT, Daemon

HOST = "127.0.0.2"
HEADER = struct.Struct("<IQ")  # hwm.log record header: payload length, xxh64(payload)
EPOCH_2025_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z
HANG_S = 60.0  # waiting for a process or a condition longer than this is a hang
REPLY_S = 20.0  # no single reply (even one waiting out a reservation) takes this long
_log_numbers = itertools.count()


# -- helpers -----------------------------------------------------------------------------------


class Procs:
    """Builds daemons on a data directory; stops whatever still runs at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[Daemon] = []

    def daemon(self, data_dir: Path, *args: str, host: str = HOST,
               port: int | None = None) -> Daemon:
        """`idgen serve --listen host:port --data-dir data_dir *args` (not started)."""
        port = port or find_free_port(host)
        argv = ["idgen", "serve", "--listen", f"{host}:{port}", "--data-dir", str(data_dir),
                *args]
        return self.track(Daemon(argv, host, port, self.tmp / f"idgen-{next(_log_numbers)}.log"))

    def again(self, daemon: Daemon, *extra: str) -> Daemon:
        """The same argv (data dir, address) as a new process, plus `extra` options."""
        log = self.tmp / f"idgen-{next(_log_numbers)}.log"
        return self.track(Daemon([*daemon.argv, *extra], daemon.host, daemon.port, log))

    def track(self, daemon: Daemon) -> Daemon:
        self.started.append(daemon)
        return daemon

    def close(self) -> None:
        for daemon in self.started:
            if daemon.alive():
                try:
                    daemon.stop()
                except Exception:  # noqa: BLE001 - teardown must reach every process
                    daemon.kill()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    yield p
    p.close()


def client(daemon: Daemon) -> redis.Redis:
    """redis-py without retries: a reply that does not come is a failure, not a retry."""
    return redis.Redis(daemon.host, daemon.port, socket_timeout=REPLY_S,
                       retry=Retry(NoBackoff(), 0))


def fetch(daemon: Daemon, batches: tuple[int | None, ...] = (None, 5, 1000, 4096, None)
          ) -> list[int]:
    """Ids from NEXT (None) and NEXT n on one connection; checked to strictly increase."""
    r = client(daemon)
    ids: list[int] = []
    try:
        for count in batches:
            if count is None:
                reply = r.execute_command("NEXT")
                assert isinstance(reply, int)
                ids.append(reply)
            else:
                batch = r.execute_command("NEXT", count)
                assert len(batch) == count
                ids.extend(batch)
    finally:
        r.close()
    assert all(a < b for a, b in zip(ids, ids[1:], strict=False))
    return ids


def info(daemon: Daemon) -> dict[str, object]:
    r = client(daemon)
    try:
        return r.info("idgen")  # type: ignore[return-value]
    finally:
        r.close()


def refused(daemon: Daemon) -> tuple[int, str]:
    """Run a start that must fail; the exit code and the log. Fails at once (instead of
    waiting for an exit that never comes) if the daemon listens after all."""
    daemon.start(wait=False)
    proc = daemon.proc
    assert proc is not None

    def settled() -> bool:
        if proc.poll() is not None:
            return True
        try:
            socket.create_connection((daemon.host, daemon.port), timeout=1).close()
        except OSError:
            return False
        return True

    poll(settled, "the daemon to exit or listen")
    if proc.poll() is None:
        raise AssertionError(f"the daemon started instead of refusing:\n{daemon.log()}")
    code = proc.returncode
    assert code != 0, daemon.log()
    return code, daemon.log()


def read_reply_line(sock: socket.socket) -> bytes:
    """Bytes up to and including the first CRLF (or whatever came before EOF)."""
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def hwm_records(path: Path) -> list[tuple[int, int, int]]:
    """(start offset, end offset, mark) of every record of a well-formed hwm.log
    (each record is msgpack [mark_ms, reserve_ms])."""
    data = path.read_bytes()
    records = []
    offset = 0
    while offset < len(data):
        length, checksum = HEADER.unpack_from(data, offset)
        end = offset + HEADER.size + length
        payload = data[offset + HEADER.size: end]
        assert len(payload) == length and xxhash.xxh64_intdigest(payload) == checksum
        records.append((offset, end, msgpack.unpackb(payload)[0]))
        offset = end
    return records


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def poll(condition: object, what: str) -> None:
    deadline = time.monotonic() + HANG_S
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def idgen_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "idgen", *args], capture_output=True, text=True, cwd=ROOT,
        env=env, timeout=HANG_S,
    )


# -- basics ------------------------------------------------------------------------------------


def test_serves_ids_and_answers_bad_input_with_errors(tmp_path: Path, procs: Procs) -> None:
    d = procs.daemon(tmp_path / "d", "--worker-id", "12").start()
    ids = fetch(d)
    assert all(parse(i).worker == 12 for i in ids)
    r = client(d)
    for bad in ("0", "100001", "-1", "abc"):
        with pytest.raises(redis.ResponseError, match="count must be an integer between 1"):
            r.execute_command("NEXT", bad)
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        r.execute_command("NEXT", 1, 2)
    assert len(r.execute_command("NEXT", 100_000)) == 100_000
    parsed = r.execute_command("PARSE", ids[0])
    assert parsed[b"worker"] == 12 and parsed[b"id"] == ids[0]
    assert parsed[b"time_ms"] == parse(ids[0]).time_ms
    with pytest.raises(redis.ResponseError, match="id must be an integer"):
        r.execute_command("PARSE", MAX_ID + 1)
    whoami = r.execute_command("IDGEN.WHOAMI")
    assert whoami[b"worker_id"] == 12 and whoami[b"epoch_ms"] == DEFAULT_EPOCH_MS
    r.close()
    figures = info(d)
    assert figures["worker_id"] == 12 and figures["clock_state"] == "ok"
    expected = "pure" if os.environ.get("INFRA_PURE", "") not in ("", "0") else None
    if expected:
        assert figures["generator"] == expected
    assert d.stop() == 0


# -- the data directory ------------------------------------------------------------------------


def test_a_locked_data_directory_is_refused(tmp_path: Path, procs: Procs) -> None:
    data = tmp_path / "d"
    first = procs.daemon(data, "--worker-id", "1").start()
    assert first.proc is not None
    second = procs.daemon(data, "--worker-id", "1")  # same dir, other port
    code, log = refused(second)
    assert code == 1
    assert f"refusing to start: data dir {data} is locked by pid {first.proc.pid}" in log
    fetch(first)  # the first is untouched
    # SIGKILL frees the lock: the kernel drops the flock with the process.
    first.kill()
    third = procs.again(first).start()
    fetch(third)
    assert third.stop() == 0


def test_worker_id_is_recorded(tmp_path: Path, procs: Procs) -> None:
    data = tmp_path / "d"
    code, log = refused(procs.daemon(data))
    assert code == 1 and "is new: --worker-id is required" in log

    d = procs.daemon(data, "--worker-id", "4").start()
    fetch(d)
    assert d.stop() == 0
    code, log = refused(procs.daemon(data, "--worker-id", "5", port=d.port))
    assert code == 1
    assert f"{data} belongs to worker id 4, not 5; a worker id is never changed" in log

    again = procs.daemon(data, port=d.port).start()  # no --worker-id: the recorded one
    assert all(parse(i).worker == 4 for i in fetch(again))
    assert info(again)["worker_id"] == 4
    assert again.stop() == 0

    code, log = refused(procs.daemon(tmp_path / "other", "--worker-id", "1024"))
    assert code == 2 and "--worker-id must be within 0..1023" in log


def test_epoch_is_recorded(tmp_path: Path, procs: Procs) -> None:
    data = tmp_path / "d"
    d = procs.daemon(data, "--worker-id", "3", "--epoch", "2025-01-01").start()
    before = time.time_ns() // 1_000_000
    ids = fetch(d, (None,))
    after = time.time_ns() // 1_000_000
    assert info(d)["epoch_ms"] == EPOCH_2025_MS
    # A fresh directory issues at the clock's ms, counted from the chosen epoch.
    assert before - 1 <= parse(ids[0], EPOCH_2025_MS).time_ms <= after + 1
    assert d.stop() == 0

    code, log = refused(procs.daemon(data, "--epoch", "2024-06-01T00:00:00Z", port=d.port))
    assert code == 1
    assert f"{data} was created with epoch {EPOCH_2025_MS} ms, not 1717200000000" in log
    assert "changing the epoch could reissue ids" in log

    # The same epoch written as ms is the same epoch; no --epoch means the recorded one.
    same = procs.daemon(data, "--epoch", str(EPOCH_2025_MS), port=d.port).start()
    assert same.stop() == 0
    plain = procs.daemon(data, port=d.port).start()
    later = fetch(plain)
    assert info(plain)["epoch_ms"] == EPOCH_2025_MS
    assert min(later) > max(ids)
    assert plain.stop() == 0


# -- restarts ----------------------------------------------------------------------------------


def test_restart_after_sigkill_never_reissues(tmp_path: Path, procs: Procs) -> None:
    d = procs.daemon(tmp_path / "d", "--worker-id", "6").start()
    issued = fetch(d)
    for _ in range(3):
        d.kill()
        d = procs.again(d).start()
        new = fetch(d)
        assert min(new) > max(issued), "a restart went back below issued ids"
        issued += new
    assert len(set(issued)) == len(issued)
    assert d.stop() == 0


def test_clock_stepped_back_is_refused_with_clock(tmp_path: Path, procs: Procs) -> None:
    d = procs.daemon(tmp_path / "d", "--worker-id", "2").start()
    issued = fetch(d)
    d.kill()
    behind = procs.again(d, "--clock-offset-ms", "-10000").start()
    r = client(behind)
    for args in (("NEXT",), ("NEXT", 10)):
        with pytest.raises(redis.ResponseError) as exc:
            r.execute_command(*args)
        match = re.fullmatch(
            r"CLOCK clock moved backwards by (\d+) ms; refusing to issue ids until it catches up",
            str(exc.value),
        )
        assert match, str(exc.value)
        # Well beyond what a restart waits out (reserve 1000 + max backward 5 ms).
        assert int(match.group(1)) > 1005
    assert r.ping()
    r.close()
    figures = info(behind)
    assert str(figures["clock_state"]).startswith("behind "), figures
    assert figures["ids_issued"] == 0
    assert int(figures["last_issued_ms"]) >= parse(max(issued)).time_ms  # type: ignore[call-overload]
    assert behind.stop() == 0

    # Back on the true clock it serves again, above everything issued.
    d = procs.again(d).start()
    assert min(fetch(d)) > max(issued)
    assert d.stop() == 0


def test_a_small_step_back_within_max_backward_is_waited_out(
    tmp_path: Path, procs: Procs
) -> None:
    d = procs.daemon(tmp_path / "d", "--worker-id", "2").start()
    issued = fetch(d)
    d.kill()
    # 2 s back is more than the default allows, but within --max-backward-ms 5000.
    slow = procs.again(d, "--clock-offset-ms", "-2000", "--max-backward-ms", "5000").start()
    new = fetch(slow, (None, 10))
    assert min(new) > max(issued)
    assert slow.stop() == 0


def test_restart_within_the_reservation_waits_instead_of_refusing(
    tmp_path: Path, procs: Procs
) -> None:
    data = tmp_path / "d"
    d = procs.daemon(data, "--worker-id", "8", "--reserve-ms", "5000").start()
    issued = fetch(d)
    d.kill()
    mark = max(m for _, _, m in hwm_records(data / "hwm.log"))
    again = procs.again(d).start()
    figures = info(again)
    # The mark was reserved 2.5-5 s ahead of the clock, so the restart finds it ahead.
    assert str(figures["clock_state"]).startswith("behind "), figures
    r = client(again)
    first = r.execute_command("NEXT")  # waits out the reservation: no CLOCK error
    batch = r.execute_command("NEXT", 100)
    r.close()
    assert parse(first).time_ms > mark >= parse(max(issued)).time_ms
    assert first > max(issued) and min(batch) > first
    assert info(again)["clock_state"] == "ok"
    assert again.stop() == 0


def test_restart_with_a_smaller_reserve_waits_out_the_old_reservation(
    tmp_path: Path, procs: Procs
) -> None:
    data = tmp_path / "d"
    d = procs.daemon(data, "--worker-id", "8", "--reserve-ms", "6000").start()
    issued = fetch(d)
    d.kill()
    # Same data dir, default --reserve-ms 1000: the mark is still 3-6 s ahead.
    again = procs.daemon(data, port=d.port).start()
    r = client(again)
    try:
        first = r.execute_command("NEXT")
    finally:
        r.close()
    assert first > max(issued)
    assert again.stop() == 0


def test_a_port_in_use_is_refused(tmp_path: Path, procs: Procs) -> None:
    first = procs.daemon(tmp_path / "a", "--worker-id", "1").start()
    second = procs.daemon(tmp_path / "b", "--worker-id", "2", port=first.port)
    # The port answers (the first daemon holds it), so wait for the exit itself.
    assert second.run_to_exit(timeout=HANG_S) == 1
    assert "address already in use" in second.log()
    assert all(parse(i).worker == 1 for i in fetch(first))
    assert first.stop() == 0


# -- signals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_graceful_stop_exits_zero(tmp_path: Path, procs: Procs, signame: str) -> None:
    d = procs.daemon(tmp_path / "d", "--worker-id", "1").start()
    fetch(d)
    d.signal(getattr(signal, signame))
    assert d.proc is not None
    assert d.proc.wait(timeout=HANG_S) == 0, d.log()
    log = d.log()
    assert f"received {signame}, shutting down" in log
    assert log.rstrip().endswith("stopped"), log
    # The lock went with it.
    after = procs.again(d).start()
    assert after.stop() == 0


def test_sigterm_answers_a_next_that_is_waiting(tmp_path: Path, procs: Procs) -> None:
    d = procs.daemon(tmp_path / "d", "--worker-id", "1", "--reserve-ms", "2000").start()
    issued = fetch(d)
    d.kill()
    again = procs.again(d).start()
    with socket.create_connection((again.host, again.port), timeout=REPLY_S) as sock:
        sock.sendall(b"NEXT\r\n")  # most likely waiting out the reservation
        again.signal(signal.SIGTERM)
        reply = read_reply_line(sock)
    # In-flight NEXT is finished (or failed) before the daemon goes, never left hanging.
    assert reply.startswith((b":", b"-")), reply
    if reply.startswith(b":"):
        assert int(reply[1:]) > max(issued)
    assert again.proc is not None and again.proc.wait(timeout=HANG_S) == 0, again.log()


# -- hwm.log on disk ---------------------------------------------------------------------------


def run_until_records(procs: Procs, data: Path, records: int) -> Daemon:
    """A daemon with a tiny reservation, so hwm.log gains records quickly; stopped cleanly
    once it holds `records`."""
    d = procs.daemon(data, "--worker-id", "3", "--reserve-ms", "40").start()
    fetch(d)
    poll(lambda: len(hwm_records(data / "hwm.log")) >= records, f"{records} hwm records")
    assert d.stop() == 0
    return d


def test_torn_tail_of_hwm_log_is_dropped(tmp_path: Path, procs: Procs) -> None:
    data = tmp_path / "d"
    d = run_until_records(procs, data, 6)
    path = data / "hwm.log"
    records = hwm_records(path)
    size = path.stat().st_size
    os.truncate(path, size - 5)  # the last append cut short
    again = procs.again(d).start()
    assert f"dropped torn tail of {size - 5 - records[-1][0]} bytes" in again.log()
    fetch(again)
    assert again.stop() == 0
    kept = hwm_records(path)  # well-formed again, the torn record gone, new marks after
    assert kept[: len(records) - 1] == records[:-1]
    assert len(kept) > len(records) - 1


@pytest.mark.parametrize(
    "where",
    [
        "payload",
        "checksum",
        "length",
    ],
)
def test_corruption_in_the_middle_of_hwm_log_refuses_to_start(
    tmp_path: Path, procs: Procs, where: str
) -> None:
    data = tmp_path / "d"
    d = run_until_records(procs, data, 6)
    path = data / "hwm.log"
    records = hwm_records(path)[:6]
    os.truncate(path, records[-1][1])  # exactly six records: the damage is mid-log
    assert len(hwm_records(path)) == 6
    offset = records[2][0]
    flip_byte(path, offset + {"length": 0, "checksum": 4, "payload": HEADER.size + 2}[where])
    damaged = path.read_bytes()
    code, log = refused(procs.again(d))
    assert code == 1
    assert f"refusing to start: {path}: corrupt record at byte offset {offset}" in log, log
    assert path.read_bytes() == damaged  # nothing truncated


# -- configuration -----------------------------------------------------------------------------


def test_config_file(tmp_path: Path, procs: Procs) -> None:
    port = find_free_port(HOST)
    data = tmp_path / "d"
    config = tmp_path / "idgen.toml"
    config.write_text(
        f'worker-id = 7\nlisten = "{HOST}:{port}"\ndata-dir = "{data}"\nreserve-ms = 1500\n'
    )
    d = procs.track(Daemon(["idgen", "serve", "--config", str(config)], HOST, port,
                           tmp_path / "config.log")).start()
    assert all(parse(i).worker == 7 for i in fetch(d))
    figures = info(d)
    assert figures["worker_id"] == 7 and figures["reserve_ms"] == 1500
    assert d.stop() == 0


def test_config_file_with_an_unknown_key_is_refused(tmp_path: Path, procs: Procs) -> None:
    port = find_free_port(HOST)
    bad = tmp_path / "bad.toml"
    bad.write_text("workers = 3\n")
    code, log = refused(procs.track(Daemon(["idgen", "serve", "--config", str(bad)], HOST,
                                           port, tmp_path / "bad.log")))
    assert code == 2 and f"idgen: {bad}: unknown key 'workers'" in log


def test_listening_beyond_loopback_needs_a_password(tmp_path: Path, procs: Procs) -> None:
    code, log = refused(procs.daemon(tmp_path / "d", "--worker-id", "1", host="0.0.0.0"))
    assert code == 2
    assert "refusing to listen on 0.0.0.0 without --requirepass" in log
    assert not (tmp_path / "d").exists()  # refused before touching the data directory

    d = procs.daemon(tmp_path / "d", "--worker-id", "1", "--requirepass", "s3cret",
                     host="0.0.0.0").start()
    with socket.create_connection(("127.0.0.1", d.port), timeout=REPLY_S) as sock:
        sock.sendall(b"NEXT\r\n")
        assert read_reply_line(sock) == b"-NOAUTH Authentication required.\r\n"
    r = redis.Redis("127.0.0.1", d.port, password="s3cret", socket_timeout=REPLY_S,
                    retry=Retry(NoBackoff(), 0))
    assert parse(r.execute_command("NEXT")).worker == 1
    r.close()
    assert d.stop() == 0


# -- the command line --------------------------------------------------------------------------


def test_cli_parse() -> None:
    id_ = (123_456_789 << 22) | (5 << 12) | 42
    out = idgen_cli("parse", str(id_))
    assert out.returncode == 0, out.stderr
    p = parse(id_)
    assert out.stdout.splitlines() == [
        f"id        {id_}",
        f"time_ms   {DEFAULT_EPOCH_MS + 123_456_789}",
        f"time      {p.time_iso}",
        "worker    5",
        "sequence  42",
    ]
    out = idgen_cli("parse", str(id_), "--epoch", "2025-01-01")
    assert f"time_ms   {EPOCH_2025_MS + 123_456_789}" in out.stdout
    out = idgen_cli("parse", str(MAX_ID + 1))
    assert out.returncode == 2 and "is outside" in out.stderr


def test_cli_next(tmp_path: Path, procs: Procs) -> None:
    d = procs.daemon(tmp_path / "d", "--worker-id", "9").start()
    out = idgen_cli("next", "-n", "5", "--server", d.address)
    assert out.returncode == 0, out.stderr
    ids = [int(line) for line in out.stdout.split()]
    assert len(ids) == 5 and all(a < b for a, b in zip(ids, ids[1:], strict=False))
    assert all(parse(i).worker == 9 for i in ids)
    out = idgen_cli("next", "-n", "100001", "--server", d.address)
    assert out.returncode == 0, out.stderr
    many = [int(line) for line in out.stdout.split()]
    assert len(many) == 100_001 and len(set(many)) == 100_001 and min(many) > max(ids)
    assert d.stop() == 0


def test_cli_next_fails_over_and_reports_errors(tmp_path: Path, procs: Procs) -> None:
    d = procs.daemon(tmp_path / "d", "--worker-id", "9").start()
    down = f"{HOST}:{find_free_port(HOST)}"
    out = idgen_cli("next", "-n", "3", "--server", f"{down},{d.address}")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.split()) == 3
    assert d.stop() == 0
    out = idgen_cli("next", "-n", "1", "--server", down)
    assert out.returncode == 1, out.stderr
    assert out.stderr.splitlines()[-1].startswith(
        f"idgen: no idgen server answered within 1 s at {down}"), out.stderr
