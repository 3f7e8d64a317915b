"""dfs file versions in the namespace alone (sans I/O): overwrite three times, list, restore
each version, the per-directory limit and garbage collection past it (released inodes)."""

from __future__ import annotations

from typing import Any

from dfs import chunks, versions
from dfs import namespace as ns
from dfs.namespace import Namespace


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        self.now += 1
        return self.now


def apply(m: Namespace, entry: bytes) -> Any:
    return m.apply([(1, entry)])[0]


def write(m: Namespace, now: Clock, path: str, size: int, overwrite: bool = True) -> None:
    """What a client's write does to the namespace: create (or overwrite), then its size."""
    assert apply(m, ns.encode_create(now(), path, overwrite)) is None
    m.set_size(path, size)


def test_overwrite_three_times_then_read_and_restore_each_version() -> None:
    m, now = Namespace(), Clock()
    assert apply(m, ns.encode_mkdir(now(), "/v", False)) is None
    write(m, now, "/v/f", 10, overwrite=False)
    for size in (20, 30, 40):
        write(m, now, "/v/f", size)
    rows = m.versions("/v/f")
    assert [(r[0], r[2], r[4]) for r in rows] == [(4, 40, 1), (3, 30, 0), (2, 20, 0), (1, 10, 0)]
    assert len({r[3] for r in rows}) == 4  # each version is its own inode (its own chunks)
    assert m.stat("/v/f")["version"] == 4 and m.stat("/v/f")["versions"] == 3
    for number, size in ((1, 10), (2, 20), (3, 30), (4, 40)):
        assert apply(m, ns.encode_restore(now(), "/v/f", number)) is None
        assert (m.stat("/v/f")["version"], m.stat("/v/f")["size"]) == (number, size)
        assert sorted(r[0] for r in m.versions("/v/f")) == [1, 2, 3, 4]  # nothing lost
    assert apply(m, ns.encode_restore(now(), "/v/f", 4)) == versions.ERR_NO_VERSION.format(
        "/v/f", 4)  # 4 is current, not an old version
    write(m, now, "/v/f", 50)  # after restores, the next number is still new
    assert m.versions("/v/f")[0][:3:2] == [5, 50]
    assert [r[0] for r in m.versions("/v/f")] == [5, 4, 3, 2]  # 3 old ones kept: 1 dropped
    assert m.take_released() == [rows[-1][3]]
    assert m.count("/v")["bytes"] == 20 + 30 + 40 + 50


def test_versions_past_the_limit_are_released() -> None:
    m, now = Namespace(), Clock()
    assert apply(m, ns.encode_mkdir(now(), "/a/b", True)) is None
    write(m, now, "/a/b/f", 1, overwrite=False)
    for size in range(2, 2 + versions.DEFAULT_KEEP_VERSIONS):
        write(m, now, "/a/b/f", size)
    assert m.take_released() == []
    first = m.versions("/a/b/f")[-1]
    write(m, now, "/a/b/f", 99)
    assert m.take_released() == [first[3]] and m.take_released() == []
    assert len(m.versions("/a/b/f")) == versions.DEFAULT_KEEP_VERSIONS + 1
    # The nearest directory's limit wins; 0 keeps no old version.
    assert apply(m, ns.encode_setversions(now(), "/a", 1)) is None
    kept = m.versions("/a/b/f")
    write(m, now, "/a/b/f", 7)
    assert sorted(m.take_released()) == sorted(r[3] for r in kept[1:])
    assert apply(m, ns.encode_setversions(now(), "/a/b", 0)) is None
    write(m, now, "/a/b/f", 8)
    assert [r[4] for r in m.versions("/a/b/f")] == [1]
    assert apply(m, ns.encode_setversions(now(), "/a/b", 1001)) == versions.ERR_BAD_KEEP
    assert m.live_inodes() >= {r[3] for r in m.versions("/a/b/f")}


def test_versions_travel_with_the_file_and_count_in_the_trash() -> None:
    m, now = Namespace(), Clock()
    write(m, now, "/f", 1, overwrite=False)
    write(m, now, "/f", 2)
    olds = {r[3] for r in m.versions("/f") if not r[4]}
    assert apply(m, ns.encode_rename(now(), "/f", "/g", False)) is None
    assert [r[2] for r in m.versions("/g")] == [2, 1]
    assert isinstance(apply(m, ns.encode_delete(now(), "/g", False, 0)), int)
    assert olds <= m.live_inodes()  # in the trash, versions are still held
    assert apply(m, ns.encode_create(now(), "/d", True)) is None  # overwrite of nothing
    assert apply(m, ns.encode_mkdir(now(), "/dir", False)) is None
    assert apply(m, ns.encode_create(now(), "/dir", True)) == ns.ERR_IS_DIR.format("/dir")


def test_the_chunk_table_charges_quotas_and_keeps_old_versions_chunks() -> None:
    m, now = Namespace(), Clock()
    table = chunks.ChunkTable(m)
    machine = chunks.MasterMachine(m, table)

    def run(entry: bytes) -> Any:
        return machine.apply([(1, entry)])[0]

    assert run(ns.encode_mkdir(now(), "/q", False)) is None
    assert run(ns.encode_setquota(now(), "/q", {"BYTES": 100})) is None
    for size in (60, 30):
        assert run(ns.encode_create(now(), "/q/f", True)) is None
        assert run(chunks.encode_alloc(now(), "/q/f", 0))[1] == 1
        assert run(chunks.encode_complete(now(), "/q/f", [size])) == size
    assert run(ns.encode_create(now(), "/q/f", True)) is None
    run(chunks.encode_alloc(now(), "/q/f", 0))
    assert run(chunks.encode_complete(now(), "/q/f", [11])).startswith(
        "ERR quota exceeded: the space quota of '/q' is 100, 90 used, 11 more asked")
    assert run(chunks.encode_complete(now(), "/q/f", [10])) == 10
    assert chunks.dead_inodes(table) == []  # the old versions' chunks are still wanted
    assert run(ns.encode_setversions(now(), "/q", 0)) is None
    assert run(ns.encode_create(now(), "/q/f", True)) is None
    assert len(chunks.dead_inodes(table)) == 3  # every old version dropped: its chunks go


def test_a_file_renamed_over_a_file_keeps_it_as_a_version() -> None:
    """How a client commits a write: a temporary file renamed over the path with REPLACE."""
    m, now = Namespace(), Clock()
    write(m, now, "/f", 1, overwrite=False)
    for size in (2, 3):
        write(m, now, "/tmp1", size, overwrite=False)
        assert apply(m, ns.encode_rename(now(), "/tmp1", "/f", True)) is None
    assert [(r[0], r[2], r[4]) for r in m.versions("/f")] == [(3, 3, 1), (2, 2, 0), (1, 1, 0)]
    write(m, now, "/g", 10, overwrite=False)
    write(m, now, "/g", 20)  # /g has an old version of its own
    assert apply(m, ns.encode_rename(now(), "/g", "/f", True)) is None
    assert [(r[0], r[2]) for r in m.versions("/f")] == [(5, 20), (4, 10), (3, 3), (2, 2)]
    assert len(m.take_released()) == 1  # version 1 of /f: past the default limit of 3
    assert apply(m, ns.encode_restore(now(), "/f", 3)) is None
    assert m.stat("/f")["size"] == 3
