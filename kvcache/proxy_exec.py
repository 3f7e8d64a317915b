"""Carrying out the proxy's plans (kvcache/proxy_plan.py) on the backends.

Every request a plan needs in its first round is *sent before `run` returns*, in the order
the client's requests arrived; later rounds (a read failing over to the next replica, the
rest of a replicated compare-and-swap) are sent when the first round answered. Since a
client always uses the same connection slot of a backend (kvcache/proxy_backend.py), one
client's requests reach each backend in the client's order.

What each command does with `--replicas R` (the key's home and its R-1 ring successors,
minus the backends marked down; R = 1 is plain ketama sharding):
- reads (get, gets, mg, me): the first healthy replica; if its request fails (connection
  error, timeout) the next replica is asked, so losing a node does not lose its keys' hits.
  A miss on get, gets or mg (without N, which would vivify the key) is asked of the next
  replica too: a replica back from down was flushed (kvcache/proxy_backend.py) while the
  others kept the key, so its return does not empty its share of the cache either.
  Multi-gets group keys per backend, one request each, all sent at once, merged back in the
  client's order with one END.
  Such a second request would reach the next replica after the client's later requests, so
  the client's connection holds a later request that touches one of the read's keys (and
  everything after it) until the read has answered (kvcache/proxy_order.py): a read never
  sees a write the client sent after it.
- gat, gats: every replica (so every copy's TTL moves); the value is the first replica's
  answer (in ring order) that came back.
- set add replace append prepend delete incr decr touch, ms md ma: every replica; the
  client gets the first replica's answer that came back (a write survives the loss of a
  replica). Caveat: incr/decr (and ma) run on each copy independently, so copies that
  already differed stay different; add/replace may succeed on one copy and not another.
- cas, and ms/md/ma with a C (compare) flag: CAS tokens are per server, so the compare runs
  on the first healthy replica only (where gets/mg got the token); when it succeeds, the
  same change without the compare (a plain set for cas) goes to the other replicas. The
  client's next requests wait until that is sent, so they cannot overtake it.
- flush_all: every backend; OK only if every backend (down ones included) said OK.
Failures: a key whose backends are all marked down (fail mode) or all failed gets
`SERVER_ERROR backend unavailable` (or the timeout / connection error line). A multi-get
answers the keys it could and leaves out the failed ones (as misses, as mcrouter does by
default); only if no key could be asked does it answer the error line.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from kvcache import replies
from kvcache.proxy_backend import BackendConn, BackendFailure, BackendPool, Reply, ignore
from kvcache.proxy_lane import Answer, lane_request
from kvcache.proxy_plan import (
    UNAVAILABLE,
    Admin,
    Broadcast,
    Forward,
    Local,
    Plan,
    Retrieve,
    compare_succeeded,
)
from kvcache.proxy_wire import FENCED, LINE, VALUES, WHOLE_VALUES, is_error

log = logging.getLogger("kvcache.proxy")

_STORAGE = frozenset((b"set", b"add", b"replace", b"append", b"prepend", b"cas", b"ms"))


class ProxyCounters:
    """The proxy's own command figures (`stats`). `commands` counts by the command's bytes
    (decoded only when `stats` is asked: this is the hot path)."""

    def __init__(self) -> None:
        self.commands: Counter[bytes] = Counter()
        self.cmd_get = 0
        self.cmd_set = 0
        self.cmd_touch = 0
        self.cmd_flush = 0
        self.get_hits = 0
        self.get_misses = 0
        self.proxy_errors = 0  # SERVER_ERROR lines the proxy made (backend down, failed)

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


class Slot:
    """One request's place in its client's reply order: a reply now, a future of one, or
    (`later`) a reply made when its turn comes, after every earlier reply (stats).
    `barrier`: the client's later requests must wait until this one is done. `reads`: the
    keys of a replicated read that may still ask another replica once it is sent (the
    connection holds later requests for them, kvcache/proxy_order.py). (`Answer`,
    kvcache/proxylane_pure.py, is the slot of a request one backend answers; `waiting` is
    always False here.)"""

    __slots__ = ("fut", "reply", "silent", "barrier", "later", "reads")
    waiting = False

    def __init__(self, reply: bytes = b"", fut: asyncio.Future[Any] | None = None,
                 silent: bool = False, barrier: bool = False,
                 later: Callable[[], bytes] | None = None,
                 reads: tuple[bytes, ...] | None = None) -> None:
        self.reply = reply
        self.fut = fut
        self.silent = silent
        self.barrier = barrier
        self.later = later
        self.reads = reads

    def done(self) -> bool:
        return self.fut is None or self.fut.done()

    def result(self, counters: ProxyCounters) -> bytes:
        fut = self.fut
        if fut is None:
            return self.reply if self.later is None else self.later()
        try:
            reply = fut.result()
        except BackendFailure as failure:
            counters.proxy_errors += 1
            reply = failure.line
        except Exception:  # a bug: logged, answered, the connection stays usable
            log.exception("request failed inside the proxy")
            counters.proxy_errors += 1
            reply = replies.line(replies.INTERNAL_ERROR)
        return b"" if self.silent else reply


class Executor:
    """Runs plans on a BackendPool. `admin(tokens)` answers `stats`."""

    def __init__(self, pool: BackendPool, replicas: int, counters: ProxyCounters,
                 admin: Callable[[list[bytes]], bytes]) -> None:
        self.pool = pool
        self.replicas = replicas
        self.counters = counters
        self.admin = admin
        self.loop = asyncio.get_running_loop()
        router = pool.router
        # the lane's routing: the ring's lookup and the health it checks (fail mode); remap
        # asks the Router, which knows the ring without the down backends
        self._home = router.ring.get_server if router.on_down == "fail" else None
        self._health = router.health

    def run(self, plan: Plan, index: int) -> Slot | Answer:
        """Start `plan` for client connection `index` (QUIT/CLOSE_NOW are the caller's)."""
        kind = type(plan)
        if kind is Retrieve:
            return self._retrieve(plan, index)  # type: ignore[arg-type]
        if kind is Forward:
            return self._forward(plan, index)  # type: ignore[arg-type]
        if kind is Local:
            if plan.also is not None:  # type: ignore[union-attr]
                self._side_effect(plan.also, index)  # type: ignore[union-attr]
            return Slot(plan.reply)  # type: ignore[union-attr]
        if kind is Admin:
            self.counters.commands[b"stats"] += 1
            tokens = plan.tokens  # type: ignore[union-attr]
            return Slot(later=lambda: self.admin(tokens))
        assert kind is Broadcast
        return self._broadcast(plan, index)  # type: ignore[arg-type]

    def lane(self, data: bytes, index: int, value_max: int,
             conns: dict[str, BackendConn]) -> Answer | None:
        """If `data` is one plain get or set (kvcache/proxylane_pure.py `lane_request`) whose
        key has a backend, and each key has one copy (--replicas 1): `data` sent as it is on
        client connection `index`'s slot, counted as its plan would be; its slot. Else None
        and nothing done: the caller parses `data`. `conns`: the client's own cache of its
        backend connections (server -> connection), kept here."""
        if self.replicas != 1:
            return None
        found = lane_request(data, value_max)
        if found is None:
            return None
        key, store = found
        home = self._home
        if home is not None:  # on-down fail: the key's ring owner, unless it is down
            server = home(key)
            if self._health[server].down:
                return None  # the plan answers it (unavailable), and counts it
        else:
            server = self.pool.router.route(key)
            if server is None:
                return None
        counters = self.counters
        if store:
            if home is None and self.pool.router.any_down:  # remap: remember the move
                self.pool.router.wrote(key, server, 1)
            counters.commands[b"set"] += 1
            counters.cmd_set += 1
            answer, shape = Answer(False, 0), LINE
        else:
            counters.commands[b"get"] += 1
            counters.cmd_get += 1
            answer, shape = Answer(False, 1), WHOLE_VALUES
        conn = conns.get(server)
        if conn is None or conn.closed:
            conn = conns[server] = self.pool.backends[server].conn(index)
        conn.send(data, shape, answer)
        return answer

    def _unavailable(self, silent: bool) -> Slot:
        self.counters.proxy_errors += 1
        return Slot(b"" if silent else UNAVAILABLE)

    def _task(self, coro: Any, silent: bool = False, barrier: bool = False,
              reads: tuple[bytes, ...] | None = None) -> Slot:
        return Slot(fut=self.loop.create_task(coro), silent=silent, barrier=barrier,
                    reads=reads)

    # -- keyed commands --------------------------------------------------------------------
    def _forward(self, plan: Forward, index: int) -> Slot | Answer:
        counters = self.counters
        counters.commands[plan.name] += 1
        if plan.name in _STORAGE:
            counters.cmd_set += 1
        elif plan.name == b"touch":
            counters.cmd_touch += 1
        targets = self.pool.targets(plan.key, self.replicas, plan.write)
        if not targets:
            return self._unavailable(plan.silent)
        send = self.pool.send
        if len(targets) == 1:  # the common case: the backend answers into the slot
            return send(targets[0], index, plan.payload, plan.shape,
                        Answer(plan.silent, 0))
        if not plan.write:
            first = send(targets[0], index, plan.payload, plan.shape)
            return self._task(self._read(plan, targets, first, index), plan.silent,
                              reads=(plan.key,))
        if plan.compare is not None:
            first = send(targets[0], index, plan.payload, plan.shape)
            return self._task(self._compare(plan, targets, first, index), plan.silent,
                              barrier=True)
        futs = [send(server, index, plan.payload, plan.shape) for server in targets]
        return self._task(self._first_answer(futs), plan.silent)

    async def _read(self, plan: Forward, targets: list[str], first: asyncio.Future[Reply],
                    index: int) -> Reply:
        fut, miss = first, None
        for server in targets[1:]:
            try:
                reply = await fut
                if not _is_plain_miss(plan, reply):
                    return reply
                miss = reply  # the answer unless a later replica has the key
            except BackendFailure:
                pass
            fut = self.pool.send(server, index, plan.payload, plan.shape)
        try:
            return await fut
        except BackendFailure:
            if miss is None:
                raise
            return miss

    async def _compare(self, plan: Forward, targets: list[str], first: asyncio.Future[Reply],
                       index: int) -> Reply:
        reply = await first
        assert isinstance(reply, bytes) and plan.compare is not None
        if compare_succeeded(reply, plan.shape == FENCED):
            for server in targets[1:]:
                ignore(self.pool.send(server, index, plan.compare, plan.compare_shape))
        return reply

    async def _first_answer(self, futs: list[asyncio.Future[Reply]]) -> Reply:
        results = await asyncio.gather(*futs, return_exceptions=True)
        for result in results:
            if not isinstance(result, BaseException):
                return result
        raise results[0]

    def _side_effect(self, plan: Forward, index: int) -> None:
        for server in self.pool.targets(plan.key, self.replicas, plan.write):
            ignore(self.pool.send(server, index, plan.payload, plan.shape))

    # -- per-backend commands --------------------------------------------------------------
    def _broadcast(self, plan: Broadcast, index: int) -> Slot:
        self.counters.cmd_flush += 1
        self.counters.commands[b"flush_all"] += 1
        pool = self.pool
        down = [s for s in pool.servers if pool.is_down(s)]
        futs = [pool.send(s, index, plan.payload, plan.shape)
                for s in pool.servers if not pool.is_down(s)]
        return self._task(self._all_ok(futs, bool(down)), plan.silent)

    async def _all_ok(self, futs: list[asyncio.Future[Reply]], any_down: bool) -> bytes:
        results = await asyncio.gather(*futs, return_exceptions=True)
        for result in results:
            if isinstance(result, BackendFailure):
                self.counters.proxy_errors += 1
                return result.line
            if isinstance(result, BaseException):
                raise result
            if result not in (replies.OK, b""):
                return result  # type: ignore[return-value]
        if any_down:
            self.counters.proxy_errors += 1
            return UNAVAILABLE
        return replies.OK

    # -- retrieval -------------------------------------------------------------------------
    def _retrieve(self, plan: Retrieve, index: int) -> Slot | Answer:
        counters = self.counters
        counters.commands[plan.verb] += 1
        keys = plan.keys
        touch = plan.exptime is not None
        if touch:
            counters.cmd_touch += len(keys)
        counters.cmd_get += len(keys)
        if len(keys) == 1 and self.replicas == 1:  # the common case, without the grouping
            server = self.pool.router.route(keys[0])
            if server is None:
                counters.get_misses += 1
                return self._unavailable(False)
            return self._single(plan, server, index)
        candidates: dict[bytes, list[str]] = {}
        groups: dict[str, list[bytes]] = {}
        for key in dict.fromkeys(plan.keys):
            servers = candidates[key] = self.pool.targets(key, self.replicas)
            for server in servers if touch else servers[:1]:
                groups.setdefault(server, []).append(key)
        if len(groups) == 1 and all(len(c) == 1 for c in candidates.values()):
            # One backend holds every key: its reply is the answer, byte for byte.
            return self._single(plan, next(iter(groups)), index)
        futs = self._send_groups(plan, groups, index)
        reads = None if touch else tuple(k for k, c in candidates.items() if len(c) > 1)
        return self._task(self._merge(plan, candidates, groups, futs, index),
                          reads=reads or None)

    def _single(self, plan: Retrieve, server: str, index: int) -> Answer:
        """One backend holds every key: its reply is the answer, byte for byte."""
        return self.pool.send(server, index, plan.payload(plan.keys), WHOLE_VALUES,
                              Answer(False, len(plan.keys)))

    def _send_groups(self, plan: Retrieve, groups: dict[str, list[bytes]],
                     index: int) -> list[asyncio.Future[Reply]]:
        send = self.pool.send
        return [send(server, index, plan.payload(keys), VALUES) for server, keys in groups.items()]

    async def _merge(self, plan: Retrieve, candidates: dict[bytes, list[str]],
                     groups: dict[str, list[bytes]], futs: list[asyncio.Future[Reply]],
                     index: int) -> bytes:
        touch = plan.exptime is not None
        # key -> (rank of the answering replica, its VALUE block or b"" for a miss)
        answers: dict[bytes, tuple[int, bytes]] = {}
        errors: dict[bytes, bytes] = {}
        tried = dict.fromkeys(candidates, 0)
        while futs:
            results = await asyncio.gather(*futs, return_exceptions=True)
            retry: dict[str, list[bytes]] = {}
            for (server, keys), result in zip(groups.items(), results, strict=True):
                if isinstance(result, BackendFailure):
                    for key in keys:
                        nxt = tried[key] + 1
                        if not touch and nxt < len(candidates[key]):
                            tried[key] = nxt
                            retry.setdefault(candidates[key][nxt], []).append(key)
                        else:
                            errors.setdefault(key, result.line)
                    continue
                if isinstance(result, BaseException):
                    raise result
                hits, terminal = result  # type: ignore[misc]
                if is_error(terminal):
                    for key in keys:
                        errors.setdefault(key, terminal)
                    continue
                for key in self._record(server, keys, hits, candidates, answers):
                    nxt = tried[key] + 1  # a miss: the next replica may have it
                    if not touch and nxt < len(candidates[key]):
                        tried[key] = nxt
                        retry.setdefault(candidates[key][nxt], []).append(key)
            groups = retry
            futs = self._send_groups(plan, groups, index)
        return self._reply(plan, answers, errors)

    @staticmethod
    def _record(server: str, keys: list[bytes], hits: list[tuple[bytes, bytes]],
                candidates: dict[bytes, list[str]],
                answers: dict[bytes, tuple[int, bytes]]) -> list[bytes]:
        """Keep each key's best answer (a hit over a miss, then the first replica's); the
        keys `server` missed."""
        blocks = dict(hits)
        missed = []
        for key in keys:
            rank, block = candidates[key].index(server), blocks.get(key, b"")
            if not block:
                missed.append(key)
            old = answers.get(key)
            if (old is None or (block and not old[1])
                    or (bool(block) == bool(old[1]) and rank < old[0])):
                answers[key] = (rank, block)
        return missed

    def _reply(self, plan: Retrieve, answers: dict[bytes, tuple[int, bytes]],
               errors: dict[bytes, bytes]) -> bytes:
        counters = self.counters
        if not answers:  # no key could be asked: the first key's error
            counters.get_misses += len(plan.keys)
            line = errors.get(plan.keys[0], UNAVAILABLE)
            if line.startswith(b"SERVER_ERROR backend"):
                counters.proxy_errors += 1
            return line
        out = []
        for key in plan.keys:
            block = answers.get(key, (0, b""))[1]
            if block:
                out.append(block)
        counters.get_hits += len(out)
        counters.get_misses += len(plan.keys) - len(out)
        out.append(replies.END)
        return b"".join(out)


def _is_plain_miss(plan: Forward, reply: Reply) -> bool:
    """A read's miss that another replica may answer: `EN` to an mg without N (vivify)."""
    if plan.name != b"mg" or reply != b"EN\r\n":
        return False
    return not any(token.startswith(b"N") for token in plan.payload.split()[2:])
