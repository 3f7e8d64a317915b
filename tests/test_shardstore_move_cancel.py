"""Rolling back a move not yet finished (moves.OP_CANCEL, migrate's roll-back, fences'
MODE_ABORT and MODE_UNFREEZE, `shardstore admin move cancel`).

Sans I/O: the configuration's cancel, resume and finish; a target that took a write under
ASKING refuses the abort (a purge would lose it); an aborted target refuses and purges the
keys copied in, an unfrozen source serves them again and ignores a late freeze. On real
sockets, in one event loop (three nodes, 3 shards of 2 replicas), with the copy held after
its first batch: `shardstore admin move cancel` rolls the move back while the coordinator
fails mid-cancel and the configuration's leadership moves to another node; afterwards the
slot map never changed, the source serves every key with its value, and no replica of
the target holds any of them."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from core.resp import CommandError
from native.crc16 import key_slot
from shardstore import cluster
from shardstore.cluster import CONFIG_GROUP, ConfigMachine
from shardstore.fences import MODE_ABORT, MODE_UNFREEZE
from shardstore.keysets import KeySet
from shardstore.machine import (
    KIND_COPY,
    KIND_FREEZE,
    KIND_LIFT,
    KIND_PURGE,
    decode_reply,
    encode_command,
    encode_move,
)
from shardstore.migrate import ABORT_REFUSED_MARK, MoveStalled
from shardstore.moves import (
    STATE_CANCEL,
    STATE_COPY,
    STATE_DONE,
    encode_begin,
    encode_cancel,
    encode_end,
    encode_finish,
    encode_resume,
    encode_step,
)
from tests.procs import ROOT
from tests.shardstore_procs import LoopCluster, run_loop
from tests.test_shardstore_moves import _set, _shard

CANCEL_S = 60.0
README_SENTENCE = (
    "A move still copying is rolled back with `shardstore admin move cancel ID` (or "
    "`SHARDSTORE.MOVE CANCEL ID`): the source serves its keys again, the keys copied to the "
    "target are purged and the slot map never changed; a coordinator that dies mid-cancel "
    "is replaced by the next, which finishes the roll-back. A move whose target already "
    "took writes under `ASKING` is not rolled back (that would lose them): it goes on.")


def test_the_readme_says_what_these_tests_show() -> None:
    text = " ".join((ROOT / "README.md").read_text().split())
    assert README_SENTENCE in text


def test_the_configuration_cancels_resumes_and_finishes_a_roll_back() -> None:
    machine = ConfigMachine()
    machine.apply([(1, cluster.encode_init([1, 2, 3], 3, 3))])
    keys = KeySet.of_slots(range(10))
    config = machine.config
    before = list(config.ranges)
    assert machine.apply([(2, encode_begin(keys, 1, 2)), (3, encode_cancel(1)),
                          (4, encode_cancel(1))]) == [1, True, False]
    assert config.moves[1].state == STATE_CANCEL and config.epoch == 3
    assert machine.apply([(5, encode_end(1)), (6, encode_step(1, STATE_CANCEL, b"k", 3)),
                          (7, encode_resume(1))]) == [False, True, True]
    assert config.moves[1].state == STATE_COPY and config.moves[1].cursor is None
    assert machine.apply([(8, encode_cancel(1)), (9, encode_finish(1))]) == [True, True]
    move = config.moves[1]
    assert move.state == STATE_DONE and move.cancelled and config.moves_done == 0
    assert config.ranges == before
    assert machine.apply([(10, encode_begin(keys, 1, 2)), (11, encode_end(2)),
                          (12, encode_cancel(2)), (13, encode_cancel(99))]) == [
        2, True, "ERR move 2 is purge: only a move still copying can be cancelled (an ended "
                 "move is undone by moving its keys back)", "ERR no move 99"]


def _asking_set(key: bytes, value: bytes) -> bytes:
    return encode_command(1_000, [b"SET", key, value], asking=True)


def test_a_roll_back_purges_the_target_and_unfreezes_the_source(tmp_path: Path) -> None:
    keys = KeySet.of_slots([key_slot(b"a"), key_slot(b"b")])
    wire = keys.to_wire()
    source, target = _shard(tmp_path / "s"), _shard(tmp_path / "t")
    source.apply([(1, _set(b"a", b"1")), (2, _set(b"b", b"2")),
                  (3, encode_move(KIND_FREEZE, 1_000, 4, wire))])
    rows = [list(r) for r in source.store.scan()]
    target.apply([(1, encode_move(KIND_COPY, 1_000, 4, rows, wire, None, None))])
    assert target.store.count() == 2
    out = target.apply([(2, encode_move(KIND_LIFT, 1_000, 4, wire, MODE_ABORT)),
                        (3, encode_move(KIND_LIFT, 1_000, 4, wire, MODE_ABORT)),
                        (4, _asking_set(b"a", b"late")),
                        (5, encode_move(KIND_PURGE, 1_000, 4, wire, [b"a", b"b"]))])
    replies = [decode_reply(r) for r in out]
    assert replies[:2] == [1, 0] and isinstance(replies[2], CommandError)
    assert replies[3] == 2 and target.store.count() == 0
    out = source.apply([(4, encode_move(KIND_LIFT, 1_000, 4, wire, MODE_UNFREEZE)),
                        (5, encode_move(KIND_FREEZE, 1_000, 4, wire)),  # late: a no-op
                        (6, _set(b"a", b"3"))])
    assert [decode_reply(r) for r in out][:2] == [1, 0]
    assert source.engine.get(b"a")[0].endswith(b"3")
    source.engine.close()
    target.engine.close()


def test_a_target_that_took_writes_under_asking_refuses_the_abort(tmp_path: Path) -> None:
    keys = KeySet.of_slots([key_slot(b"a")])
    wire = keys.to_wire()
    target = _shard(tmp_path / "t")
    out = target.apply([(1, encode_move(KIND_COPY, 1_000, 6, [[b"a", b"1", 0]], wire, None,
                                        None)),
                        (2, _asking_set(b"a", b"acknowledged")),
                        (3, encode_move(KIND_LIFT, 1_000, 6, wire, MODE_ABORT))])
    refusal = decode_reply(out[2])
    assert isinstance(refusal, CommandError) and ABORT_REFUSED_MARK in refusal.message
    target.engine.close()
    target = _shard(tmp_path / "t")  # the count survives a restart
    assert target.fences.imports[6].asked == 1
    assert target.engine.get(b"a")[0].endswith(b"acknowledged")
    target.engine.close()


# -- on real sockets --------------------------------------------------------------------------

class Hold:
    """Patches every node's coordinator: the first copy batch goes, later ones wait for
    `copies`; the first purge of the target fails (a coordinator dying mid-cancel)."""

    def __init__(self, cluster: LoopCluster) -> None:
        self.copies = asyncio.Event()
        self.failed = asyncio.Event()
        self.sent = 0
        for node in cluster.nodes:
            node.mover._entry = self._wrap(node.mover._entry)  # type: ignore[method-assign]

    def _wrap(self, original: Any) -> Any:
        async def held(shard_id: int, entry: bytes) -> Any:
            kind = msgpack.unpackb(entry)[0]
            if kind == KIND_COPY:
                self.sent += 1
                if self.sent > 1:
                    await self.copies.wait()
            if kind == KIND_PURGE and shard_id == 2 and not self.failed.is_set():
                self.failed.set()
                raise MoveStalled("the coordinator dies mid-cancel (test)")
            return await original(shard_id, entry)

        return held


def test_admin_cancels_a_move_and_a_new_coordinator_finishes_it(tmp_path: Path) -> None:
    run_loop(tmp_path, _cancel_mid_move, batch_keys=4)


async def _until(check: Any, what: str) -> None:
    deadline = time.monotonic() + CANCEL_S
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def _config_leader(cluster: LoopCluster) -> Any:
    for node in cluster.nodes:
        group = node.host.group(CONFIG_GROUP)
        if group is not None and group.node is not None and group.node.lead == node.me:
            return node
    return None


async def _cancel_mid_move(cluster: LoopCluster) -> None:
    config = cluster.nodes[0].config
    before = list(config.ranges)
    moving = list(range(config.ranges[0][1] - 31, config.ranges[0][1] + 1))
    hot = [f"k{i}" for i in range(50_000) if key_slot(f"k{i}".encode()) in moving][:24]
    client = cluster.client(0)
    host, port = cluster.nodes[0].settings.listen
    rc = AsyncRedisCluster(host=host, port=port)
    for key in hot:
        assert await rc.set(key, f"v-{key}")
    hold = Hold(cluster)
    move_id = await client.execute_command("SHARDSTORE.MOVE", 1, 2, "SLOTS",
                                           f"{moving[0]}-{moving[-1]}")
    await _until(lambda: all(move_id in n.config.moves
                             and n.config.moves[move_id].cursor is not None
                             for n in cluster.nodes), "the first batch")
    admin = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shardstore", "admin", "--node", f"{host}:{port}", "move",
        "cancel", str(move_id), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    await _until(lambda: all(n.config.moves[move_id].state == STATE_CANCEL
                             for n in cluster.nodes), "the cancel")
    hold.copies.set()
    await asyncio.wait_for(hold.failed.wait(), CANCEL_S)
    leader = _config_leader(cluster)
    other = next(n for n in cluster.nodes if n is not leader)
    await leader.host.group(CONFIG_GROUP).transfer_leadership(other.me)
    out, err = await asyncio.wait_for(admin.communicate(), CANCEL_S)
    assert admin.returncode == 0, (out, err)
    assert f"move {move_id} cancelled".encode() in err, err
    for node in cluster.nodes:
        await _until(lambda node=node: node.config.ranges == before, "the map")
        target = node.machines.get(2)
        if target is not None:
            await _until(lambda t=target: not [k for k in hot if t.store.get(k.encode())],
                         "the target's purge")
    moves = await client.execute_command("SHARDSTORE.MOVES")
    [record] = [m for m in moves if m[b"id"] == move_id]
    assert record[b"state"] == b"done" and record[b"cancelled"] == 1
    for key in hot:
        assert await rc.get(key) == f"v-{key}".encode(), key
    assert await rc.set(hot[0], "after the cancel")
    assert await rc.get(hot[0]) == b"after the cancel"
    await rc.aclose()
    await client.aclose()
