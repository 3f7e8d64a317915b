"""dfs beside the disk it runs on: `.venv/bin/python -m bench.dfs_bench [--quick]`.

A real cluster (tests/dfs_cluster.py: 3 `dfs master` and 4 `dfs chunkserver` processes on
loopback aliases, replication 3, the default 64 MiB chunks), its data directories on the
same disk as the peer's file. Sections:

1. write: one client streams files of FILE_MIB through `DfsClient.open(..., "wb")`; MB/s
   from the first byte to the acknowledged close, against the disk's own write bandwidth
   measured by `dd bs=1M conv=fsync` (fio when installed, with fsync at the end) on the
   same directory's disk, divided by 3, since every byte lands on three disks, here one
   (goal >= 0.5).
2. read: the same files read back through the client against a plain read of a local
   file of the same size just written (goal >= 0.8). Both come from the page cache (the
   chunk servers' files were just written too), so the peer is memory bandwidth and the
   ratio measures the client and the chunk servers, not the disk. The client runs on the
   chunk servers' host, so it reads short-circuit (dfs/chunk_local.py: the file through a
   descriptor the chunk server passes, every 64 KiB block's xxh3_64 checked in the client);
   "2 read over TCP" reads the same files with short_circuit=False (informational: the
   path a client on another host takes, here over loopback). Every file read back is
   hashed and compared with what was written; a mismatch fails the run.
3. create: CREATE_THREADS threads create 1 KiB files through the namespace (a create, one
   chunk allocated, written to three servers, closed and renamed into place) for a while;
   files per second, beside SeaweedFS's published 15.7k 1 KB blobs/s (its `weed benchmark`,
   16 concurrent, by file id without its filer): informational, no goal, because what it
   counts differs: a SeaweedFS blob is one HTTP PUT to one volume server (replication
   000 in that run) with no namespace, ours is a named file in a Raft-replicated namespace
   written to three servers. Each file created is checked to exist with its size.
4. master memory per file: the leader's RSS before and after section 3, divided by the
   files created, beside HDFS's often-quoted 150 bytes per namespace object (about 300 for
   a file of one block): informational.

Prints progress (stderr) and a table; writes bench/results/dfs.json (bench.common
.write_results, which also rewrites bench/README.md's table between the markers
`bench:dfs`). Exits 1 when a goal is missed or a figure could not be measured.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import (
    Figure,
    Skipped,
    bench_parser,
    exit_status,
    machine,
    parse_bench_args,
    progress,
    table,
    write_results,
)
from tests.dfs_cluster import DfsCluster

SECTIONS = ("write", "read", "create", "memory")
REPLICAS = 3
MIB = 1024 * 1024
PIECE = MIB
WRITE_GOAL = 0.5
READ_GOAL = 0.8
CREATE_THREADS = 16
SMALL_FILE = 1024
SEAWEEDFS_BLOBS_PER_S = 15_700.0
HDFS_BYTES_PER_FILE = 300.0
ABANDON_MS = 600_000
DEAD_MS = 30_000
DD_RATE = re.compile(r"(\d+) bytes .*copied, (\d+(?:\.\d+)?(?:e-?\d+)?) s")
ERR_HASH = "{path}: read back {got}, wrote {want}"
ERR_DD = "could not read dd's rate from: {text!r}"
ERR_CREATE_FAILED = "{n} of the create threads failed; the first: {first}"
ERR_CREATED = "{missing} of the {count} files created are missing or of the wrong size"


@dataclass(frozen=True)
class Plan:
    """How much each section moves."""

    file_mib: int
    files: int
    create_s: float


def make_plan(quick: bool) -> Plan:
    return Plan(32, 1, 5.0) if quick else Plan(256, 3, 30.0)


def disk_write_rate(directory: Path, mib: int) -> tuple[float, str]:
    """The disk's write MB/s for `mib` MiB ending with an fsync, and the command used."""
    target = directory / "disk-peer.bin"
    if shutil.which("fio"):
        argv = ["fio", "--name=peer", f"--filename={target}", "--rw=write", "--bs=1M",
                f"--size={mib}M", "--end_fsync=1", "--output-format=terse"]
    else:
        argv = ["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={mib}", "conv=fsync"]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    seconds = time.monotonic() - started
    target.unlink()
    if argv[0] == "dd":
        return parse_dd(done.stderr), " ".join(argv)
    return mib * MIB / seconds / 1e6, " ".join(argv)


def parse_dd(text: str) -> float:
    """MB/s from dd's closing line (`N bytes ... copied, S s, ...`); ValueError when the
    text holds no such line or its time is not positive."""
    match = DD_RATE.search(text)
    if match is None or float(match.group(2)) <= 0:
        raise ValueError(ERR_DD.format(text=text[-200:]))
    return int(match.group(1)) / float(match.group(2)) / 1e6


def local_read_rate(directory: Path, mib: int) -> float:
    """MB/s of a plain read of a local file of `mib` MiB (written first, then read)."""
    path = directory / "read-peer.bin"
    with path.open("wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MIB))
    started = time.monotonic()
    with path.open("rb") as f:
        while f.read(PIECE):
            pass
    seconds = time.monotonic() - started
    path.unlink()
    return mib * MIB / seconds / 1e6


def write_files(cluster: DfsCluster, plan: Plan) -> tuple[float, dict[str, str]]:
    """Section 1: MB/s over every file, and each file's sha256."""
    digests: dict[str, str] = {}
    seconds = 0.0
    with cluster.client() as fs:
        fs.mkdir("/bench", parents=True)
        for n in range(plan.files):
            path, digest = f"/bench/big{n}", hashlib.sha256()
            pieces = [os.urandom(PIECE) for _ in range(plan.file_mib)]
            started = time.monotonic()
            with fs.open(path, "wb") as f:
                for piece in pieces:
                    f.write(piece)
            seconds += time.monotonic() - started
            for piece in pieces:
                digest.update(piece)
            digests[path] = digest.hexdigest()
            progress(f"write: {n + 1}/{plan.files} files of {plan.file_mib} MiB")
    return plan.files * plan.file_mib * MIB / seconds / 1e6, digests


def read_files(cluster: DfsCluster, digests: dict[str, str], file_mib: int,
               short_circuit: bool = True) -> float:
    """Section 2: MB/s over every file; raises if a file reads back different."""
    seconds = 0.0
    with cluster.client(short_circuit=short_circuit) as fs:
        for n, (path, want) in enumerate(digests.items()):
            digest = hashlib.sha256()
            started = time.monotonic()
            with fs.open(path, "rb") as f:
                pieces = list(iter(lambda f=f: f.read(PIECE), b""))
            seconds += time.monotonic() - started
            for piece in pieces:
                digest.update(piece)
            if digest.hexdigest() != want:
                raise RuntimeError(ERR_HASH.format(path=path, got=digest.hexdigest(), want=want))
            how = "" if short_circuit else " over TCP"
            progress(f"read{how}: {n + 1}/{len(digests)} files, hash right")
    return len(digests) * file_mib * MIB / seconds / 1e6


def create_files(cluster: DfsCluster, seconds: float) -> tuple[float, int]:
    """Section 3: 1 KiB files per second from CREATE_THREADS threads, and how many."""
    counts = [0] * CREATE_THREADS
    errors: list[str] = []
    stop = threading.Event()

    def creator(n: int) -> None:
        with cluster.client() as fs:
            while not stop.is_set():
                try:
                    fs.write_bytes(f"/small/t{n}-{counts[n]}", os.urandom(SMALL_FILE))
                except Exception as error:  # noqa: BLE001 - fails the figure, below
                    errors.append(repr(error))
                    return
                counts[n] += 1

    with cluster.client() as fs:
        fs.mkdir("/small", parents=True)
    threads = [threading.Thread(target=creator, args=(n,), daemon=True)
               for n in range(CREATE_THREADS)]
    started = time.monotonic()
    for t in threads:
        t.start()
    while time.monotonic() - started < seconds:
        time.sleep(min(5.0, seconds))
        progress(f"create: {sum(counts)} files in {time.monotonic() - started:.0f} s")
    stop.set()
    for t in threads:
        t.join(120)
    elapsed = time.monotonic() - started
    if errors:
        raise RuntimeError(ERR_CREATE_FAILED.format(n=len(errors), first=errors[0]))
    check_created(cluster, counts)
    return sum(counts) / elapsed, sum(counts)


def check_created(cluster: DfsCluster, counts: list[int]) -> None:
    """Every file the creators were told was closed exists with SMALL_FILE bytes."""
    with cluster.client() as fs:
        names = set(fs.ls("/small"))
        missing = [f"t{n}-{i}" for n, count in enumerate(counts) for i in range(count)
                   if f"t{n}-{i}" not in names]
        sample = [f"/small/t{n}-0" for n, count in enumerate(counts) if count]
        missing += [p for p in sample if fs.stat(p)["size"] != SMALL_FILE]
    if missing:
        raise RuntimeError(ERR_CREATED.format(missing=len(missing), count=sum(counts)))


def leader_rss(cluster: DfsCluster) -> int:
    """The master leader's resident set size in bytes."""
    with cluster.client() as fs:
        leader = int(fs.call("CLUSTER.LEADER")[0])
    proc = cluster.masters[leader - 1].proc
    assert proc is not None
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc status")


def measure(cluster: DfsCluster, work: Path, plan: Plan, sections: list[str],
            doc: dict[str, Any]) -> list[Figure]:
    figures: list[Figure] = []
    digests: dict[str, str] = {}
    if "write" in sections or "read" in sections:
        disk, command = disk_write_rate(work, plan.file_mib)
        rate, digests = write_files(cluster, plan)
        doc["disk_command"], doc["disk_mb_s"] = command, disk
        figures.append(Figure("1 write", f"{REPLICAS} replicas, {plan.file_mib} MiB files",
                              rate, "MB/s", "disk / 3", disk / REPLICAS, WRITE_GOAL,
                              f">= {WRITE_GOAL}x", detail={"disk_mb_s": disk}))
    if "read" in sections:
        local = local_read_rate(work, plan.file_mib)
        rate = read_files(cluster, digests, plan.file_mib)
        figures.append(Figure("2 read", f"{plan.file_mib} MiB files, hashes checked", rate,
                              "MB/s", "local file read", local, READ_GOAL, f">= {READ_GOAL}x"))
        tcp = read_files(cluster, digests, plan.file_mib, short_circuit=False)
        figures.append(Figure("2 read over TCP", f"{plan.file_mib} MiB files, no "
                              "short-circuit", tcp, "MB/s", "local file read", local, None,
                              "informational"))
    if "create" in sections or "memory" in sections:
        before = leader_rss(cluster)
        try:
            rate, count = create_files(cluster, plan.create_s)
        except RuntimeError as error:
            doc["skipped"] = [Skipped("3 create", "1 KiB files", str(error))]
            return figures
        after = leader_rss(cluster)
        doc["created"], doc["rss_before"], doc["rss_after"] = count, before, after
        if "create" in sections:
            figures.append(Figure("3 create", f"1 KiB files, {CREATE_THREADS} threads", rate,
                                  "files/s", "SeaweedFS published", SEAWEEDFS_BLOBS_PER_S,
                                  None, "informational"))
        if "memory" in sections:
            figures.append(Figure("4 memory", "master RSS per one-chunk file",
                                  (after - before) / max(1, count), "bytes", "HDFS estimate",
                                  HDFS_BYTES_PER_FILE, None, "informational"))
    return figures


def patient(cluster: DfsCluster) -> DfsCluster:
    """The test cluster with ABANDON_MS for a silent writer and DEAD_MS for a silent chunk
    server instead of the tests' short times: a slow disk or a busy machine must not get a
    big file's write declared abandoned, nor a chunk server dead, in the middle of a run."""
    for master in cluster.masters:
        for option, value in (("--abandoned-write-ms", ABANDON_MS),
                              ("--chunkserver-dead-ms", DEAD_MS)):
            at = master.argv.index(option)
            master.argv[at + 1] = str(value)
    return cluster


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("bench.dfs_bench", __doc__.splitlines()[0], SECTIONS,
                          "small files and short windows (a minute or two)")
    args = parse_bench_args(parser, argv, SECTIONS)
    plan = make_plan(args.quick)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    doc: dict[str, Any] = {"benchmark": "dfs", "started": datetime.now(UTC).isoformat(),
                           "quick": args.quick, "settings": plan.__dict__ | {
                               "replicas": REPLICAS, "create_threads": CREATE_THREADS},
                           "machine": machine()}
    skipped: list[Skipped] = []
    work = Path(tempfile.mkdtemp(prefix="dfs-bench-"))
    cluster = patient(DfsCluster(work, chunkservers=4))
    try:
        progress("starting 3 masters and 4 chunk servers")
        cluster.start()
        figures = measure(cluster, work, plan, args.sections, doc)
    except Exception as error:  # noqa: BLE001 - reported as not measured, the run fails
        progress(f"run failed: {error!r}")
        figures = []
        skipped.append(Skipped("all", ",".join(args.sections), repr(error)))
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    doc["finished"] = datetime.now(UTC).isoformat()
    doc["figures"], doc["skipped"] = figures, [*skipped, *doc.get("skipped", [])]
    skipped = doc["skipped"]
    doc["table"] = table(figures, skipped)
    print(doc["table"])
    args.out.mkdir(parents=True, exist_ok=True)
    write_results(args.out, "dfs", stamp, doc, figures, "dfs beside its disk")
    return exit_status(doc)


if __name__ == "__main__":
    sys.exit(main())
