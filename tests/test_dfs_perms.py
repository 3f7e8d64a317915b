"""dfs permissions, users and quotas in the namespace alone (sans I/O): each operation tried by
a user the mode forbids and by one it allows, the superuser, chmod/chown rules, recursive
delete, quotas refusing past their limits (old versions counted), FS.COUNT, snapshots, and
hypothesis on the argument parsers."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.users import make_credential
from dfs import accounts, perms, quotas
from dfs import namespace as ns
from dfs.meta_commands import parse_owner
from dfs.namespace import Namespace
from dfs.nodes import flatten
from dfs.perms import NOBODY, R, W

KEEP_MS = 1000
DENIED = "ERR permission denied"


class Tree:
    """A namespace with users alice and bob (bob in group staff) and a clock."""

    def __init__(self) -> None:
        self.m = Namespace()
        self.now = 0
        for name, su in (("alice", False), ("bob", False), ("admin", True)):
            cred = make_credential(name.encode(), iterations=1)
            assert self.trusted(accounts.encode_user_add(self.tick(), name, cred, su)) is None
        assert self.trusted(accounts.encode_user_groups(self.tick(), "bob", ["staff"])) is None

    def tick(self) -> int:
        self.now += 1
        return self.now

    def trusted(self, entry: bytes) -> Any:
        return self.m.apply([(self.now, entry)])[0]

    def as_(self, user: str, entry: bytes) -> Any:
        return self.trusted(ns.encode_as(self.tick(), user, entry))


def denied(reply: Any) -> bool:
    return isinstance(reply, str) and reply.startswith(DENIED)


@pytest.fixture
def tree() -> Tree:
    """/home/alice (alice:staff 750) holding f (alice, 640) and d/ (alice, 755)."""
    t = Tree()
    assert t.trusted(ns.encode_mkdir(t.tick(), "/home/alice", True)) is None
    assert t.trusted(ns.encode_chown(t.tick(), "/home/alice", "alice", "staff")) is None
    assert t.as_("alice", ns.encode_chmod(t.tick(), "/home/alice", 0o750)) is None
    assert t.as_("alice", ns.encode_create(t.tick(), "/home/alice/f")) is None
    assert t.as_("alice", ns.encode_chmod(t.tick(), "/home/alice/f", 0o640)) is None
    assert t.as_("alice", ns.encode_mkdir(t.tick(), "/home/alice/d", False)) is None
    return t


def test_new_nodes_belong_to_their_creator_in_the_parents_group(tree: Tree) -> None:
    st_f = tree.m.stat("/home/alice/f")
    assert (st_f["owner"], st_f["group"], st_f["permission"]) == ("alice", "staff",
                                                                   "-rw-r-----")
    st_d = tree.m.stat("/home/alice/d")
    assert (st_d["owner"], st_d["group"], st_d["permission"]) == ("alice", "staff",
                                                                  "drwxr-xr-x")
    assert tree.m.stat("/")["permission"] == "drwxr-xr-x" and tree.m.stat("/")["owner"] == "root"


def test_each_write_is_refused_to_others_and_allowed_to_the_owner(tree: Tree) -> None:
    t = tree
    writes = [
        lambda: ns.encode_create(t.now, "/home/alice/g"),
        lambda: ns.encode_mkdir(t.now, "/home/alice/e", False),
        lambda: ns.encode_mkdir(t.now, "/home/alice/p/q", True),
        lambda: ns.encode_rename(t.now, "/home/alice/f", "/home/alice/f2", False),
        lambda: ns.encode_create(t.now, "/home/alice/f", True),  # overwrite
        lambda: ns.encode_chmod(t.now, "/home/alice/f", 0o777),
        lambda: ns.encode_setversions(t.now, "/home/alice", 5),
        lambda: ns.encode_delete(t.now, "/home/alice/d", False, KEEP_MS),
    ]
    for make in writes:
        for user in ("bob", NOBODY):  # bob: group staff (r-x); nobody: other (---)
            reply = t.as_(user, make())
            assert denied(reply), (user, reply)
    for make in writes:
        assert not isinstance(t.as_("alice", make()), str)  # None, or the delete's trash id
    # Creating at the root needs w on '/', which only root has.
    assert denied(t.as_("alice", ns.encode_mkdir(t.now, "/alice", False)))


def test_each_read_needs_its_bits(tree: Tree) -> None:
    m = tree.m
    bob, nobody, alice = (perms.caller_for(m.users, n) for n in ("bob", NOBODY, "alice"))
    assert m.ls("/home/alice", bob) == ["d/", "f"]  # staff: r-x
    assert m.stat("/home/alice/f", bob)["size"] == 0
    assert m.check_access("/home/alice/f", bob, R).inode > 0  # 640: the group reads
    for call in (lambda: m.check_access("/home/alice/f", bob, W),  # ... but does not write
                 lambda: m.ls("/home/alice", nobody),
                 lambda: m.stat("/home/alice/f", nobody),  # no x on /home/alice
                 lambda: m.check_access("/home/alice/f", nobody, R),
                 lambda: m.versions("/home/alice/f", nobody),
                 lambda: m.count("/home/alice", nobody)):
        with pytest.raises(ns.PathError, match=DENIED):
            call()
    assert m.check_access("/home/alice/f", alice, R | W).kind == "file"
    assert m.versions("/home/alice/f", alice)[0][4] == 1


def test_the_superuser_passes_every_check(tree: Tree) -> None:
    t = tree
    assert t.as_("alice", ns.encode_chmod(t.tick(), "/home/alice", 0)) is None
    assert t.as_("admin", ns.encode_create(t.tick(), "/home/alice/root-made")) is None
    admin = perms.caller_for(t.m.users, "admin")
    assert t.m.ls("/home/alice", admin) == ["d/", "f", "root-made"]
    assert t.as_("root", ns.encode_delete(t.tick(), "/home/alice/f", False, KEEP_MS)) == 1
    # A member of 'supergroup' is a superuser too, as in HDFS.
    assert denied(t.as_("bob", ns.encode_create(t.tick(), "/home/alice/by-bob")))
    assert t.trusted(accounts.encode_user_groups(t.tick(), "bob", ["supergroup"])) is None
    assert t.as_("bob", ns.encode_create(t.tick(), "/home/alice/by-bob")) is None


def test_chown_is_for_superusers_chgrp_for_the_owner_in_the_group(tree: Tree) -> None:
    t = tree
    assert t.as_("alice", ns.encode_chown(t.tick(), "/home/alice/f", "bob", None)) == \
        perms.ERR_SUPERUSER_ONLY.format("change an owner")
    assert denied(t.as_("alice", ns.encode_chown(t.tick(), "/home/alice/f", None, "ops")))
    assert t.as_("alice", ns.encode_chown(t.tick(), "/home/alice/f", None, "alice")) is None
    assert denied(t.as_("bob", ns.encode_chown(t.tick(), "/home/alice/f", None, "staff")))
    assert t.as_("admin", ns.encode_chown(t.tick(), "/home/alice/f", "bob", "staff")) is None
    assert (t.m.stat("/home/alice/f")["owner"], t.m.stat("/home/alice/f")["group"]) == \
        ("bob", "staff")


def test_a_recursive_delete_needs_rwx_on_every_directory_below(tree: Tree) -> None:
    t = tree
    assert t.trusted(ns.encode_mkdir(t.tick(), "/home/alice/d/locked/x", True)) is None
    assert t.trusted(ns.encode_chmod(t.tick(), "/home/alice/d/locked", 0o555)) is None
    assert denied(t.as_("alice", ns.encode_delete(t.tick(), "/home/alice/d", True, KEEP_MS)))
    assert t.m.ls("/home/alice/d") == ["locked/"]
    assert t.trusted(ns.encode_chown(t.tick(), "/home/alice/d/locked", "alice", None)) is None
    assert t.as_("alice", ns.encode_chmod(t.tick(), "/home/alice/d/locked", 0o700)) is None
    assert isinstance(t.as_("alice", ns.encode_delete(t.tick(), "/home/alice/d", True,
                                                      KEEP_MS)), int)
    alice, bob = (perms.caller_for(t.m.users, n) for n in ("alice", "bob"))
    assert len(t.m.trash_listing(alice)) == 1 and t.m.trash_listing(bob) == []


def test_only_a_superuser_changes_users(tree: Tree) -> None:
    t = tree
    cred = make_credential(b"pw", iterations=1)
    assert t.as_("alice", accounts.encode_user_add(t.tick(), "carol", cred, False)) == \
        perms.ERR_SUPERUSER_ONLY.format("change users")
    assert t.as_("admin", accounts.encode_user_add(t.tick(), "carol", cred, False)) is None
    assert t.as_("admin", accounts.encode_user_add(t.tick(), "root", cred, False)) == \
        accounts.ERR_RESERVED.format("root")
    assert t.m.users.verify("carol", b"pw") and not t.m.users.verify("carol", b"pw2")
    assert t.as_("admin", accounts.encode_user_del(t.tick(), "carol")) is None
    assert "carol" not in t.m.users


# -- quotas -------------------------------------------------------------------------------------

def test_file_quota_counts_names_and_old_versions(tree: Tree) -> None:
    t = tree
    # /q itself + 3 names: q/a, q/f, q/f's old version
    assert t.trusted(ns.encode_mkdir(t.tick(), "/q", False)) is None
    assert t.as_("alice", ns.encode_setquota(t.tick(), "/q", {"FILES": 4})) == \
        perms.ERR_SUPERUSER_ONLY.format("set quotas")
    assert t.trusted(ns.encode_setquota(t.tick(), "/q", {"FILES": 4})) is None
    assert t.trusted(ns.encode_mkdir(t.tick(), "/q/a", False)) is None
    assert t.trusted(ns.encode_create(t.tick(), "/q/f")) is None
    assert t.trusted(ns.encode_create(t.tick(), "/q/f", True)) is None  # one old version
    reply = t.trusted(ns.encode_create(t.tick(), "/q/g"))
    assert reply.startswith("ERR quota exceeded: the file count quota of '/q' is 4")
    assert t.trusted(ns.encode_create(t.tick(), "/q/f", True)).startswith("ERR quota exceeded")
    assert t.trusted(ns.encode_rename(t.tick(), "/home/alice/f", "/q/h", False)).startswith(
        "ERR quota exceeded")
    assert t.m.count("/q") == {"dirs": 2, "files": 2, "bytes": 0, "quota_files": 4,
                               "remaining_files": 0, "quota_bytes": None,
                               "remaining_bytes": None}
    # A delete frees names; then a rename into the directory fits again.
    assert isinstance(t.trusted(ns.encode_delete(t.tick(), "/q/a", False, KEEP_MS)), int)
    assert t.trusted(ns.encode_rename(t.tick(), "/home/alice/f", "/q/h", False)) is None


def test_space_quota_refuses_a_charge_past_the_limit(tree: Tree) -> None:
    t, m = tree, tree.m
    assert t.trusted(ns.encode_mkdir(t.tick(), "/s/deep", True)) is None
    assert t.trusted(ns.encode_setquota(t.tick(), "/s", {"BYTES": 100})) is None
    assert t.trusted(ns.encode_create(t.tick(), "/s/deep/f")) is None
    m.set_size("/s/deep/f", 60)
    with pytest.raises(ns.PathError, match="ERR quota exceeded: the space quota of '/s' is "
                                           "100, 60 used, 50 more asked"):
        m.set_size("/s/deep/f", 110)
    assert m.stat("/s/deep/f")["size"] == 60
    assert t.trusted(ns.encode_create(t.tick(), "/s/deep/f", True)) is None  # 60 kept as v1
    with pytest.raises(ns.PathError, match="quota exceeded"):
        m.charge("/s/deep/f", 41)
    m.set_size("/s/deep/f", 40)
    assert m.count("/s")["bytes"] == 100 and m.count("/s")["remaining_bytes"] == 0
    assert t.trusted(ns.encode_setquota(t.tick(), "/s", {"BYTES": None})) is None
    m.set_size("/s/deep/f", 1000)
    assert m.count("/s")["quota_bytes"] is None


def test_snapshot_keeps_owners_modes_quotas_versions_and_users(tree: Tree) -> None:
    t = tree
    assert t.trusted(ns.encode_setquota(t.tick(), "/home", {"FILES": 50, "BYTES": 9})) is None
    assert t.as_("alice", ns.encode_create(t.tick(), "/home/alice/f", True)) is None
    copy = Namespace()
    copy.restore(t.m.snapshot())
    assert copy.snapshot() == t.m.snapshot()
    assert copy.stat("/home/alice/f") == t.m.stat("/home/alice/f")
    assert copy.count("/home") == t.m.count("/home")
    assert copy.users.verify("bob", b"bob")


# -- parsers ------------------------------------------------------------------------------------

@given(st.text(max_size=8))
def test_parse_mode_takes_octal_or_refuses(raw: str) -> None:
    try:
        mode = perms.parse_mode(raw)
    except ValueError as exc:
        assert str(exc).startswith("ERR invalid mode")
        return
    assert 0 <= mode <= 0o777 and int(raw, 8) == mode


@given(st.lists(st.sampled_from(["FILES", "BYTES", "files", "NONE", "0", "1", "10", "-1", "x",
                                 "99999999999999999999"]), max_size=6))
def test_parse_quota_args_refuses_cleanly(words: list[str]) -> None:
    try:
        limits = quotas.parse_quota_args(words)
    except ValueError as exc:
        assert str(exc) == quotas.ERR_BAD_QUOTA
        return
    assert set(limits) <= {"FILES", "BYTES"} and len(limits) == len(words) // 2
    assert all(v is None or 1 <= v <= quotas.MAX_QUOTA for v in limits.values())


@given(st.text(alphabet="ab:-. é", max_size=8))
def test_parse_owner_refuses_cleanly(raw: str) -> None:
    try:
        owner, group = parse_owner(raw)
    except ValueError as exc:
        assert "FS.CHOWN" in str(exc)
        return
    assert (owner, group) != (None, None)
    assert ":".join(x for x in (owner or "", group or "") if x) or True


# -- random sequences ---------------------------------------------------------------------------

PATHS = ["/a", "/a/b", "/a/f", "/a/b/f", "/c", "/c/f", "/a/b/c"]
USERS = ["root", "alice", "bob"]
step = st.one_of(
    st.tuples(st.just("mkdir"), st.sampled_from(PATHS), st.booleans()),
    st.tuples(st.just("create"), st.sampled_from(PATHS), st.booleans()),
    st.tuples(st.just("rename"), st.sampled_from(PATHS), st.sampled_from(PATHS), st.booleans()),
    st.tuples(st.just("delete"), st.sampled_from(PATHS), st.booleans()),
    st.tuples(st.just("quota"), st.sampled_from(["/", "/a", "/a/b", "/c"]),
              st.integers(1, 8), st.integers(1, 300)),
    st.tuples(st.just("size"), st.sampled_from(PATHS), st.integers(0, 200)),
    st.tuples(st.just("restore"), st.sampled_from(PATHS), st.integers(1, 4)),
    st.tuples(st.just("keep"), st.sampled_from(["/a", "/a/b"]), st.integers(0, 2)),
    st.tuples(st.just("chmod"), st.sampled_from(PATHS), st.sampled_from([0o700, 0o755, 0o777])),
)


def entry_of(now: int, op: tuple[Any, ...]) -> bytes:
    kind, *args = op
    if kind == "quota":
        return ns.encode_setquota(now, args[0], {"FILES": args[1], "BYTES": args[2]})
    makers = {"mkdir": ns.encode_mkdir, "create": ns.encode_create, "rename": ns.encode_rename,
              "restore": ns.encode_restore, "keep": ns.encode_setversions,
              "chmod": ns.encode_chmod,
              "delete": lambda n, p, r: ns.encode_delete(n, p, r, KEEP_MS)}
    return makers[kind](now, *args)


def state_of(m: Namespace) -> Any:
    trash = [(tid, item.path, list(flatten(item.node))) for tid, item in m.trash.items()]
    return list(flatten(m.root)), trash, m.users.to_wire(), m.released[:]


@given(st.lists(st.tuples(st.sampled_from(USERS), step), max_size=30))
def test_random_operations_keep_quota_usage_exact_and_refusals_change_nothing(
        ops: list[tuple[str, tuple[Any, ...]]]) -> None:
    t = Tree()
    for user, op in ops:
        before = state_of(t.m)
        if op[0] == "size":
            try:
                t.m.set_size(op[1], op[2])
                reply = None
            except ns.PathError as exc:
                reply = str(exc)
        else:
            reply = t.as_(user, entry_of(t.tick(), op))
        if isinstance(reply, str):
            assert state_of(t.m) == before, (user, op, reply)
        stack = [t.m.root]
        while stack:
            node = stack.pop()
            if node.quota is not None:
                assert (node.quota.used_files, node.quota.used_bytes) == quotas.usage(node), op
            stack.extend(node.children.values())
    copy = Namespace()
    copy.restore(t.m.snapshot())
    assert copy.snapshot() == t.m.snapshot()


def test_a_user_changes_its_own_password_only(tree: Tree) -> None:
    t = tree
    new = make_credential(b"new", iterations=1)
    assert t.as_("bob", accounts.encode_user_passwd(t.tick(), "alice", new)) == \
        perms.ERR_SUPERUSER_ONLY.format("change users")
    assert t.as_("alice", accounts.encode_user_passwd(t.tick(), "alice", new)) is None
    assert t.m.users.verify("alice", b"new") and not t.m.users.verify("alice", b"alice")
    assert t.as_("admin", accounts.encode_user_passwd(t.tick(), "bob", new)) is None
    assert t.as_("admin", accounts.encode_user_passwd(t.tick(), "zed", new)).startswith(
        "ERR no such user")
