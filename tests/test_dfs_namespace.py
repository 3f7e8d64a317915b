"""dfs/namespace.py alone, sans I/O: the error texts and the edge cases by example, then
hypothesis: random operation sequences against a plain dict-of-paths model (every reply
equal), and a snapshot restored mid-sequence ending in the same state as the original.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfs import namespace as ns
from dfs.namespace import Namespace

KEEP_MS = 50


def run(machine: Namespace, *entries: bytes) -> list[Any]:
    return machine.apply(list(enumerate(entries, 1)))


def test_the_operations_and_their_error_texts() -> None:
    m = Namespace()
    assert run(m, ns.encode_mkdir(10, "/a", False), ns.encode_create(11, "/a/f"),
               ns.encode_mkdir(12, "/a/f/g", False), ns.encode_create(13, "/a/f"),
               ns.encode_create(14, "/x/f"), ns.encode_mkdir(15, "/", False),
               ns.encode_delete(16, "/a", False, KEEP_MS),
               ns.encode_rename(17, "/a", "/a/b", False),
               ns.encode_rename(18, "/", "/b", False),
               ns.encode_create(19, "a/b")) == [
        None, None, ns.ERR_NOT_DIR.format("/a/f"), ns.ERR_EXISTS.format("/a/f"),
        ns.ERR_NO_ENTRY.format("/x"), ns.ERR_EXISTS.format("/"),
        ns.ERR_DIR_NOT_EMPTY.format("/a"), ns.ERR_INTO_ITSELF.format("/a", "/a/b"),
        ns.ERR_ROOT, ns.ERR_BAD_PATH.format("a/b")]
    assert m.ls("/") == ["a/"] and m.ls("/a") == ["f"] and m.ls("/a/f") == ["f"]
    assert m.stat("/a/f").items() >= {"type": "file", "inode": 3, "size": 0, "ctime_ms": 11,
                                      "mtime_ms": 11, "chunks": []}.items()
    assert m.stat("/a/").items() >= {"type": "dir", "inode": 2, "size": 0, "ctime_ms": 10,
                                     "mtime_ms": 11, "children": 1}.items()
    with pytest.raises(ns.PathError, match="^ERR no such file or directory '/nope'$"):
        m.stat("/nope")
    with pytest.raises(ns.PathError, match="^ERR not a directory '/a/f'$"):
        m.ls("/a/f/g")
    for bad in ("", "//", "/a//b", "/a/./b", "/..", "/" + "n" * 256, "/\x00"):
        with pytest.raises(ns.PathError):
            ns.check_path(bad)
    assert run(m, b"\x92\x01", msgpack.packb(["nope", 1]))[0].startswith("ERR bad namespace")


def test_mkdir_parents_is_mkdir_p() -> None:
    m = Namespace()
    assert run(m, ns.encode_mkdir(1, "/a/b/c", True), ns.encode_mkdir(2, "/a/b", True),
               ns.encode_create(3, "/a/f"), ns.encode_mkdir(4, "/a/f/g", True),
               ns.encode_mkdir(5, "/", True)) == [
        None, None, None, ns.ERR_NOT_DIR.format("/a/f"), None]
    assert m.ls("/a") == ["b/", "f"] and m.ls("/a/b") == ["c/"]


def test_rename_moves_subtrees_and_replaces_only_when_asked() -> None:
    m = Namespace()
    run(m, ns.encode_mkdir(1, "/a/b", True), ns.encode_create(2, "/a/b/f"),
        ns.encode_mkdir(3, "/d", False), ns.encode_create(4, "/g"),
        ns.encode_mkdir(5, "/e/x", True))
    inode = m.stat("/a/b/f")["inode"]
    assert run(m, ns.encode_rename(6, "/a", "/d/a", False)) == [None]
    assert m.ls("/") == ["d/", "e/", "g"] and m.stat("/d/a/b/f")["inode"] == inode
    assert run(m, ns.encode_rename(7, "/g", "/d/a/b/f", False),
               ns.encode_rename(8, "/d/a", "/g", True),
               ns.encode_rename(9, "/g", "/e", True),
               ns.encode_rename(10, "/d/a", "/e", True),
               ns.encode_rename(11, "/g", "/d/a/b/f", True),
               ns.encode_rename(12, "/e/x", "/d/a", True)) == [
        ns.ERR_EXISTS.format("/d/a/b/f"), ns.ERR_NOT_DIR.format("/g"),
        ns.ERR_IS_DIR.format("/e"), ns.ERR_DIR_NOT_EMPTY.format("/e"), None,
        ns.ERR_DIR_NOT_EMPTY.format("/d/a")]
    assert m.ls("/") == ["d/", "e/"] and m.stat("/d/a/b/f")["mtime_ms"] == 4
    assert m.stat("/d/a/b")["mtime_ms"] == 11  # the directories changed are stamped


def test_delete_goes_to_the_trash_and_a_purge_drops_what_expired() -> None:
    m = Namespace()
    run(m, ns.encode_mkdir(100, "/a/b", True), ns.encode_create(101, "/f"))
    assert run(m, ns.encode_delete(102, "/a", True, 10), ns.encode_delete(90, "/f", False, 20),
               ns.encode_delete(103, "/", True, 5), ns.encode_delete(104, "/f", False, 5)) == [
        1, 2, ns.ERR_ROOT, ns.ERR_NO_ENTRY.format("/f")]
    # the second delete's clock was behind: the namespace's time does not go back
    assert m.trash_listing() == [[1, "/a", "dir", 102, 112], [2, "/f", "file", 102, 122]]
    assert m.ls("/") == [] and not m.expired(111) and m.expired(112)
    assert run(m, ns.encode_purge(115), ns.encode_purge(116)) == [1, 0]
    assert m.trash_listing() == [[2, "/f", "file", 102, 122]]
    assert run(m, ns.encode_create(117, "/f")) == [None]  # a deleted name is free again


def test_a_deep_tree_snapshots_without_recursion() -> None:
    m = Namespace()
    path = "/d" * 2000  # deeper than Python's recursion limit
    assert run(m, ns.encode_mkdir(1, path, True), ns.encode_create(2, path + "/f")) == [
        None, None]
    copy = Namespace()
    copy.restore(m.snapshot())
    assert copy.snapshot() == m.snapshot() and copy.ls(path) == ["f"]


# -- hypothesis: against a model ---------------------------------------------------------------

ERR_BAD = "bad"


@dataclass
class Model:
    """The namespace as a dict of path -> kind, the root always a directory."""

    kinds: dict[str, str] = field(default_factory=lambda: {"/": ns.DIR})
    trash: list[list[Any]] = field(default_factory=list)
    clock: int = 0
    next_trash: int = 1

    @staticmethod
    def parent(path: str) -> str:
        return path.rsplit("/", 1)[0] or "/"

    def lookup(self, path: str) -> str:
        prefix = "/"
        for name in path.strip("/").split("/") if path != "/" else []:
            if self.kinds[prefix] == ns.FILE:
                raise ns.PathError(ns.ERR_NOT_DIR.format(prefix))
            prefix = prefix.rstrip("/") + "/" + name
            if prefix not in self.kinds:
                raise ns.PathError(ns.ERR_NO_ENTRY.format(path))
        return self.kinds[path]

    def parent_dir(self, path: str) -> str:
        if path == "/":
            raise ns.PathError(ns.ERR_ROOT)
        parent = self.parent(path)
        if self.lookup(parent) != ns.DIR:
            raise ns.PathError(ns.ERR_NOT_DIR.format(parent))
        return parent

    def under(self, path: str) -> list[str]:
        return [p for p in self.kinds if p == path or p.startswith(path + "/")]

    def mkdir(self, path: str, parents: bool) -> None:
        if parents:
            prefix = ""
            for name in path.strip("/").split("/") if path != "/" else []:
                prefix += "/" + name
                if prefix not in self.kinds:
                    self.kinds[prefix] = ns.DIR
                elif self.kinds[prefix] == ns.FILE:
                    raise ns.PathError(ns.ERR_NOT_DIR.format(prefix))
            return None
        if path == "/":
            raise ns.PathError(ns.ERR_EXISTS.format("/"))
        return self.create(path, ns.DIR)

    def create(self, path: str, kind: str = ns.FILE) -> None:
        self.parent_dir(path)
        if path in self.kinds:
            raise ns.PathError(ns.ERR_EXISTS.format(path))
        self.kinds[path] = kind
        return None

    def rename(self, src: str, dst: str, replace: bool) -> None:
        if src == "/":
            raise ns.PathError(ns.ERR_ROOT)
        kind = self.lookup(src)
        if dst == src or dst.startswith(src + "/"):
            raise ns.PathError(ns.ERR_INTO_ITSELF.format(src, dst))
        self.parent_dir(dst)
        if dst in self.kinds:
            old = self.kinds[dst]
            if not replace:
                raise ns.PathError(ns.ERR_EXISTS.format(dst))
            if kind == ns.DIR and old != ns.DIR:
                raise ns.PathError(ns.ERR_NOT_DIR.format(dst))
            if kind == ns.FILE and old == ns.DIR:
                raise ns.PathError(ns.ERR_IS_DIR.format(dst))
            if len(self.under(dst)) > 1:
                raise ns.PathError(ns.ERR_DIR_NOT_EMPTY.format(dst))
            del self.kinds[dst]
        for p in self.under(src):
            self.kinds[dst + p[len(src):]] = self.kinds.pop(p)
        return None

    def delete(self, path: str, recursive: bool, keep: int) -> int:
        self.parent_dir(path)
        if path not in self.kinds:
            raise ns.PathError(ns.ERR_NO_ENTRY.format(path))
        if len(self.under(path)) > 1 and not recursive:
            raise ns.PathError(ns.ERR_DIR_NOT_EMPTY.format(path))
        kind = self.kinds[path]
        for p in self.under(path):
            del self.kinds[p]
        self.trash.append([self.next_trash, path, kind, self.clock, self.clock + keep])
        self.next_trash += 1
        return self.next_trash - 1

    def purge(self) -> int:
        before = len(self.trash)
        self.trash = [t for t in self.trash if t[4] > self.clock]
        return before - len(self.trash)

    def step(self, op: str, now: int, args: tuple[Any, ...]) -> Any:
        self.clock = max(self.clock, now)
        for path in args:
            if isinstance(path, str) and not valid(path):
                return ns.ERR_BAD_PATH.format(path)
        try:
            return getattr(self, op)(*args)
        except ns.PathError as exc:
            return str(exc)

    def ls(self, path: str) -> list[str]:
        if self.lookup(path) == ns.FILE:
            return [path.rsplit("/", 1)[1]]
        return sorted(p[len(path.rstrip("/")) + 1:] + ("/" if k == ns.DIR else "")
                      for p, k in self.kinds.items() if p != "/" and self.parent(p) == path)


def valid(path: str) -> bool:
    names = path[1:].split("/") if path != "/" else []
    return path.startswith("/") and all(n not in ("", ".", "..") for n in names)


ENCODERS = {"mkdir": ns.encode_mkdir, "create": ns.encode_create, "rename": ns.encode_rename,
            "delete": ns.encode_delete, "purge": ns.encode_purge}

VALID = ["/" + "/".join(names) for names in (
    [a] if not b else [a, b] if not c else [a, b, c]
    for a in "ab" for b in ("", "a", "b") for c in ("", "a", "b") if b or not c)]
paths = st.sampled_from(VALID + ["/", "a", "/a/../b"])  # mostly valid, some refused
flags = st.booleans()
times = st.integers(0, 200)
operations = st.one_of(
    st.tuples(st.just("mkdir"), times, st.tuples(paths, flags)),
    st.tuples(st.just("create"), times, st.tuples(paths)),
    st.tuples(st.just("rename"), times, st.tuples(paths, paths, flags)),
    st.tuples(st.just("delete"), times, st.tuples(paths, flags, st.integers(0, 100))),
    st.tuples(st.just("purge"), times, st.just(())),
)


# every sequence starts from this tree, so renames and deletes find something to move
SETUP: list[tuple[str, int, tuple[Any, ...]]] = [
    ("mkdir", 1, ("/a/a", True)), ("mkdir", 1, ("/b/b/a", True)), ("create", 1, ("/a/b",)),
    ("create", 1, ("/b/a",)), ("create", 1, ("/a/a/b",))]


def replies_agree(machine: Namespace, model: Model) -> None:
    assert machine.trash_listing() == model.trash
    for path, kind in model.kinds.items():
        stat = machine.stat(path)
        assert stat["type"] == kind and stat["size"] == 0
        if kind == ns.DIR:
            assert machine.ls(path) == model.ls(path)
            assert stat["children"] == len(model.ls(path))
    for path in VALID:
        try:
            want: Any = model.ls(path)
        except ns.PathError as exc:
            want = str(exc)
        try:
            got: Any = machine.ls(path)
        except ns.PathError as exc:
            got = str(exc)
        assert got == want


@settings(max_examples=150, deadline=None)
@given(st.lists(operations, max_size=40))
def test_random_sequences_reply_as_the_model(ops: list[tuple[str, int, tuple[Any, ...]]]) -> None:
    machine, model = Namespace(), Model()
    for index, (op, now, args) in enumerate(SETUP + ops, 1):
        [got] = machine.apply([(index, ENCODERS[op](now, *args))])
        assert got == model.step(op, now, args), (op, args)
    replies_agree(machine, model)


@settings(max_examples=100, deadline=None)
@given(st.lists(operations, max_size=40), st.data())
def test_a_snapshot_restored_mid_sequence_ends_in_the_same_state(
        ops: list[tuple[str, int, tuple[Any, ...]]], data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(SETUP + ops)))
    entries = [ENCODERS[op](now, *args) for op, now, args in SETUP + ops]
    original = Namespace()
    early = original.apply(list(enumerate(entries[:cut], 1)))
    copy = Namespace()
    copy.restore(original.snapshot())
    rest = list(enumerate(entries[cut:], cut + 1))
    assert copy.apply(rest) == original.apply(rest)
    assert copy.snapshot() == original.snapshot()
    replay = Namespace()
    assert replay.apply(list(enumerate(entries, 1)))[:cut] == early
    assert replay.snapshot() == original.snapshot()
