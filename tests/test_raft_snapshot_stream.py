"""Streamed snapshots (core/raft/snapshot_stream.py) with real files and a fake network.

A `Pipe` carries chunk payloads one way and replies the other, and can drop, duplicate,
reorder and tamper with them; hypothesis draws its loss rates and the seed of its schedule.
Whatever the schedule, the follower ends with a byte-identical, verified file. The other
tests pin one rule each: pre-emption by a newer transfer, nacks and resends, timeouts, the
receiver's memory, temp-file hygiene, the file source over core/raft/disk.py's snapshot
file, and a decoder fuzz that only ever sees SnapshotPayloadError.
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.raft.config import Config
from core.raft.disk import SNAPSHOT_NAME, DiskStorage
from core.raft.messages import AppendResponse, Snapshot, SnapshotRequest
from core.raft.node import Node
from core.raft.ready import Ready
from core.raft.snapshot_file import data_bytes
from core.raft.snapshot_stream import (
    INCOMING_NAME,
    BytesSource,
    FileSource,
    ReceivedSnapshot,
    SenderState,
    SnapshotOutbox,
    SnapshotPayloadError,
    SnapshotReceiver,
    SnapshotSender,
    snapshot_file_source,
)
from core.raft.snapshot_wire import (
    NACK_CHECKSUM,
    NACK_DIGEST,
    NACK_GAP,
    NACK_STALE,
    NACK_TOO_LARGE,
    NACK_UNKNOWN,
    chunk_from_wire,
    reply_from_wire,
)
from core.rpc import FrameTooLarge, NodeTransport, RequestRefused
from tests.conftest import find_free_port

LEADER, FOLLOWER = 1, 2
KIB = 1024
MIB = 1024 * KIB
Payload = dict[str, Any]


def blob(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def request(data: bytes, term: int = 3, index: int = 100, voters: tuple[int, ...] = (1, 2, 3),
            to: int = FOLLOWER) -> SnapshotRequest:
    return SnapshotRequest(frm=LEADER, to=to, term=term,
                           snapshot=Snapshot(index, term - 1, voters, data))


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(f".{INCOMING_NAME}"))


class Pipe:
    """Both directions of one leader-follower link, with a seeded schedule of faults."""

    def __init__(self, sender: SnapshotSender, receiver: SnapshotReceiver, rng: random.Random,
                 drop: float = 0.0, dup: float = 0.0, reorder: bool = False,
                 tamper: Callable[[Payload], Payload] | None = None) -> None:
        self.sender, self.receiver, self.rng = sender, receiver, rng
        self.drop, self.dup, self.reorder, self.tamper = drop, dup, reorder, tamper
        self.to_follower: list[Payload] = []
        self.to_leader: list[Payload] = []
        self.completed: list[ReceivedSnapshot] = []
        self.replies: list[Payload] = []

    def run(self, max_steps: int = 200_000) -> None:
        """Until the sender is finished; a sender that never finishes fails the test."""
        for _ in range(max_steps):
            self._queue(self.to_follower, self.sender.poll())
            if self.sender.finished:
                return
            if not self.to_follower and not self.to_leader:
                self.sender.tick()  # the network is quiet: only a timeout moves things on
                continue
            if self.to_leader and (not self.to_follower or self.rng.random() < 0.5):
                self.sender.on_reply(self._take(self.to_leader))
            else:
                chunk = self._take(self.to_follower)
                if self.tamper is not None:
                    chunk = self.tamper(chunk)
                reply, done = self.receiver.on_chunk(chunk)
                self.replies.append(reply)
                if done is not None:
                    self.completed.append(done)
                self._queue(self.to_leader, [reply])
        raise AssertionError(f"no end after {max_steps} steps: {self.sender!r}")

    def _queue(self, queue: list[Payload], payloads: list[Payload]) -> None:
        for p in payloads:
            if self.rng.random() < self.drop:
                continue
            queue.append(p)
            if self.rng.random() < self.dup:
                queue.append(p)

    def _take(self, queue: list[Payload]) -> Payload:
        k = self.rng.randrange(len(queue)) if self.reorder else 0
        return queue.pop(k)


def check_received(done: ReceivedSnapshot, data: bytes, req: SnapshotRequest) -> None:
    assert done.read_data() == data
    assert done.size == len(data)
    assert done.digest == xxhash.xxh64_intdigest(data)
    assert same_request(done.to_request(FOLLOWER), req)


# -- transfers through a faulty pipe -----------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), drop=st.floats(0, 0.3), dup=st.floats(0, 0.3),
       reorder=st.booleans(), window=st.integers(1, 6), extra=st.integers(0, 4 * KIB))
def test_a_multi_mib_snapshot_survives_drops_duplicates_and_reordering(
        seed: int, drop: float, dup: float, reorder: bool, window: int, extra: int) -> None:
    data = blob(3 * MIB + extra, seed)
    with tempfile.TemporaryDirectory() as tmp:
        leader_dir, follower_dir = Path(tmp, "leader"), Path(tmp, "follower")
        leader_dir.mkdir()
        follower_dir.mkdir()
        (leader_dir / "snap").write_bytes(data)
        req = request(data)
        sender = SnapshotSender.from_request(req, FileSource(leader_dir / "snap"),
                                             chunk_bytes=128 * KIB, window=window,
                                             resend_ticks=3, max_stalls=10_000)
        receiver = SnapshotReceiver(follower_dir, FOLLOWER)
        pipe = Pipe(sender, receiver, random.Random(seed), drop, dup, reorder)
        pipe.run()
        sender.close()
        assert sender.state is SenderState.DONE, sender.failure
        assert len(pipe.completed) == 1
        check_received(pipe.completed[0], data, req)
        assert temp_files(follower_dir) == [pipe.completed[0].path.name]
        receiver.release()
        assert temp_files(follower_dir) == []


def test_a_clean_link_sends_each_chunk_once(tmp_path: Path) -> None:
    data = blob(5 * MIB + 3)
    sender = SnapshotSender.from_request(request(data), chunk_bytes=MIB)
    receiver = SnapshotReceiver(tmp_path, FOLLOWER)
    pipe = Pipe(sender, receiver, random.Random(1))
    pipe.run()
    assert sender.state is SenderState.DONE
    assert sender.stats == {"chunks_sent": 6, "bytes_sent": len(data), "resends": 0}
    assert all(reply_from_wire(r).ok for r in pipe.replies)
    check_received(pipe.completed[0], data, request(data))


def test_an_empty_snapshot_is_one_empty_chunk(tmp_path: Path) -> None:
    sender = SnapshotSender.from_request(request(b""))
    receiver = SnapshotReceiver(tmp_path, FOLLOWER)
    [chunk] = sender.poll()
    assert chunk["data"] == b"" and "meta" in chunk and "digest" in chunk
    reply, done = receiver.on_chunk(chunk)
    assert done is not None and done.read_data() == b""
    sender.on_reply(reply)
    assert sender.state is SenderState.DONE


def test_the_first_chunk_carries_the_metadata_and_the_last_the_digest() -> None:
    data = blob(10 * KIB)
    sender = SnapshotSender.from_request(request(data, voters=(4, 5)), chunk_bytes=4 * KIB)
    chunks = [chunk_from_wire(p) for p in sender.poll()]
    assert [(c.offset, len(c.data)) for c in chunks] == [(0, 4096), (4096, 4096), (8192, 2048)]
    assert chunks[0].meta is not None and chunks[0].meta.voters == (4, 5)
    assert [c.meta is None for c in chunks] == [False, True, True]
    assert [c.digest for c in chunks] == [None, None, xxhash.xxh64_intdigest(data)]
    assert all(c.hash == xxhash.xxh64_intdigest(c.data) for c in chunks)


# -- nacks, resends, timeouts ------------------------------------------------------------------


def flip_first_byte(payload: Payload) -> Payload:
    data = payload["data"]
    return {**payload, "data": bytes([data[0] ^ 0xFF]) + data[1:]}


def test_a_corrupted_chunk_is_nacked_and_resent(tmp_path: Path) -> None:
    data = blob(2 * MIB)
    corrupted: list[int] = []

    def tamper(p: Payload) -> Payload:
        if p["offset"] == 512 * KIB and not corrupted:
            corrupted.append(p["offset"])
            return flip_first_byte(p)
        return p

    sender = SnapshotSender.from_request(request(data), chunk_bytes=256 * KIB)
    receiver = SnapshotReceiver(tmp_path, FOLLOWER)
    pipe = Pipe(sender, receiver, random.Random(2), tamper=tamper)
    pipe.run()
    nacks = [reply_from_wire(r) for r in pipe.replies if not reply_from_wire(r).ok]
    assert [(n.reason, n.next) for n in nacks[:1]] == [(NACK_CHECKSUM, 512 * KIB)]
    assert {n.reason for n in nacks} <= {NACK_CHECKSUM, NACK_GAP}
    assert sender.state is SenderState.DONE and sender.stats["resends"] >= 1
    check_received(pipe.completed[0], data, request(data))


def test_a_whole_snapshot_digest_mismatch_starts_over_then_gives_up(tmp_path: Path) -> None:
    data = blob(MIB)

    def bad_digest(p: Payload) -> Payload:
        return {**p, "digest": p["digest"] ^ 1} if "digest" in p else p

    sender = SnapshotSender.from_request(request(data), chunk_bytes=256 * KIB, max_restarts=2)
    receiver = SnapshotReceiver(tmp_path, FOLLOWER)
    pipe = Pipe(sender, receiver, random.Random(3), tamper=bad_digest)
    pipe.run()
    digests = [r for r in pipe.replies if r.get("reason") == NACK_DIGEST]
    assert len(digests) == 3 and all(r["next"] == 0 for r in digests)
    assert sender.state is SenderState.FAILED and "digest" in (sender.failure or "")
    assert pipe.completed == [] and temp_files(tmp_path) == []


def test_a_digest_mismatch_once_is_repaired_by_sending_again(tmp_path: Path) -> None:
    data = blob(MIB)
    spoiled: list[bool] = []

    def bad_digest_once(p: Payload) -> Payload:
        if "digest" in p and not spoiled:
            spoiled.append(True)
            return {**p, "digest": p["digest"] ^ 1}
        return p

    sender = SnapshotSender.from_request(request(data), chunk_bytes=256 * KIB)
    pipe = Pipe(sender, SnapshotReceiver(tmp_path, FOLLOWER), random.Random(4),
                tamper=bad_digest_once)
    pipe.run()
    assert sender.state is SenderState.DONE
    check_received(pipe.completed[0], data, request(data))


def test_silence_resends_from_the_acked_offset_then_fails() -> None:
    sender = SnapshotSender.from_request(request(blob(10 * KIB)), chunk_bytes=KIB, window=2,
                                         resend_ticks=3, max_stalls=2)
    assert [p["offset"] for p in sender.poll()] == [0, 1024]
    assert sender.poll() == []  # the window is full
    ack = {"kind": "ack", "frm": FOLLOWER, "to": LEADER, "term": 3, "index": 100,
           "next": 1024}
    assert sender.on_reply(ack)
    assert [p["offset"] for p in sender.poll()] == [2048]
    for _ in range(2):
        sender.tick()
    assert sender.poll() == []
    sender.tick()  # the third tick without progress: resend from the acked offset
    assert [p["offset"] for p in sender.poll()] == [1024, 2048]
    for _ in range(3):
        sender.tick()  # the second timeout in a row: resend again
    assert sender.state is SenderState.SENDING
    assert [p["offset"] for p in sender.poll()] == [1024, 2048]
    for _ in range(3):
        sender.tick()
    assert sender.state is SenderState.FAILED and sender.failure == "timed out"
    assert sender.poll() == []


def test_replies_of_other_transfers_are_ignored_and_garbage_raises() -> None:
    sender = SnapshotSender.from_request(request(blob(4 * KIB)), chunk_bytes=KIB)
    sender.poll()
    other = {"kind": "ack", "frm": FOLLOWER, "to": LEADER, "term": 3, "index": 99, "next": 3}
    assert not sender.on_reply(other) and sender.acked == 0
    with pytest.raises(SnapshotPayloadError):
        sender.on_reply({"kind": "ack", "frm": FOLLOWER})
    with pytest.raises(SnapshotPayloadError):  # acknowledges more than the snapshot holds
        sender.on_reply({**other, "index": 100, "next": 5 * KIB})


@pytest.mark.parametrize("reason", [NACK_STALE, NACK_TOO_LARGE])
def test_a_refusing_receiver_fails_the_transfer(reason: str) -> None:
    sender = SnapshotSender.from_request(request(blob(4 * KIB)), chunk_bytes=KIB)
    sender.poll()
    sender.on_reply({"kind": "nack", "frm": FOLLOWER, "to": LEADER, "term": 3, "index": 100,
                     "next": 0, "reason": reason})
    assert sender.state is SenderState.FAILED and reason in (sender.failure or "")


def test_a_receiver_that_forgot_the_transfer_gets_it_from_the_start(tmp_path: Path) -> None:
    data = blob(8 * KIB)
    sender = SnapshotSender.from_request(request(data), chunk_bytes=KIB, window=8)
    first = SnapshotReceiver(tmp_path, FOLLOWER)
    chunks = sender.poll()
    for c in chunks[:3]:
        sender.on_reply(first.on_chunk(c)[0])
    assert sender.acked == 3 * KIB
    first.close()  # the follower restarted: a new receiver knows nothing
    second = SnapshotReceiver(tmp_path, FOLLOWER)
    reply, _ = second.on_chunk(chunks[3])
    assert (reply["reason"], reply["next"]) == (NACK_UNKNOWN, 0)
    sender.on_reply(reply)
    assert sender.acked == 0
    pipe = Pipe(sender, second, random.Random(5))
    pipe.run()
    check_received(pipe.completed[0], data, request(data))


def test_a_second_sender_with_other_chunk_sizes_continues_the_file(tmp_path: Path) -> None:
    data = blob(10_000)
    receiver = SnapshotReceiver(tmp_path, FOLLOWER)
    first = SnapshotSender.from_request(request(data), chunk_bytes=1000, window=3)
    for chunk in first.poll():
        first.on_reply(receiver.on_chunk(chunk)[0])
    first.close()
    # the leader's Node gave up on the first stream and asked again: a new sender, which
    # learns that the follower holds [0, 3000) and hashes its way there
    second = SnapshotSender.from_request(request(data), chunk_bytes=1300, window=2)
    pipe = Pipe(second, receiver, random.Random(6))
    pipe.run()
    assert second.state is SenderState.DONE
    assert second.stats["bytes_sent"] < len(data) + 2 * 1300
    check_received(pipe.completed[0], data, request(data))


def test_a_lost_final_ack_is_repeated_for_the_same_transfer(tmp_path: Path) -> None:
    data = blob(3000)
    receiver = SnapshotReceiver(tmp_path, FOLLOWER)
    first = SnapshotSender.from_request(request(data), chunk_bytes=1000)
    completed = [receiver.on_chunk(c)[1] for c in first.poll()]
    assert completed[-1] is not None
    second = SnapshotSender.from_request(request(data), chunk_bytes=1000)
    reply, done = receiver.on_chunk(second.poll()[0])
    assert done is None and reply == {"kind": "ack", "frm": FOLLOWER, "to": LEADER,
                                      "term": 3, "index": 100, "next": 3000}
    second.on_reply(reply)
    assert second.state is SenderState.DONE
    receiver.release()  # installed and its file removed: a late chunk is still acked
    third = SnapshotSender.from_request(request(data), chunk_bytes=1000)
    reply, done = receiver.on_chunk(third.poll()[1])
    assert done is None and reply["next"] == 3000 and temp_files(tmp_path) == []


# -- transfers pre-empting each other ----------------------------------------------------------


def test_a_newer_transfer_preempts_an_older_one(tmp_path: Path) -> None:
    old_data, new_data = blob(8 * KIB, 1), blob(6 * KIB, 2)
    receiver = SnapshotReceiver(tmp_path, FOLLOWER)
    old = SnapshotSender.from_request(request(old_data, term=3, index=100), chunk_bytes=KIB)
    old_chunks = old.poll()
    for c in old_chunks[:2]:
        old.on_reply(receiver.on_chunk(c)[0])
    [old_file] = temp_files(tmp_path)
    assert receiver.receiving == (3, 100, 2 * KIB)

    new_req = request(new_data, term=4, index=90)  # a new leader's term wins, lower index too
    new = SnapshotSender.from_request(new_req, chunk_bytes=KIB)
    new_chunks = new.poll()
    new.on_reply(receiver.on_chunk(new_chunks[0])[0])
    assert receiver.receiving == (4, 90, KIB)
    assert old_file not in temp_files(tmp_path) and len(temp_files(tmp_path)) == 1

    reply, _ = receiver.on_chunk(old_chunks[2])  # the old leader keeps sending: stale
    assert reply["reason"] == NACK_STALE
    old.on_reply(reply)
    assert old.state is SenderState.FAILED
    pipe = Pipe(new, receiver, random.Random(7))
    pipe.run()
    check_received(pipe.completed[0], new_data, new_req)


def test_a_higher_index_in_the_same_term_preempts_and_the_lower_is_stale(tmp_path: Path) -> None:
    receiver = SnapshotReceiver(tmp_path, FOLLOWER)
    low = SnapshotSender.from_request(request(blob(4 * KIB), index=50), chunk_bytes=KIB)
    high = SnapshotSender.from_request(request(blob(4 * KIB), index=60), chunk_bytes=KIB)
    low_chunks, high_chunks = low.poll(), high.poll()
    receiver.on_chunk(low_chunks[0])
    receiver.on_chunk(high_chunks[0])
    assert receiver.receiving == (3, 60, KIB)
    assert receiver.on_chunk(low_chunks[0])[0]["reason"] == NACK_STALE
    assert receiver.on_chunk(low_chunks[1])[0]["reason"] == NACK_STALE


def test_a_chunk_of_an_older_term_than_the_nodes_is_stale(tmp_path: Path) -> None:
    receiver = SnapshotReceiver(tmp_path, FOLLOWER)
    chunk = SnapshotSender.from_request(request(blob(KIB), term=3)).poll()[0]
    reply, done = receiver.on_chunk(chunk, current_term=4)
    assert reply["reason"] == NACK_STALE and done is None
    assert temp_files(tmp_path) == [] and receiver.receiving is None


def test_a_newer_transfer_discards_an_unreleased_completed_one(tmp_path: Path) -> None:
    receiver = SnapshotReceiver(tmp_path, FOLLOWER)
    [c] = SnapshotSender.from_request(request(blob(KIB), index=10)).poll()
    _, done = receiver.on_chunk(c)
    assert done is not None and done.path.exists()
    [c2] = SnapshotSender.from_request(request(blob(KIB), index=20)).poll()
    _, done2 = receiver.on_chunk(c2)
    assert done2 is not None and not done.path.exists() and receiver.completed == done2
    assert receiver.on_chunk(c)[0]["reason"] == NACK_STALE


def test_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    receiver = SnapshotReceiver(tmp_path, FOLLOWER, max_snapshot_bytes=4 * KIB)
    sender = SnapshotSender.from_request(request(blob(5 * KIB)), chunk_bytes=KIB)
    reply, _ = receiver.on_chunk(sender.poll()[0])
    assert reply["reason"] == NACK_TOO_LARGE and temp_files(tmp_path) == []
    sender.on_reply(reply)
    assert sender.state is SenderState.FAILED


# -- memory and files --------------------------------------------------------------------------


def test_the_receiver_holds_no_more_than_the_chunk_in_hand(tmp_path: Path) -> None:
    chunk_bytes = 256 * KIB
    data = blob(8 * MIB)
    sender = SnapshotSender.from_request(request(data), chunk_bytes=chunk_bytes, window=1)
    receiver = SnapshotReceiver(tmp_path, FOLLOWER)
    peak_growth = kept = 0
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        while not sender.finished:
            [payload] = sender.poll()
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            reply, done = receiver.on_chunk(payload)
            current, peak = tracemalloc.get_traced_memory()
            peak_growth = max(peak_growth, peak - before)
            del payload
            kept = max(kept, tracemalloc.get_traced_memory()[0] - base)
            sender.on_reply(reply)
    finally:
        tracemalloc.stop()
    assert sender.state is SenderState.DONE and done is not None
    assert done.read_data() == data
    # a call allocates well under a chunk beyond the payload it was handed (no copy of the
    # data), and between calls nothing of the chunks stays: only the transfer's small state
    assert peak_growth < chunk_bytes // 4, peak_growth
    assert kept < chunk_bytes // 4, kept


def test_abort_removes_the_temp_file(tmp_path: Path) -> None:
    receiver = SnapshotReceiver(tmp_path, FOLLOWER)
    chunks = SnapshotSender.from_request(request(blob(4 * KIB)), chunk_bytes=KIB).poll()
    receiver.on_chunk(chunks[0])
    assert len(temp_files(tmp_path)) == 1
    receiver.abort()
    assert temp_files(tmp_path) == [] and receiver.receiving is None
    assert receiver.on_chunk(chunks[1])[0]["reason"] == NACK_UNKNOWN


def test_an_idle_transfer_is_dropped_after_its_ticks(tmp_path: Path) -> None:
    receiver = SnapshotReceiver(tmp_path, FOLLOWER, idle_ticks=3)
    receiver.on_chunk(SnapshotSender.from_request(request(blob(4 * KIB)),
                                                  chunk_bytes=KIB).poll()[0])
    receiver.tick()
    receiver.tick()
    assert len(temp_files(tmp_path)) == 1
    receiver.tick()
    assert temp_files(tmp_path) == [] and receiver.stats["aborted"] == 1


def test_leftover_temp_files_are_removed_on_open(tmp_path: Path) -> None:
    receiver = SnapshotReceiver(tmp_path, FOLLOWER)
    receiver.on_chunk(SnapshotSender.from_request(request(blob(4 * KIB)),
                                                  chunk_bytes=KIB).poll()[0])
    (tmp_path / "raft.log").write_bytes(b"x")  # not ours: left alone
    assert len(temp_files(tmp_path)) == 1  # the process "crashes" here, file still open
    SnapshotReceiver(tmp_path, FOLLOWER)
    assert temp_files(tmp_path) == []
    assert (tmp_path / "raft.log").exists()


def test_close_removes_both_the_partial_and_the_completed_file(tmp_path: Path) -> None:
    receiver = SnapshotReceiver(tmp_path, FOLLOWER)
    [c] = SnapshotSender.from_request(request(blob(KIB), index=10)).poll()
    receiver.on_chunk(c)
    receiver.on_chunk(SnapshotSender.from_request(request(blob(4 * KIB), index=20),
                                                  chunk_bytes=KIB).poll()[0])
    assert len(temp_files(tmp_path)) == 1  # the newer transfer removed the completed one
    receiver.close()
    assert temp_files(tmp_path) == []


# -- the leader's side: sources and the outbox -------------------------------------------------


def install_on_disk(directory: Path, snapshot: Snapshot) -> Path:
    """The snapshot file core/raft/disk.py writes when a follower installs `snapshot`."""
    disk = DiskStorage.open(directory)
    try:
        disk.persist(Ready(snapshot=snapshot, must_sync=True))
    finally:
        disk.close()
    return directory / SNAPSHOT_NAME


@pytest.mark.parametrize("size", [0, 200, 60_000, 70_000])  # msgpack bin 8, 16 and 32
def test_the_file_source_reads_the_data_of_a_disk_storage_snapshot(tmp_path: Path,
                                                                   size: int) -> None:
    data = blob(size)
    path = install_on_disk(tmp_path, Snapshot(100, 2, (1, 2, 3), data))
    source = snapshot_file_source(path, 100, 2)
    try:
        assert source.size() == size and source.read(0, size) == data
    finally:
        source.close()
    with pytest.raises(ValueError):
        snapshot_file_source(path, 101, 2)
    with pytest.raises(ValueError):
        snapshot_file_source(tmp_path / "raft.log", 100, 2)


def test_a_cut_snapshot_file_is_refused_by_the_file_source(tmp_path: Path) -> None:
    path = install_on_disk(tmp_path, Snapshot(100, 2, (1, 2, 3), blob(70_000)))
    whole = path.read_bytes()
    path.write_bytes(whole[:-1])
    with pytest.raises(OSError):
        snapshot_file_source(path, 100, 2)
    path.write_bytes(whole[:12])
    with pytest.raises((OSError, ValueError)):
        snapshot_file_source(path, 100, 2)


def test_a_snapshot_streams_from_the_leaders_snapshot_file(tmp_path: Path) -> None:
    leader_dir, follower_dir = tmp_path / "l", tmp_path / "f"
    leader_dir.mkdir()
    follower_dir.mkdir()
    data = blob(3 * MIB + 5)
    path = install_on_disk(leader_dir, Snapshot(100, 2, (1, 2, 3), data))
    # the message's own bytes are not used: the sender reads the file
    req = SnapshotRequest(frm=LEADER, to=FOLLOWER, term=3,
                          snapshot=Snapshot(100, 2, (1, 2, 3), b""))
    sender = SnapshotSender.from_request(req, snapshot_file_source(path, 100, 2),
                                         chunk_bytes=MIB)
    pipe = Pipe(sender, SnapshotReceiver(follower_dir, FOLLOWER), random.Random(8))
    pipe.run()
    sender.close()
    done = pipe.completed[0]
    assert done.read_data() == data
    assert same_request(done.to_request(FOLLOWER), request(data, term=3, index=100))


def test_a_file_source_keeps_reading_the_file_it_opened(tmp_path: Path) -> None:
    path = tmp_path / "snap"
    path.write_bytes(b"old" * 100)
    source = FileSource(path, 3, 6)
    replacement = tmp_path / "new"
    replacement.write_bytes(b"new" * 100)
    os.replace(replacement, path)
    assert source.size() == 6 and source.read(0, 6) == b"oldold"
    source.close()
    with pytest.raises(OSError):
        FileSource(path, 10, 1000)


def test_the_outbox_keeps_a_stream_under_way_and_replaces_an_older_one(tmp_path: Path) -> None:
    outbox = SnapshotOutbox(chunk_bytes=KIB, window=2)
    data = blob(4 * KIB)
    first = outbox.start(request(data))
    assert outbox.start(request(data)) is first  # the Node asked again: same stream
    sent = outbox.poll()
    assert [(to, p["offset"]) for to, p in sent] == [(FOLLOWER, 0), (FOLLOWER, KIB)]
    newer = outbox.start(request(blob(2 * KIB), index=200))
    assert newer is not first and first.state is SenderState.FAILED
    assert outbox.finished() == [] and outbox.senders() == [newer]
    receiver = SnapshotReceiver(tmp_path, FOLLOWER)
    for _ in range(10):
        for to, payload in outbox.poll():
            reply, _ = receiver.on_chunk(payload)
            assert outbox.on_reply(to, reply)
    assert outbox.finished() == [(FOLLOWER, True)] and outbox.senders() == []
    assert not outbox.on_reply(FOLLOWER, {"kind": "ack", "frm": FOLLOWER, "to": LEADER,
                                          "term": 3, "index": 200, "next": 1})
    with pytest.raises(SnapshotPayloadError):
        outbox.on_reply(3, {"kind": "ack"})


def test_the_outbox_reports_a_failed_stream_and_cancels_all(tmp_path: Path) -> None:
    outbox = SnapshotOutbox(resend_ticks=1, max_stalls=1)
    outbox.start(request(blob(KIB), to=2))
    outbox.start(request(blob(KIB), to=3))
    outbox.poll()
    outbox.tick()
    outbox.tick()
    assert sorted(outbox.finished()) == [(2, False), (3, False)]
    source = BytesSource(b"abc")
    outbox.start(request(b"abc", to=2), source)
    outbox.start(request(b"abc", to=3))
    outbox.cancel(2)
    assert [s.to for s in outbox.senders()] == [3]
    outbox.cancel_all()
    assert outbox.senders() == [] and outbox.finished() == []


# -- the decoders against garbage --------------------------------------------------------------

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.binary(max_size=64)
    | st.text(max_size=16),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=8), inner, max_size=6),
    max_leaves=20)


VALID_CHUNKS = SnapshotSender.from_request(request(blob(3 * KIB)), chunk_bytes=KIB).poll()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(garbage=msgpack_values)
def test_garbage_never_raises_anything_but_the_payload_error(garbage: object) -> None:
    for decode in (chunk_from_wire, reply_from_wire):
        try:
            decode(garbage)
        except SnapshotPayloadError:
            pass


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 2), field=st.sampled_from(
    ["kind", "frm", "to", "term", "index", "offset", "total", "data", "hash", "meta", "digest",
     "extra"]), value=msgpack_values | st.integers(0, 2**64 + 5), delete=st.booleans())
def test_mutated_chunks_get_a_reply_or_the_payload_error(
        tmp_path: Path, which: int, field: str, value: object, delete: bool) -> None:
    payload = dict(VALID_CHUNKS[which])
    if delete:
        payload.pop(field, None)
    else:
        payload[field] = value
    receiver = SnapshotReceiver(tmp_path, FOLLOWER, max_snapshot_bytes=MIB)
    for chunk in (VALID_CHUNKS[0], payload):
        try:
            reply, _ = receiver.on_chunk(chunk)
        except SnapshotPayloadError:
            continue
        reply_from_wire(reply)  # whatever it answers is a well-formed reply
    receiver.close()
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("payload", [
    {"kind": "chunk", "frm": 1, "to": 2, "term": 1, "index": 1, "offset": 2**64, "total": 1,
     "data": b"", "hash": 0},
    {"kind": "chunk", "frm": 1, "to": 2, "term": 1, "index": 1, "offset": 5, "total": 3,
     "data": b"", "hash": 0},
    {"kind": "chunk", "frm": 1, "to": 2, "term": 1, "index": 1, "offset": 0, "total": 10,
     "data": b"", "hash": 0, "meta": [1, []]},
    {"kind": "chunk", "frm": 1, "to": 2, "term": True, "index": 1, "offset": 0, "total": 1,
     "data": b"x", "hash": 0, "meta": [1, []], "digest": 0},
    {"kind": "chunk", "frm": 1, "to": 2, "term": 1, "index": 1, "offset": 0, "total": 1,
     "data": b"x", "hash": 0, "digest": 0},
    {"kind": "chunk", "frm": 1, "to": 2, "term": 1, "index": 1, "offset": 1, "total": 3,
     "data": b"x", "hash": 0, "digest": 0},
    {"kind": "chunk", "frm": 1, "to": 2, "term": 1, "index": 1, "offset": 0, "total": 1,
     "data": b"x", "hash": 0, "meta": [1, list(range(2000))], "digest": 0},
    {"kind": "nack", "frm": 1, "to": 2, "term": 1, "index": 1, "next": 0, "reason": "bored"},
    {"kind": "ack", "frm": 1, "to": 2, "term": 1, "index": 1, "next": -1},
    [1, 2, 3],
])
def test_malformed_payloads_raise_the_payload_error(payload: object) -> None:
    with pytest.raises(SnapshotPayloadError):
        if isinstance(payload, dict) and payload.get("kind") == "chunk":
            chunk_from_wire(payload)
        else:
            reply_from_wire(payload)


def test_a_chunk_over_the_chunk_limit_or_for_another_node_is_a_payload_error(
        tmp_path: Path) -> None:
    receiver = SnapshotReceiver(tmp_path, FOLLOWER, max_chunk_bytes=KIB)
    [big] = SnapshotSender.from_request(request(blob(2 * KIB)), chunk_bytes=2 * KIB).poll()
    with pytest.raises(SnapshotPayloadError):
        receiver.on_chunk(big)
    [other] = SnapshotSender.from_request(request(blob(KIB), to=9)).poll()
    with pytest.raises(SnapshotPayloadError):
        receiver.on_chunk(other)
    assert temp_files(tmp_path) == []


# -- the follower steps the received snapshot into its Node ------------------------------------


def same_snapshot(a: Snapshot | None, b: Snapshot) -> bool:
    """Equal meta and equal bytes, wherever the data is held."""
    assert a is not None
    return (a.index, a.term, a.voters, data_bytes(a.data)) == (b.index, b.term, b.voters,
                                                                data_bytes(b.data))


def same_request(a: SnapshotRequest, b: SnapshotRequest) -> bool:
    return (a.frm, a.to, a.term) == (b.frm, b.to, b.term) and same_snapshot(a.snapshot,
                                                                            b.snapshot)


def test_a_received_snapshot_steps_into_the_node_and_persists(tmp_path: Path) -> None:
    data = blob(2 * MIB + 1)
    req = request(data, term=3, index=100)
    receiver = SnapshotReceiver(tmp_path, FOLLOWER)
    sender = SnapshotSender.from_request(req, chunk_bytes=512 * KIB)
    pipe = Pipe(sender, receiver, random.Random(9))
    pipe.run()
    [done] = pipe.completed

    storage = DiskStorage.open(tmp_path)
    node = Node(Config(id=FOLLOWER, peers=(1, 2, 3)), storage, random.Random(1))
    node.step(done.to_request(FOLLOWER))
    rd = node.ready()
    assert same_snapshot(rd.snapshot, req.snapshot)  # its data names the received file
    storage.persist(rd)  # then restore(rd.snapshot.data) and apply, as the Ready loop does
    receiver.release()
    node.advance(rd)
    assert [(type(m), m.to, m.index) for m in rd.messages if isinstance(m, AppendResponse)] \
        == [(AppendResponse, LEADER, 100)]
    storage.close()
    assert temp_files(tmp_path) == []
    reopened = DiskStorage.open(tmp_path)
    assert same_snapshot(reopened.snapshot(), req.snapshot)
    reopened.close()


# -- over real sockets: core/rpc with frames smaller than the snapshot -------------------------

SNAP_SERVICE, GROUP, SECRET = "raft.snap", 7, "snapshot stream secret"
SMALL_FRAME_BYTES = 2 * MIB


class LeaderService:
    """The leader's "raft.snap" service: replies go to the outbox, chunks go out."""

    def __init__(self, transport: NodeTransport, outbox: SnapshotOutbox) -> None:
        self.transport, self.outbox = transport, outbox
        self.finished: list[tuple[int, bool]] = []

    def on_message(self, peer_id: int, group: int, payload: Any) -> None:
        assert group == GROUP
        self.outbox.on_reply(peer_id, payload)
        self.flush()

    async def on_request(self, peer_id: int, group: int, payload: Any) -> Any:
        raise RequestRefused("no requests")

    def flush(self) -> None:
        for to, payload in self.outbox.poll():
            self.transport.send(to, SNAP_SERVICE, GROUP, payload)
        self.finished += self.outbox.finished()


class FollowerService:
    """The follower's "raft.snap" service: chunks to the receiver, replies back. With
    `crash_after` it plays dead (takes nothing more) once it holds that many bytes."""

    def __init__(self, transport: NodeTransport, receiver: SnapshotReceiver,
                 crash_after: int | None = None) -> None:
        self.transport, self.receiver = transport, receiver
        self.crash_after = crash_after
        self.crashed = False
        self.completed: list[ReceivedSnapshot] = []

    def on_message(self, peer_id: int, group: int, payload: Any) -> None:
        progress = self.receiver.receiving
        if self.crash_after is not None and progress and progress[2] >= self.crash_after:
            self.crashed = True
        if self.crashed:
            return
        reply, done = self.receiver.on_chunk(payload)
        self.transport.send(peer_id, SNAP_SERVICE, group, reply)
        if done is not None:
            self.completed.append(done)

    async def on_request(self, peer_id: int, group: int, payload: Any) -> Any:
        raise RequestRefused("no requests")


def test_a_snapshot_larger_than_a_frame_streams_over_core_rpc(tmp_path: Path) -> None:
    data = blob(12 * MIB + 11)
    req = request(data)

    async def main() -> None:
        book = {1: ("127.0.0.1", find_free_port()), 2: ("127.0.0.1", find_free_port())}
        leader = NodeTransport(LEADER, book[1], book, SECRET, max_frame_bytes=SMALL_FRAME_BYTES)
        follower = NodeTransport(FOLLOWER, book[2], book, SECRET)
        outbox = SnapshotOutbox(resend_ticks=25)
        leader_side = LeaderService(leader, outbox)
        follower_side = FollowerService(follower, SnapshotReceiver(tmp_path, FOLLOWER))
        leader.register(SNAP_SERVICE, leader_side)
        follower.register(SNAP_SERVICE, follower_side)
        await leader.start()
        await follower.start()
        try:
            with pytest.raises(FrameTooLarge):  # today's way: the whole snapshot in one frame
                leader.send(FOLLOWER, "raft", GROUP, req.to_wire())
            outbox.start(req)
            leader_side.flush()
            deadline = asyncio.get_running_loop().time() + 60
            while not leader_side.finished:  # the ticker; 60 s only detects a hang
                assert asyncio.get_running_loop().time() < deadline, outbox.senders()
                await asyncio.sleep(0.02)
                outbox.tick()
                leader_side.flush()
        finally:
            await leader.close()
            await follower.close()
        assert leader_side.finished == [(FOLLOWER, True)]
        check_received(follower_side.completed[0], data, req)

    asyncio.run(main())


def test_a_follower_restarting_mid_transfer_gets_the_snapshot_from_the_start(
        tmp_path: Path) -> None:
    data = blob(8 * MIB + 3)
    req = request(data)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        book = {1: ("127.0.0.1", find_free_port()), 2: ("127.0.0.1", find_free_port())}
        leader = NodeTransport(LEADER, book[1], book, SECRET)
        outbox = SnapshotOutbox(chunk_bytes=256 * KIB, resend_ticks=10, max_stalls=100)
        leader_side = LeaderService(leader, outbox)
        leader.register(SNAP_SERVICE, leader_side)
        follower = NodeTransport(FOLLOWER, book[2], book, SECRET)
        first = FollowerService(follower, SnapshotReceiver(tmp_path, FOLLOWER), 2 * MIB)
        follower.register(SNAP_SERVICE, first)
        await leader.start()
        await follower.start()
        second: FollowerService | None = None
        try:
            outbox.start(req)
            leader_side.flush()
            deadline = loop.time() + 60  # only detects a hang
            while not leader_side.finished:
                assert loop.time() < deadline, outbox.senders()
                if first.crashed and second is None:
                    await follower.close()  # its file stays behind, as after a SIGKILL
                    assert len(temp_files(tmp_path)) == 1
                    follower = NodeTransport(FOLLOWER, book[2], book, SECRET)
                    second = FollowerService(follower, SnapshotReceiver(tmp_path, FOLLOWER))
                    assert temp_files(tmp_path) == []  # removed when the receiver opened
                    follower.register(SNAP_SERVICE, second)
                    await follower.start()
                await asyncio.sleep(0.02)
                outbox.tick()
                leader_side.flush()
        finally:
            await leader.close()
            await follower.close()
        assert leader_side.finished == [(FOLLOWER, True)] and second is not None
        check_received(second.completed[0], data, req)
        assert temp_files(tmp_path) == [second.completed[0].path.name]

    asyncio.run(main())
