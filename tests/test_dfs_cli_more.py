"""The `dfs` command line's chmod/chown/versions/restore/fsck, its login (--user/--password
and $DFS_USER/$DFS_PASSWORD) and its errors, against a real cluster (3 masters, 3 chunk
servers as processes) through `dfs.__main__.main` in the test's process (one run of
`python -m dfs` for an unreachable master); fsck's report and argument parsing sans I/O
(the latter fuzzed). Timeouts only detect hangs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.resp import CommandError
from dfs import chunks as ct
from dfs import fsck
from dfs.__main__ import build_parser, main
from dfs.chunk_commands import ChunkCommands
from dfs.namespace import Namespace
from tests.dfs_cluster import DfsCluster, eventually

ROOT = Path(__file__).parents[1]
HANG_S = 60


# -- sans I/O ---------------------------------------------------------------------------------

class FakeFs:
    """Just what fsck.check calls: a directory /d with a healthy, an under-replicated, a
    missing and an open file."""

    def report(self) -> dict[str, Any]:
        return {"replication": 3}

    def stat(self, path: str) -> dict[str, Any]:
        return {"type": "dir" if path == "/d" else "file"}

    def ls(self, path: str) -> list[str]:
        return ["ok", "under", "lost", "open"]

    def locate(self, path: str) -> list[Any]:
        servers = {"/d/ok": ["a", "b", "c"], "/d/under": ["a"], "/d/lost": []}
        if path == "/d/open":
            return [0, 0, []]
        return [10, 1, [[7, 1, 10, servers[path]]]]


def test_fsck_counts_missing_and_under_replicated_chunks() -> None:
    seen: list[int] = []
    health = fsck.check(FakeFs(), "/d", seen.append)
    assert (health.files, health.open_files, health.chunks, health.directories) == (3, 1, 3, 1)
    assert health.missing == [("/d/lost", 7)] and health.under == [("/d/under", 7, 1)]
    assert not health.healthy and seen[-1] == 4
    text = fsck.lines(health, "/d")
    assert "/d/lost: chunk 7 has no live replica (MISSING)" in text
    assert "/d/under: chunk 7 has 1 of 3 replicas (under-replicated)" in text
    assert text[-1] == fsck.MISSING


WORDS = st.sampled_from(["chmod", "chown", "versions", "restore", "fsck", "admin", "-R", "1",
                         "x", "/p", "--user", "--password", "report", "decommission",
                         "--cancel", "--no-wait", "-9", ""])


PARSER = build_parser()


@settings(max_examples=150, deadline=None)
@given(st.lists(WORDS, max_size=6))
def test_argument_parsing_never_raises_but_usage(argv: list[str]) -> None:
    try:
        PARSER.parse_args(argv)
    except SystemExit as exc:
        assert exc.code == 2 or exc.code == 0


class Versioned:
    """What FS.LOCATE's VERSION reader looks at: a file node and its old versions."""

    def __init__(self, version: int, inode: int, versions: list[Any] | None = None) -> None:
        self.version, self.inode, self.versions = version, inode, versions or []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=6) | st.sampled_from([b"VERSION", b"version", b"2", b"9"]),
                max_size=3))
def test_locate_version_words_are_checked(words: list[bytes]) -> None:
    node = Versioned(3, 30, [Versioned(2, 20), Versioned(1, 10)])
    commands = ChunkCommands(None, ct.ChunkTable(Namespace()), lambda raw: raw.decode(),
                             None)
    try:
        inode = commands._version_inode(node, words)
    except CommandError:
        return
    assert inode == int(words[1]) * 10


# -- real processes ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DfsCluster]:
    c = DfsCluster(tmp_path_factory.mktemp("dfscli"), chunkservers=3)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@dataclass
class Done:
    """What one in-process run of the command line left: exit status and its output."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def dfs(cluster: DfsCluster, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> Callable[..., Done]:
    """Run `dfs WORDS --quiet --masters ...` in this process (as `python -m dfs` would,
    without its start-up time), with extra environment `env`."""
    def run(*words: str, env: dict[str, str] | None = None) -> Done:
        with monkeypatch.context() as patch:
            for name in [k for k in os.environ if k.startswith("DFS_")]:
                patch.delenv(name)
            for name, value in (env or {}).items():
                patch.setenv(name, value)
            try:
                code = main([*words, "--quiet", "--masters",
                             ",".join(cluster.master_addresses)])
            except SystemExit as exc:
                code = int(exc.code or 0)
        out = capsys.readouterr()
        return Done(code, out.out, out.err)
    return run


def clean_failure(done: Done, start: str) -> bool:
    return (done.returncode == 1 and done.stderr.startswith(f"dfs: {start}")
            and "Traceback" not in done.stderr)


def test_chown_chmod_and_logging_in(cluster: DfsCluster, dfs: Callable[..., Done],
                                    tmp_path: Path) -> None:
    with cluster.client() as fs:
        fs.call("USER.ADD", "alice", "alice-pw")
        fs.call("USER.ADD", "bob", "bob-pw")
    assert dfs("mkdir", "-p", "/c/alice/sub").returncode == 0
    done = dfs("chown", "-R", "alice", "/c/alice")
    assert done.returncode == 0, done.stderr
    with cluster.client() as fs:
        assert fs.stat("/c/alice/sub")["owner"] == "alice"
    local = tmp_path / "note.txt"
    local.write_bytes(b"alice's note\n")
    alice = ["--user", "alice", "--password", "alice-pw"]
    eventually(lambda: dfs("put", str(local), "/c/alice/note", *alice).returncode
               == 0, "alice logs in on every master")
    done = dfs("chmod", "700", "/c/alice", *alice)
    assert done.returncode == 0, done.stderr
    as_bob = {"DFS_USER": "bob", "DFS_PASSWORD": "bob-pw"}
    assert clean_failure(dfs("cat", "/c/alice/note", env=as_bob),
                         "permission denied")
    done = dfs("cat", "/c/alice/note", env={"DFS_USER": "alice",
                                                    "DFS_PASSWORD": "alice-pw"})
    assert done.stdout == "alice's note\n"
    assert clean_failure(dfs("ls", "/", "--user", "alice", "--password", "no"), "")
    assert clean_failure(dfs("chmod", "9z", "/c/alice"), "")
    assert clean_failure(dfs("chown", "bob", "/c/alice", *alice), "permission denied")


def test_versions_read_and_restore(cluster: DfsCluster, dfs: Callable[..., Done],
                                   tmp_path: Path) -> None:
    contents = [b"first\n", b"second, longer\n", b"third\n"]
    local = tmp_path / "f"
    for data in contents:
        local.write_bytes(data)
        assert dfs("put", str(local), "/c/v/f").returncode == 0
    listing = dfs("versions", "/c/v/f")
    assert listing.returncode == 0, listing.stderr
    rows = listing.stdout.splitlines()[1:]
    assert [r.split()[0] for r in rows] == ["3", "2", "1"]
    assert rows[0].endswith("(current)")
    assert dfs("cat", "--version", "2", "/c/v/f").stdout == "second, longer\n"
    with cluster.client() as fs:
        with fs.open("/c/v/f", version=1) as old:
            assert old.read() == b"first\n"
        assert fs.read_bytes("/c/v/f") == b"third\n"  # reading a version restores nothing
        assert fs.locate("/c/v/f")[0] == len(b"third\n")
    assert clean_failure(dfs("cat", "--version", "7", "/c/v/f"), "no version 7 of this file")
    done = dfs("restore", "/c/v/f", "1")
    assert done.returncode == 0 and "version 1 restored" in done.stdout
    assert dfs("cat", "/c/v/f").stdout == "first\n"
    assert clean_failure(dfs("restore", "/c/v/f", "9"), "")
    assert dfs("restore", "/c/v/f", "one").returncode == 2
    assert clean_failure(dfs("versions", "/c/nothing"), "")


def test_unreachable_masters_fail_clearly() -> None:
    from tests.conftest import find_free_port

    port = find_free_port("127.0.0.1")
    done = subprocess.run([sys.executable, "-m", "dfs", "ls", "/", "--masters",
                           f"127.0.0.1:{port}"], capture_output=True, text=True,
                          timeout=HANG_S, cwd=ROOT)
    assert done.returncode == 1
    assert done.stderr.startswith("dfs: no dfs master reachable within 2 s")
    assert "Traceback" not in done.stderr
    bad = subprocess.run([sys.executable, "-m", "dfs", "ls", "/", "--masters", "nowhere"],
                         capture_output=True, text=True, timeout=HANG_S, cwd=ROOT)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr


def test_fsck_healthy_then_under_replicated_then_missing(
        cluster: DfsCluster, dfs: Callable[..., Done], tmp_path: Path) -> None:
    """Last in this module: it stops the chunk servers."""
    local = tmp_path / "blob"
    local.write_bytes(os.urandom(100_000))
    assert dfs("put", str(local), "/c/fsck/blob").returncode == 0
    done = dfs("fsck", "/c/fsck")
    assert done.returncode == 0 and fsck.HEALTHY in done.stdout, done.stdout + done.stderr
    cluster.chunkservers[0].kill()
    under = eventually(lambda: (d := dfs("fsck", "/c")).returncode == 0
                       and "under-replicated chunks: 0" not in d.stdout and d,
                       "fsck sees the under-replicated chunks")
    assert "has 2 of 3 replicas (under-replicated)" in under.stdout
    for server in cluster.chunkservers[1:]:
        server.kill()
    lost = eventually(lambda: (d := dfs("fsck", "/")).returncode == 1 and d,
                      "fsck sees the missing chunks")
    assert "/c/fsck/blob: chunk" in lost.stdout and fsck.MISSING in lost.stdout


# -- the README's promises ----------------------------------------------------------------------

PROMISES = {  # README.md's sentence -> the tests that check it
    "`dfs fsck PATH` lists every chunk with no live replica (MISSING) or fewer than the target "
    "(under-replicated), and exits 1 when a chunk is missing.":
        (test_fsck_counts_missing_and_under_replicated_chunks,
         test_fsck_healthy_then_under_replicated_then_missing),
    "`--user NAME --password P` (or `DFS_USER` and `DFS_PASSWORD`) logs the command line in as "
    "a dfs user; when no master answers within 2 s, a command says so and fails.":
        (test_chown_chmod_and_logging_in, test_unreachable_masters_fail_clearly),
    "logs in as a named user; so does the `dfs` command line with `--user alice --password "
    "...`.": (test_chown_chmod_and_logging_in,),
    "An old version reads without being restored: `FS.LOCATE path VERSION n`, "
    "`DfsClient.open(path, version=n)` or `dfs cat --version n PATH`.":
        (test_versions_read_and_restore,),
    "`dfs put/get/cat/ls/rm/mv/mkdir/stat/du/chmod/chown/versions/restore/fsck`":
        (test_chown_chmod_and_logging_in, test_versions_read_and_restore,
         test_fsck_healthy_then_under_replicated_then_missing),
}


def test_the_readme_says_what_these_tests_check() -> None:
    text = " ".join((ROOT / "README.md").read_text().split())
    for sentence, tests in PROMISES.items():
        assert sentence in text, (sentence, [t.__name__ for t in tests])
