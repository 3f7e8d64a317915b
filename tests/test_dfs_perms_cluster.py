"""dfs users, permissions, quotas and versions on a real 3-master cluster (one process per
master on 127.0.0.2-4, started with --superuser-password), driven with redis-py logging in
with `AUTH username password`; each step on a different master than the last, so users and
checks come from the replicated state. AUTH's errors are checked byte for byte against
Redis's texts. Timeouts only detect hangs."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.exceptions import AuthenticationError, ResponseError

from dfs.client import DfsClient, DfsError
from tests import (
    test_core_users,
    test_dfs_master,
    test_dfs_perms,
    test_dfs_versions,
    test_dfs_versions_snapshots,
)
from tests.test_dfs_master import HANG_S, HOSTS, Cluster, eventually

SUPERUSER_PASSWORD = "su-secret"
# Redis 7's reply to AUTH with an unknown user or a wrong password (src/server.c, acl.c).
WRONGPASS = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    for node in c.nodes:
        node.argv += ["--superuser-password", SUPERUSER_PASSWORD]
    try:
        for node in c.nodes:
            node.start()
        eventually(c.leader, "a leader and a full address book")
        yield c
    finally:
        for node in c.nodes:
            if node.alive():
                node.kill()


def login(cluster: Cluster, i: int, user: str, password: str) -> redis.Redis:
    return redis.Redis(host=HOSTS[i], port=cluster.ports[i], username=user, password=password,
                       decode_responses=True, socket_timeout=HANG_S)


def raw(cluster: Cluster, i: int, line: bytes) -> bytes:
    """One inline command on a fresh connection; the first reply line, exactly."""
    with socket.create_connection((HOSTS[i], cluster.ports[i]), timeout=HANG_S) as sock:
        sock.sendall(line + b"\r\n")
        return sock.makefile("rb").readline()


def refused(client: redis.Redis, *args: Any) -> str:
    with pytest.raises(ResponseError) as info:
        client.execute_command(*args)
    return str(info.value)


def test_users_modes_quotas_and_versions_across_masters(cluster: Cluster) -> None:
    anon = cluster.clients[0]  # no AUTH: the unprivileged 'nobody'
    assert anon.execute_command("FS.WHOAMI") == ["nobody", 0, ["nobody"]]
    assert refused(anon, "FS.MKDIR", "/x").startswith("permission denied: user=nobody")
    assert refused(anon, "USER.ADD", "eve", "pw") == \
        "permission denied: only a superuser may change users"
    root = login(cluster, 1, "root", SUPERUSER_PASSWORD)
    assert root.execute_command("FS.WHOAMI")[:2] == ["root", 1]
    for args in (("USER.ADD", "alice", "alice-pw"), ("USER.ADD", "bob", "bob-pw"),
                 ("FS.MKDIR", "/home/alice", "PARENTS"), ("FS.CHOWN", "/home/alice", "alice"),
                 ("FS.SETQUOTA", "/home/alice", "FILES", "6")):
        assert root.execute_command(*args) == "OK"
    assert [row[0] for row in root.execute_command("USER.LIST")] == ["alice", "bob"]
    # AUTH reads the master's applied state: a follower knows a new user a moment later.
    for i in range(3):
        eventually(lambda i=i: raw(cluster, i, b"AUTH bob bob-pw") == b"+OK\r\n",
                   f"master {i + 1} knows bob")

    # AUTH's errors, exactly as Redis words them, on every master.
    for i in range(3):
        assert raw(cluster, i, b"AUTH alice wrong") == WRONGPASS
        assert raw(cluster, i, b"AUTH mallory alice-pw") == WRONGPASS
        assert raw(cluster, i, b"AUTH root nope") == WRONGPASS
    with pytest.raises(AuthenticationError):
        login(cluster, 0, "alice", "wrong").ping()

    alice = login(cluster, 2, "alice", "alice-pw")
    bob = login(cluster, 0, "bob", "bob-pw")
    assert alice.execute_command("FS.CREATE", "/home/alice/f") == "OK"
    assert alice.execute_command("FS.CHMOD", "/home/alice", "700") == "OK"
    for args in (("FS.LS", "/home/alice"), ("FS.STAT", "/home/alice/f"),
                 ("FS.CREATE", "/home/alice/g"), ("FS.DELETE", "/home/alice/f"),
                 ("FS.RENAME", "/home/alice/f", "/home/alice/h"),
                 ("FS.CREATE", "/home/alice/f", "OVERWRITE"), ("FS.VERSIONS", "/home/alice/f"),
                 ("FS.CHMOD", "/home/alice", "777"), ("FS.CHOWN", "/home/alice", "bob")):
        assert refused(bob, *args).startswith("permission denied"), args

    # dfs.client logs in the same way.
    addresses = [f"{h}:{p}" for h, p in zip(HOSTS, cluster.ports, strict=True)]
    with DfsClient(addresses, username="alice", password="alice-pw", deadline_s=HANG_S) as fs:
        assert fs.ls("/home/alice") == ["f"] and fs.stat("/home/alice/f")["owner"] == "alice"
    with DfsClient(addresses, username="bob", password="bob-pw", deadline_s=HANG_S) as fs:
        with pytest.raises(DfsError, match="permission denied"):
            fs.ls("/home/alice")

    # The data path asks the same: reading a file's chunk list needs r on it (the leader).
    on_leader = login(cluster, cluster.leader() - 1, "bob", "bob-pw")
    assert refused(on_leader, "FS.LOCATE", "/home/alice/f").startswith("permission denied")
    # Draining a chunk server is a superuser's act: anyone else is refused before it is logged.
    for user in (on_leader, cluster.clients[cluster.leader() - 1]):
        assert refused(user, "FS.DECOMMISSION", "127.0.0.1:1") == \
            "permission denied: only a superuser may decommission chunk servers"
    root_on_leader = login(cluster, cluster.leader() - 1, "root", SUPERUSER_PASSWORD)
    assert root_on_leader.execute_command("FS.REPORT")["decommissioning"] == []

    # Overwrite three times; each version listed, then each restored in turn.
    for _ in range(3):
        assert alice.execute_command("FS.CREATE", "/home/alice/f", "OVERWRITE") == "OK"
    rows = alice.execute_command("FS.VERSIONS", "/home/alice/f")
    assert [(r[0], r[4]) for r in rows] == [(4, 1), (3, 0), (2, 0), (1, 0)]
    for number in (1, 2, 3, 4):
        assert root.execute_command("FS.RESTORE", "/home/alice/f", number) == "OK"
        assert eventually(lambda n=number: alice.execute_command(
            "FS.STAT", "/home/alice/f")["version"] == n, f"version {number} current")

    # A snapshot reads as the directory was, on any master, and is read-only.
    assert alice.execute_command("FS.SNAPSHOT", "/home/alice", "s1") == "OK"
    assert root.execute_command("FS.SNAPSHOTS", "/home/alice")[0][0] == "s1"
    assert alice.execute_command("FS.LS", "/home/alice/.snapshot/s1") == ["f"]
    assert "read-only" in refused(alice, "FS.CREATE", "/home/alice/.snapshot/s1/x")

    # The quota counts old versions: /home/alice + f + 3 old versions + g = 6 names.
    assert alice.execute_command("FS.CREATE", "/home/alice/g") == "OK"
    assert refused(alice, "FS.MKDIR", "/home/alice/d").startswith(
        "quota exceeded: the file count quota of '/home/alice' is 6")
    count = root.execute_command("FS.COUNT", "/home/alice")
    assert (count["dirs"], count["files"], count["remaining_files"]) == (1, 5, 0)
    assert root.execute_command("USER.DEL", "bob") == "OK"
    eventually(lambda: raw(cluster, 1, b"AUTH bob bob-pw") == WRONGPASS, "bob forgotten")
    assert alice.execute_command("USER.PASSWD", "alice", "fresh") == "OK"
    eventually(lambda: raw(cluster, 0, b"AUTH alice alice-pw") == WRONGPASS, "a new password")
    assert login(cluster, 0, "alice", "fresh").execute_command("FS.WHOAMI")[0] == "alice"


# -- the README's promises ----------------------------------------------------------------------

PROMISES = {  # README.md's sentence -> the tests that check it
    "Users log in as in Redis 6: `AUTH username password` (redis-py's `username=`).":
        (test_users_modes_quotas_and_versions_across_masters,),
    "The masters keep the users in their Raft log, each password only as a salted "
    "PBKDF2-SHA256 hash;": (test_core_users.test_same_password_two_salts_two_digests,
                           test_dfs_perms.test_snapshot_keeps_owners_modes_quotas_versions_and_users),
    "With a superuser password, a connection that does not log in is the unprivileged "
    "`nobody`; without one it is the superuser":
        (test_users_modes_quotas_and_versions_across_masters,
         test_dfs_master.test_operations_on_any_master),
    "An unknown user or a wrong password gets Redis's reply, `WRONGPASS invalid "
    "username-password pair or user is disabled.`":
        (test_users_modes_quotas_and_versions_across_masters,
         test_core_users.test_auth_username_password_and_redis_errors),
    "x on every directory on the way, r to read a file, r and x to list a directory, w and x "
    "on the parent to create, delete or rename; a recursive delete also needs rwx on every "
    "directory below.":
        (test_dfs_perms.test_each_write_is_refused_to_others_and_allowed_to_the_owner,
         test_dfs_perms.test_each_read_needs_its_bits,
         test_dfs_perms.test_a_recursive_delete_needs_rwx_on_every_directory_below),
    "A new file is `-rw-r--r--` and a new directory `drwxr-xr-x`, owned by its creator, in "
    "its parent's group.":
        (test_dfs_perms.test_new_nodes_belong_to_their_creator_in_the_parents_group,),
    "`FS.CHMOD path 750` is for the owner; `FS.CHOWN path owner[:group]` changes an owner "
    "only for a superuser, while an owner may change the group to one of its own.":
        (test_dfs_perms.test_chown_is_for_superusers_chgrp_for_the_owner_in_the_group,
         test_users_modes_quotas_and_versions_across_masters),
    "A superuser passes every check; the superusers are `root`, the users added with "
    "`SUPERUSER` and the members of the group `supergroup`, as HDFS's superuser group.":
        (test_dfs_perms.test_the_superuser_passes_every_check,
         test_users_modes_quotas_and_versions_across_masters),
    "old versions count against both, and a change past a limit is refused with `ERR quota "
    "exceeded: ...`.": (test_dfs_perms.test_file_quota_counts_names_and_old_versions,
                        test_dfs_perms.test_space_quota_refuses_a_charge_past_the_limit,
                        test_dfs_versions.test_the_chunk_table_charges_quotas_and_keeps_old_versions_chunks),
    "past the limit the oldest is dropped and its chunks deleted.":
        (test_dfs_versions.test_versions_past_the_limit_are_released,
         test_dfs_versions.test_the_chunk_table_charges_quotas_and_keeps_old_versions_chunks),
    "`FS.RESTORE path version` makes an old version current again, keeping the one it "
    "replaces as a version.":
        (test_dfs_versions.test_overwrite_three_times_then_read_and_restore_each_version,
         test_users_modes_quotas_and_versions_across_masters),
    "takes a read-only snapshot of a directory, read under `dir/.snapshot/name/...` as in "
    "HDFS;": (test_dfs_versions_snapshots.test_snapshots_are_read_only_and_dot_snapshot_is_reserved,
              test_users_modes_quotas_and_versions_across_masters),
    "A snapshot copies the directory's metadata when it is taken and shares its files' chunks, "
    "which stay until no snapshot, version or path holds them.":
        (test_dfs_versions_snapshots.test_a_snapshot_reads_as_the_directory_was,),
    "and so does a file renamed over a file with `FS.RENAME src dst REPLACE` (how `dfs.client` "
    "commits every write)":
        (test_dfs_versions.test_a_file_renamed_over_a_file_keeps_it_as_a_version,),
    "`DfsClient(masters, username=\"alice\", password=...)` logs in as a named user;":
        (test_users_modes_quotas_and_versions_across_masters,),
}


def test_the_readme_says_what_these_tests_check() -> None:
    text = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text().split())
    for sentence, tests in PROMISES.items():
        assert sentence in text, (sentence, [t.__name__ for t in tests])
