"""dfs end to end with real processes: 3 masters and 4 chunk servers (tests/dfs_cluster.py),
small chunks (128 KiB) so files span many of them.

- files of several sizes written and read back (hash equal), blocking and asyncio;
- a chunk server SIGKILLed in the middle of a write storm: every file whose close was
  acknowledged reads back with the right hash, and replication returns to 3 without help;
- the master leader SIGKILLed while files are written: every acknowledged file reads back
  (a new leader leaves safe mode once the chunk servers report to it);
- a chunk primary SIGSTOPped past its dead time and its lease (the masters' --lease-ms is
  short here) while writes and reads go on, then SIGCONTed: its stale data is never read,
  and stale replicas are deleted;
- a byte flipped in a chunk file on disk: the read still returns the right bytes (another
  replica) and the bad replica is replaced by a good one; another flipped byte in a chunk
  no client reads is found by the scrubber and repaired the same way;
- pandas writes a CSV to a dfs:// path and reads it back (fsspec);
- a file whose writer was SIGKILLed before its close is deleted, and its chunks; one whose
  writer object was dropped unclosed is deleted too and never appears, while the writer
  beside it in the same client, paused longer than --abandoned-write-ms, is kept alive by
  its client's lease renewals and closes;
- the chunks of a file replaced or deleted (and purged from the trash) are deleted on
  every chunk server; a leader without chunk server reports refuses allocations (safe mode);
- the command line: put/get with progress bars, cat, ls, du, mv, stat, rm, admin report.
Timeouts only detect hangs.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfs import launch
from dfs.client import AsyncDfsClient, DfsClient, DfsError, DfsUnavailable
from tests.dfs_cluster import DfsCluster, eventually
from tests.procs import ROOT

CHUNK = 128 * 1024
LEASE_MS = 4000  # the masters' --lease-ms: a stopped primary is paused past it
SIZES = [0, 1, 65_536, CHUNK - 1, CHUNK, CHUNK + 1, 8 * CHUNK + 7]



@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DfsCluster]:
    c = DfsCluster(tmp_path_factory.mktemp("dfs"), chunkservers=4, scrub_pause_ms=1000,
                   lease_ms=LEASE_MS)
    try:
        c.start()
        yield c
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.stop()


@pytest.fixture
def fs(cluster: DfsCluster) -> Iterator[DfsClient]:
    with cluster.client(chunk_size=CHUNK) as client:
        yield client


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fully_replicated(fs: DfsClient, paths: list[str], replicas: int = 3) -> bool:
    """Every chunk of every path has `replicas` replicas and nothing is under-replicated."""
    if fs.report()["under_replicated"]:
        return False
    return all(len(row[3]) == replicas for p in paths for row in fs.locate(p)[2])


def test_files_of_several_sizes_read_back(cluster: DfsCluster, fs: DfsClient) -> None:
    fs.mkdir("/sizes", parents=True)
    blobs = {size: os.urandom(size) for size in SIZES}
    for size, data in blobs.items():
        with fs.open(f"/sizes/f{size}", "wb") as f:
            for i in range(0, size, 50_000):  # written in pieces, as a stream
                f.write(data[i:i + 50_000])
    for size, data in blobs.items():
        for chunk, _version, _size, servers in fs.locate(f"/sizes/f{size}")[2]:
            assert len(_chunk_files(cluster, chunk)) == 3  # on every disk once closed
            racks = {(int(s.split(":")[0].rsplit(".", 1)[1]) - 5) // 2 for s in servers}
            assert len(servers) == 3 and len(racks) == 2  # both racks
        assert digest(fs.read_bytes(f"/sizes/f{size}")) == digest(data), size
        assert fs.stat(f"/sizes/f{size}")["size"] == size
        assert len(fs.locate(f"/sizes/f{size}")[2]) == -(-size // CHUNK)
    with fs.open(f"/sizes/f{8 * CHUNK + 7}", "rb") as f:  # seek into the middle of a chunk
        f.seek(3 * CHUNK + 5)
        assert f.read(10) == blobs[8 * CHUNK + 7][3 * CHUNK + 5:3 * CHUNK + 15]
    fs.write_bytes("/sizes/f1", b"replaced")  # an overwrite replaces the file at close
    assert fs.read_bytes("/sizes/f1") == b"replaced"
    assert sorted(fs.ls("/sizes")) == sorted(f"f{s}" for s in SIZES)
    eventually(lambda: fully_replicated(fs, [f"/sizes/f{s}" for s in SIZES]),
               "three replicas of every chunk")


def test_the_asyncio_client(cluster: DfsCluster) -> None:
    async def main() -> bytes:
        async with AsyncDfsClient(cluster.master_addresses, chunk_size=CHUNK) as fs:
            await fs.mkdir("/async", parents=True)
            f = await fs.open("/async/a", "wb")
            listed = await asyncio.gather(f.write(b"x" * (CHUNK + 3)), fs.ls("/async"))
            assert listed[0] == CHUNK + 3 and listed[1][0].endswith("._COPYING_")
            await f.close()
            return await fs.read_bytes("/async/a")

    assert asyncio.run(main()) == b"x" * (CHUNK + 3)


def test_a_chunk_server_killed_in_a_write_storm(cluster: DfsCluster, fs: DfsClient) -> None:
    fs.mkdir("/storm", parents=True)
    acknowledged: dict[str, str] = {}
    lock = threading.Lock()
    started = threading.Event()

    def writer(n: int) -> None:
        rng = random.Random(n)
        with cluster.client(chunk_size=CHUNK) as client:
            for i in range(12):
                data = rng.randbytes(rng.randrange(1, 3 * CHUNK))
                path = f"/storm/w{n}-{i}"
                try:
                    client.write_bytes(path, data)
                except OSError:
                    continue  # not acknowledged: no promise
                with lock:
                    acknowledged[path] = digest(data)
                started.set()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    started.wait(60)
    victim = cluster.chunkservers[1]
    victim.kill()
    for t in threads:
        t.join(120)
    assert len(acknowledged) > 24  # the storm went on after the kill
    for path, want in acknowledged.items():
        assert digest(fs.read_bytes(path)) == want, path
    eventually(lambda: fully_replicated(fs, sorted(acknowledged)),
               "replication back to 3 on the three live servers")
    victim.start()  # back on its data: its replicas are extra or stale, and deleted
    eventually(lambda: cluster.ready(fs, 4), "the restarted server to report")




def test_the_master_leader_killed_while_files_are_written(cluster: DfsCluster,
                                                          fs: DfsClient) -> None:
    fs.mkdir("/failover", parents=True)
    leader = int(fs.call("CLUSTER.LEADER")[0])
    acknowledged: dict[str, bytes] = {}
    rng = random.Random(3)
    with cluster.client(chunk_size=CHUNK) as writer:
        for i in range(16):
            if i == 6:
                cluster.masters[leader - 1].kill()
            data = rng.randbytes(rng.randrange(1, 2 * CHUNK))
            try:
                writer.write_bytes(f"/failover/f{i}", data)
            except (OSError, DfsError):
                continue  # not acknowledged: no promise
            acknowledged[f"/failover/f{i}"] = data
    assert len(acknowledged) >= 12  # a new leader took over, out of safe mode
    for path, want in acknowledged.items():
        assert fs.read_bytes(path) == want, path
    cluster.masters[leader - 1].start()
    eventually(lambda: cluster.ready(fs), "the cluster whole again")


def _versions_on_disk(cluster: DfsCluster, chunk: int) -> list[int]:
    return [int(p.stem.split("_")[1]) for p in _chunk_files(cluster, chunk)]


def test_a_stopped_chunk_server_comes_back_stale(cluster: DfsCluster, fs: DfsClient) -> None:
    """SIGSTOP a chunk primary past the dead time and its lease while writes go on, then
    SIGCONT: its stale data is never read, and the stale replicas are deleted."""
    fs.mkdir("/stop", parents=True)
    eventually(lambda: cluster.ready(fs, 4), "four chunk servers")
    acknowledged: dict[str, bytes] = {}
    rng = random.Random(7)
    with cluster.client(chunk_size=CHUNK, data_timeout_s=1.0) as writer:
        for i in range(30):
            if i == 5:  # the primary of the last write's first chunk
                primary = fs.locate(f"/stop/f{i - 1}")[2][0][3][0]
                victim = next(c for c in cluster.chunkservers if c.address == primary)
                victim.signal(signal.SIGSTOP)
                stopped = time.monotonic()
            if i == 20:
                time.sleep(max(0.0, stopped + LEASE_MS / 1000 + 1 - time.monotonic()))
                victim.signal(signal.SIGCONT)
            data = rng.randbytes(rng.randrange(1, 2 * CHUNK))
            try:
                writer.write_bytes(f"/stop/f{i}", data)
            except OSError:
                continue
            acknowledged[f"/stop/f{i}"] = data
            if i % 5 == 4:  # reads go on too
                for path, want in acknowledged.items():
                    assert fs.read_bytes(path) == want, path
    assert len(acknowledged) >= 25
    for path, want in acknowledged.items():
        assert fs.read_bytes(path) == want, path

    def only_current_versions() -> bool:
        rows = [row for p in acknowledged for row in fs.locate(p)[2]]
        return all(set(_versions_on_disk(cluster, c)) == {v} and len(where) == 3
                   for c, v, _n, where in rows)

    eventually(only_current_versions, "stale replicas deleted, 3 current ones per chunk")
    versions = [row[1] for p in acknowledged for row in fs.locate(p)[2]]
    assert max(versions) > 1  # writes through the stopped server were allocated again


def _chunk_files(cluster: DfsCluster, chunk: int) -> list[Path]:
    return [p for i in range(len(cluster.chunkservers))
            for p in cluster.chunk_dir(i).glob(f"{chunk}_*.data")]


def _flip(path: Path, at: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0x5A
    path.write_bytes(bytes(raw))


def _all_copies_good(cluster: DfsCluster, chunk: int, want: bytes) -> bool:
    files = _chunk_files(cluster, chunk)
    return len(files) >= 3 and all(p.read_bytes() == want for p in files)


def test_a_flipped_byte_is_read_around_and_repaired(cluster: DfsCluster, fs: DfsClient) -> None:
    fs.mkdir("/flip", parents=True)
    data = os.urandom(3 * CHUNK)
    fs.write_bytes("/flip/read", data)
    fs.write_bytes("/flip/scrub", data)
    eventually(lambda: fully_replicated(fs, ["/flip/read", "/flip/scrub"]), "3 replicas")
    read_chunk = fs.locate("/flip/read")[2][1][0]
    scrub_chunk = fs.locate("/flip/scrub")[2][2][0]
    for chunk in (read_chunk, scrub_chunk):
        for path in _chunk_files(cluster, chunk):  # damage every replica but one
            if path != _chunk_files(cluster, chunk)[-1]:
                _flip(path, 1000)
    assert digest(fs.read_bytes("/flip/read")) == digest(data)
    piece = data[CHUNK:2 * CHUNK]
    eventually(lambda: _all_copies_good(cluster, read_chunk, piece),
               "the damaged replicas of the read chunk replaced")
    eventually(lambda: _all_copies_good(cluster, scrub_chunk, data[2 * CHUNK:]),
               "the scrubber to find and repair the damaged replicas")
    assert digest(fs.read_bytes("/flip/scrub")) == digest(data)


def test_pandas_writes_and_reads_a_csv(cluster: DfsCluster) -> None:
    import pandas as pd  # (a requirement: imported here, only this test needs it)

    from dfs.fsspec_fs import ENV_MASTERS  # (importing it registers dfs://)

    options = {"masters": ",".join(cluster.master_addresses)}
    frame = pd.DataFrame({"id": range(1000), "name": [f"n{i}" for i in range(1000)]})
    frame.to_csv("dfs:///tables/t.csv", index=False, storage_options=options)
    back = pd.read_csv("dfs:///tables/t.csv", storage_options=options)
    assert back.equals(frame)
    host = cluster.master_addresses[0]
    assert pd.read_csv(f"dfs://{host}/tables/t.csv").equals(frame)  # a master in the URL
    os.environ[ENV_MASTERS] = options["masters"]
    try:
        assert pd.read_csv("dfs:///tables/t.csv").equals(frame)
    finally:
        del os.environ[ENV_MASTERS]


def dfs_cli(cluster: DfsCluster, *words: str, stdin: bytes | None = None
            ) -> subprocess.CompletedProcess[bytes]:
    """`python -m dfs WORDS --masters ...`, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "dfs", *words, "--masters",
                           ",".join(cluster.master_addresses), "--chunk-size", str(CHUNK)],
                          input=stdin, capture_output=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_the_command_line(cluster: DfsCluster, tmp_path: Path) -> None:
    local = tmp_path / "big.bin"
    data = os.urandom(5 * CHUNK + 11)
    local.write_bytes(data)
    assert dfs_cli(cluster, "mkdir", "-p", "/cli/in").returncode == 0
    put = dfs_cli(cluster, "put", str(local), "/cli/in/")
    assert put.returncode == 0, put.stderr
    assert b"100%" in put.stderr and b"put /cli/in/big.bin [" in put.stderr  # the bar
    got = dfs_cli(cluster, "get", "/cli/in/big.bin", str(tmp_path / "back.bin"))
    assert got.returncode == 0 and b"100%" in got.stderr, got.stderr
    assert (tmp_path / "back.bin").read_bytes() == data
    assert dfs_cli(cluster, "put", "-", "/cli/small", stdin=b"hello\n").returncode == 0
    assert dfs_cli(cluster, "cat", "/cli/small", "/cli/small").stdout == b"hello\nhello\n"
    listing = dfs_cli(cluster, "ls", "/cli").stdout.decode().splitlines()
    assert [line.split()[0] + " " + line.split()[-1] for line in listing] == [
        "d /cli/in", "- /cli/small"]
    assert f" {len(data)} " in dfs_cli(cluster, "ls", "/cli/in/big.bin").stdout.decode()
    assert dfs_cli(cluster, "du", "-s", "/cli").stdout.split()[0] == str(len(data) + 6).encode()
    assert dfs_cli(cluster, "mv", "/cli/small", "/cli/in").returncode == 0
    assert b"size: 6" in dfs_cli(cluster, "stat", "/cli/in/small").stdout
    assert dfs_cli(cluster, "rm", "-r", "/cli").returncode == 0
    missing = dfs_cli(cluster, "stat", "/cli")
    assert missing.returncode == 1 and b"no such file or directory" in missing.stderr
    report = dfs_cli(cluster, "admin", "report").stdout.decode()
    assert "safe mode: off" in report and "chunk servers: 4 live, racks: 2" in report
    assert dfs_cli(cluster, "ls", "/", "--bogus").returncode == 2


def test_chunks_of_replaced_and_deleted_files_are_collected(cluster: DfsCluster,
                                                            fs: DfsClient) -> None:
    fs.mkdir("/gc", parents=True)
    fs.master.call("FS.SETVERSIONS", "/gc", "0")  # a replaced file is kept as no version
    fs.write_bytes("/gc/a", os.urandom(2 * CHUNK))
    fs.write_bytes("/gc/b", os.urandom(CHUNK))
    old = [row[0] for row in fs.locate("/gc/a")[2]]
    gone = [row[0] for row in fs.locate("/gc/b")[2]]
    eventually(lambda: all(len(_chunk_files(cluster, c)) == 3 for c in old + gone),
               "the replicas on disk")
    fs.write_bytes("/gc/a", b"new")  # the old file's chunks are orphans now
    fs.delete("/gc/b")  # in the trash until its expiry (TRASH_KEEP_MS), then purged
    eventually(lambda: not any(_chunk_files(cluster, c) for c in old + gone),
               "the orphan chunks deleted on every chunk server")
    assert fs.read_bytes("/gc/a") == b"new"


WRITER_DIES = """
import os, signal, sys
from dfs.client import DfsClient
fs = DfsClient(sys.argv[1], chunk_size=int(sys.argv[2]))
f = fs.open("/dead/f", "wb")
f.write(os.urandom(int(sys.argv[2]) + 1))
f.flush()  # the first chunk is on its servers
print(fs.ls("/dead")[0], flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_file_whose_writer_died_is_deleted_with_its_chunks(cluster: DfsCluster,
                                                             fs: DfsClient) -> None:
    """A writer SIGKILLed, and one dropped unclosed, lose their files to the reaper, while a
    writer of the same client opened before both and silent as long is kept alive by the
    client's lease renewals (they all wait on the same reaper, so the test waits once)."""
    fs.mkdir("/dead", parents=True)
    fs.mkdir("/alive", parents=True)
    head, tail = os.urandom(1000), os.urandom(CHUNK + 5)
    alive = fs.open("/alive/kept", "wb")  # opened first: never younger than the others
    alive.write(head)
    dropped = fs.open("/alive/dropped", "wb")
    dropped.write(b"never committed")
    [dropped_temp] = [n for n in fs.ls("/alive") if n.startswith("dropped.")]
    del dropped
    gc.collect()  # abandoned: no commit, and its lease is no longer renewed
    died = subprocess.run([sys.executable, "-c", WRITER_DIES, ",".join(
        cluster.master_addresses), str(CHUNK)], capture_output=True, timeout=60, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    temp = died.stdout.decode().strip()
    assert temp.endswith("._COPYING_"), died.stderr
    [chunk] = [row[0] for row in fs.locate(f"/dead/{temp}")[2]]
    assert _chunk_files(cluster, chunk)
    eventually(lambda: fs.ls("/dead") == [], "the abandoned file deleted (ABANDON_MS)")
    eventually(lambda: not _chunk_files(cluster, chunk), "its chunk deleted everywhere")
    eventually(lambda: dropped_temp not in fs.ls("/alive"), "the dropped writer's file reaped")
    alive.write(tail)  # silent all along: only the lease renewals kept its file
    alive.close()
    assert fs.read_bytes("/alive/kept") == head + tail
    assert fs.ls("/alive") == ["kept"] and fs.leases.renewals >= 1


def test_safe_mode_refuses_allocation_until_chunk_servers_report(tmp_path: Path) -> None:
    lonely = DfsCluster(tmp_path, chunkservers=0)
    try:
        for master in lonely.masters:
            master.start()
        with lonely.client(deadline_s=2.0) as fs:
            eventually(lambda: fs.exists("/"), "a leader")
            fs.mkdir("/safe")  # the namespace works in safe mode
            with pytest.raises(DfsUnavailable) as info:
                fs.write_bytes("/safe/f", b"data")
            assert "TRYAGAIN safe mode: 0 of 1 chunk servers needed have reported" in str(
                info.value)
            assert fs.report()["safe_mode"] == 1
    finally:
        lonely.stop()


# -- the README's promises ----------------------------------------------------------------------

PROMISES = {  # README.md's sentence -> the test here that checks it
    "A chunk goes to 3 servers (`--replication`), on different racks while there are enough.":
        test_files_of_several_sizes_read_back,
    "A write is pipelined along the chain of its servers (client, then A, then B, then C) and "
    "acknowledged once every one of them has fsynced it":
        test_files_of_several_sizes_read_back,
    "A new master leader is in safe mode, refusing allocations with `TRYAGAIN safe mode: ...`, "
    "until enough chunk servers have reported.":
        test_safe_mode_refuses_allocation_until_chunk_servers_report,
    "A file whose close returned is on every replica's disk and reads back byte for byte after "
    "any one chunk server is SIGKILLed, and the lost replicas are re-replicated to 3 without "
    "help.": test_a_chunk_server_killed_in_a_write_storm,
    "A byte flipped in a chunk file on disk is never returned: the read fails over to another "
    "replica and reports the bad one, and the scrubber finds damage no client reads; either "
    "way the bad replica is replaced by a good copy.":
        test_a_flipped_byte_is_read_around_and_repaired,
    "The chunks of a file replaced (once past its directory's versions limit) or deleted (once "
    "purged from the trash) are deleted from every chunk server.":
        test_chunks_of_replaced_and_deleted_files_are_collected,
    "`dfs put` and `dfs get` show a progress bar on stderr.": test_the_command_line,
    "A chunk write holds a lease that its writer renews (`--lease-ms` on the masters, 60 s by "
    "default as in GFS); every replica of the chain refuses the write once the lease has run "
    "out, so a primary paused past its lease never has its stale data read.":
        test_a_stopped_chunk_server_comes_back_stale,
    "A file whose writer died before its close (it is written as "
    "`<path>.<token>._COPYING_`) is deleted, and its chunks with it, once its writer has been "
    "silent for `--abandoned-write-ms` (an hour by default, HDFS's lease hard limit).":
        test_a_file_whose_writer_died_is_deleted_with_its_chunks,
    "While a file is open for writing, its client renews its write lease (one FS.RENEWLEASE "
    "per client for all its open files), so a writer that pauses longer keeps its file; a "
    "writer dropped without its close is abandoned, never committed.":
        test_a_file_whose_writer_died_is_deleted_with_its_chunks,
    "`import dfs.fsspec_fs` registers `dfs://` with fsspec, so pandas writes and reads CSVs at "
    "`dfs:///path` (masters in `storage_options={\"masters\": ...}`, in the URL as "
    "`dfs://host:port/path`, or in `DFS_MASTERS`).": test_pandas_writes_and_reads_a_csv,
}
FRAMING = ("on the data path's own framing (length-prefixed msgpack headers and raw bytes) "
           "chunk data moved {:.2f} times as fast as the same bytes sent as RESP commands to "
           "core's RESP server (`bench/dfs_framing.py`, 1 MiB pieces, this machine)")
LAUNCH = ("`make run` also starts three dfs masters (clients on 7881-7883, Raft on 7981-7983) "
          "and four chunk servers (7891-7894, on two racks).")


def readme_text() -> str:
    return " ".join((ROOT / "README.md").read_text().split())


def test_the_readme_says_what_these_tests_check() -> None:
    text = readme_text()
    for sentence, test in PROMISES.items():
        assert sentence in text, (sentence, test.__name__)
    figures = json.loads((ROOT / "bench" / "results" / "dfs_framing.json").read_text())
    assert FRAMING.format(figures["ratio"]) in text
    assert LAUNCH in text
    processes = launch.local_cluster(Path("var")).processes
    masters = [p for p in processes if p.name.startswith("dfs-master-")]
    chunkservers = [p for p in processes if p.name.startswith("dfs-chunk-")]
    assert [p.port for p in masters] == [7881, 7882, 7883]
    assert all(f"127.0.0.1:798{i}" in p.argv for i, p in enumerate(masters, start=1))
    assert [p.port for p in chunkservers] == [7891, 7892, 7893, 7894]
    assert len({p.argv[p.argv.index("--rack") + 1] for p in chunkservers}) == 2
