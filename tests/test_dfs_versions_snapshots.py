"""dfs directory snapshots in the namespace alone (sans I/O): a snapshot reads as the
directory was, is read-only, keeps its files' inodes live (their chunks) after a delete or an
overwrite, survives a Raft snapshot, and is refused to users who do not own the directory."""

from __future__ import annotations

from typing import Any

import pytest

from dfs import namespace as ns
from dfs import perms, snapshots
from dfs.namespace import Namespace


def apply(m: Namespace, entry: bytes) -> Any:
    return m.apply([(1, entry)])[0]


def test_a_snapshot_reads_as_the_directory_was() -> None:
    m = Namespace()
    assert apply(m, ns.encode_mkdir(1, "/d/sub", True)) is None
    assert apply(m, ns.encode_create(2, "/d/f")) is None
    m.set_size("/d/f", 5)
    inode = m.stat("/d/f")["inode"]
    assert apply(m, ns.encode_snapshot(3, "/d", "s1")) is None
    assert apply(m, ns.encode_create(4, "/d/f", True)) is None  # overwrite
    m.set_size("/d/f", 7)
    assert isinstance(apply(m, ns.encode_delete(5, "/d/sub", False, 0)), int)
    assert apply(m, ns.encode_create(6, "/d/new")) is None
    assert m.ls("/d") == ["f", "new"]
    assert m.ls("/d/.snapshot") == ["s1/"]
    assert m.ls("/d/.snapshot/s1") == ["f", "sub/"]
    old = m.stat("/d/.snapshot/s1/f")
    assert (old["inode"], old["size"]) == (inode, 5) and m.stat("/d/f")["size"] == 7
    assert apply(m, ns.encode_setversions(7, "/d", 0)) is None
    assert apply(m, ns.encode_create(8, "/d/f", True)) is None  # drops every old version
    assert inode in m.take_released() and inode in m.live_inodes()  # the snapshot holds it
    assert apply(m, ns.encode_snapshot(9, "/d", "s1", True)) is None
    assert inode not in m.live_inodes()


def test_snapshots_are_read_only_and_dot_snapshot_is_reserved() -> None:
    m = Namespace()
    assert apply(m, ns.encode_mkdir(1, "/d", False)) is None
    assert apply(m, ns.encode_create(2, "/d/f")) is None
    assert apply(m, ns.encode_snapshot(3, "/d", "s")) is None
    for entry in (ns.encode_create(4, "/d/.snapshot/s/g"),
                  ns.encode_delete(4, "/d/.snapshot/s/f", False, 0),
                  ns.encode_rename(4, "/d/.snapshot/s/f", "/d/g", False),
                  ns.encode_chmod(4, "/d/.snapshot/s/f", 0o777),
                  ns.encode_create(4, "/d/.snapshot/s/f", True)):
        assert apply(m, entry).startswith("ERR '/d/.snapshot/s") and "read-only" in \
            apply(m, entry), entry
    assert apply(m, ns.encode_mkdir(5, "/d/.snapshot", False)) in (
        snapshots.ERR_RESERVED, snapshots.ERR_READ_ONLY.format("/d/.snapshot"))
    assert apply(m, ns.encode_rename(5, "/d/f", "/d/.snapshot", False)) is not None
    assert apply(m, ns.encode_snapshot(6, "/d", "s")) == \
        snapshots.ERR_SNAPSHOT_EXISTS.format("s", "/d")
    assert apply(m, ns.encode_snapshot(6, "/d", "a/b")).startswith("ERR invalid path")
    assert apply(m, ns.encode_snapshot(6, "/d", "nope", True)) == \
        snapshots.ERR_NO_SNAPSHOT.format("/d", "nope")
    with pytest.raises(ns.PathError, match="read-only"):
        m.check_access("/d/.snapshot/s/f", None, perms.W)
    assert m.check_access("/d/.snapshot/s/f", None, perms.R).kind == "file"


def test_only_the_owner_snapshots_and_snapshots_survive_a_raft_snapshot() -> None:
    m = Namespace()
    assert apply(m, ns.encode_mkdir(1, "/d/e", True)) is None
    assert apply(m, ns.encode_as(2, "alice", ns.encode_snapshot(2, "/d", "s"))) == \
        perms.ERR_NOT_OWNER.format("alice", "/d")
    assert apply(m, ns.encode_chown(3, "/d", "alice", None)) is None
    assert apply(m, ns.encode_as(4, "alice", ns.encode_snapshot(4, "/d", "s"))) is None
    copy = Namespace()
    copy.restore(m.snapshot())
    assert copy.snapshot() == m.snapshot()
    assert copy.ls("/d/.snapshot/s") == ["e/"]
    assert snapshots.listing(copy.lookup("/d")) == [["s", 4]]
