"""The worker-facing commands of a scheduler node: WORKER.HEARTBEAT, WORKER.POLL,
WORKER.RESULTS and WORKER.DONE.

`WorkerCommands` is an object the server (`scheduler.server.SchedulerServer`) holds, beside
its firing loop (scheduler/fireloop.py), whose parked polls and wake-ups it uses; the
server's `commands()` lists these handlers with the others. A poll
at the leader first asks the firing loop to claim for it inside its next fire entry
(scheduler/polls.py), then waits there for runs to fire; elsewhere it commits a claim entry
(forwarded to the leader). A poll carries the worker's advert (its tags, and an embedded
worker's handler names after the word HANDLERS), so it claims only runs it can execute
(scheduler/routing.py). Results go back as one entry per WORKER.RESULTS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from core.clock import Clock
from core.resp import OK, CommandError
from core.resp_commands import parse_int
from scheduler import state as S
from scheduler.arguments import bounded_int, text_arg
from scheduler.fireloop import FiringLoop
from scheduler.jobs import MAX_RETRIES
from scheduler.routing import NamesError, parse_names
from scheduler.state import SchedulerState

EAGER_CLAIM_WAIT_S = 0.2  # a poll waits this long for the firing loop to claim for it
MAX_POLL_MS = 30_000
DEFAULT_POLL_MS = 1000
MAX_OUTPUT_BYTES = 1024
MAX_RESULTS = 256  # runs one WORKER.RESULTS reports
MAX_WORKER_ID_BYTES = 255  # ids live in the replicated state (last heard), so they are bounded
# exit codes: a 32-bit int, as any process or handler reports (and msgpack carries)
MIN_EXIT_CODE, MAX_EXIT_CODE = -(2**31), 2**31 - 1

ERR_RUN_ID = "ERR bad run id '{}'"
ERR_TIMEOUT_MS = f"ERR timeout must be an integer from 0 to {MAX_POLL_MS} (ms)"
ERR_MAX_RUNS = f"ERR max runs must be an integer from 1 to {S.MAX_CLAIM}"
ERR_EXIT_CODE = f"ERR exit code must be an integer from {MIN_EXIT_CODE} to {MAX_EXIT_CODE}"
ERR_ATTEMPT = f"ERR attempt must be an integer from 1 to {MAX_RETRIES + 1}"
ERR_WORKER_ID = f"ERR worker id must be 1 to {MAX_WORKER_ID_BYTES} bytes"
HOLDING_WORD = "HOLDING"  # WORKER.HEARTBEAT id HOLDING sent_ms key,...: the runs it holds
MAX_HOLDING = 65_536  # run keys one heartbeat lists (a worker holds far fewer)
MAX_SENT_MS = 2**62  # epoch ms of the worker's clock: any time msgpack carries
ERR_HOLDING = (f"ERR WORKER.HEARTBEAT takes {HOLDING_WORD} sent_ms run_id#attempt,... "
               f"(at most {MAX_HOLDING}) after the worker id")
HANDLERS_WORD = "HANDLERS"  # WORKER.POLL ... max_runs HANDLERS h1,h2: an embedded worker
SHELL_WORD = "SHELL"  # ... max_runs SHELL: a shell worker
AHEAD_WORD = "AHEAD"  # ... AHEAD n: runs fired ahead it takes besides max_runs
ERR_POLL_OPTION = (f"ERR WORKER.POLL takes {HANDLERS_WORD} name,... or {SHELL_WORD}, then "
                   f"{AHEAD_WORD} n, after max_runs")
ERR_AHEAD = f"ERR ahead must be an integer from 0 to {S.MAX_CLAIM}"
# a poll that says neither SHELL nor HANDLERS comes from a worker older than the cluster:
# it could be either kind, so no run is known to be one it can execute
ERR_NO_ADVERT = ("ERR this worker does not say what it runs (SHELL or HANDLERS): it is "
                 "older than the cluster; upgrade the scheduler package where it runs")


def _result(args: list[bytes]) -> S.Result:
    """`run_id exit_code [output_tail [attempt]]` (of WORKER.DONE or WORKER.RESULTS)."""
    run_id = text_arg(args[0])
    job, at, _ = run_id.partition("@")
    if not job or not at:
        raise CommandError(ERR_RUN_ID.format(run_id))
    exit_code = bounded_int(args[1], MIN_EXIT_CODE, MAX_EXIT_CODE, ERR_EXIT_CODE)
    output = args[2][-MAX_OUTPUT_BYTES:].decode("utf-8", "replace") if len(args) > 2 else ""
    attempt = bounded_int(args[3], 1, MAX_RETRIES + 1, ERR_ATTEMPT) if len(args) > 3 else None
    return job, run_id, exit_code, output, attempt


def holding_option(args: list[bytes]) -> tuple[list[str] | None, int | None]:
    """WORKER.HEARTBEAT's words after the worker id: none, or `HOLDING sent_ms keys`, the
    keys (run_id#attempt; job names have no comma) joined by commas, at most MAX_HOLDING.
    Returns (keys, sent_ms), (None, None) without them; CommandError ERR_HOLDING for any
    other shape."""
    if not args:
        return None, None
    if len(args) != 3 or text_arg(args[0]).upper() != HOLDING_WORD:
        raise CommandError(ERR_HOLDING)
    sent_ms = bounded_int(args[1], 0, MAX_SENT_MS, ERR_HOLDING)
    keys = [key for key in text_arg(args[2]).split(",") if key]
    if len(keys) > MAX_HOLDING:
        raise CommandError(ERR_HOLDING)
    return keys, sent_ms


class _Poller(NamedTuple):
    """Who polls: the worker, its advert (tags; handlers, None for a shell worker), and
    how many runs it takes (due now; fired ahead, None: counted with the others)."""

    worker: str
    tags: list[str]
    handlers: list[str] | None
    limit: int
    ahead: int | None = None


def poll_options(args: list[bytes]) -> tuple[list[str] | None, int | None]:
    """WORKER.POLL's words after max_runs: the advert, `SHELL` or `HANDLERS names` (one of
    them, first), then optionally `AHEAD n`. Returns (handlers, None for a shell worker;
    ahead, None if not given). CommandError: ERR_NO_ADVERT without an advert,
    ERR_POLL_OPTION for any other shape."""
    if not args:
        raise CommandError(ERR_NO_ADVERT)
    word = text_arg(args[0]).upper()
    if word == SHELL_WORD:
        handlers, rest = None, args[1:]
    elif word == HANDLERS_WORD and len(args) >= 2:
        handlers, rest = sorted(_names(args[1], "handlers")), args[2:]
    else:
        raise CommandError(ERR_POLL_OPTION)
    if not rest:
        return handlers, None
    if len(rest) != 2 or text_arg(rest[0]).upper() != AHEAD_WORD:
        raise CommandError(ERR_POLL_OPTION)
    return handlers, bounded_int(rest[1], 0, S.MAX_CLAIM, ERR_AHEAD)


def _names(raw: bytes, what: str) -> frozenset[str]:
    try:
        return parse_names(text_arg(raw), what)
    except NamesError as exc:
        raise CommandError(exc.message) from None


def _worker_id(raw: bytes) -> str:
    if not 0 < len(raw) <= MAX_WORKER_ID_BYTES:
        raise CommandError(ERR_WORKER_ID)
    return text_arg(raw)


def _poll_reply(runs: list[dict[str, Any]]) -> list[list[Any]]:
    """WORKER.POLL's reply: one item per claimed run (see scheduler.worker.Run.from_wire)."""
    return [[r["run_id"], r["job"], r["command"], r["slot_ms"], r["attempt"], r["timeout_s"],
             r["shard"], r["shards"], r.get("start_in_ms", 0)] for r in runs]


class WorkerCommands:
    """The WORKER.* handlers of one node. `write` commits an entry (the server's, through
    the RESP-on-Raft service); `counters` is the server's INFO counters."""

    def __init__(self, firing: FiringLoop, write: Callable[[bytes], Awaitable[Any]],
                 state: SchedulerState, clock: Clock, counters: dict[str, int]) -> None:
        self.firing = firing
        self._write = write
        self.state = state
        self.clock = clock
        self.counters = counters

    def cmd_heartbeat(self, session: Any, args: list[bytes]) -> Any:
        """WORKER.HEARTBEAT worker_id [HOLDING sent_ms run_id#attempt,...]: the worker is
        alive; with HOLDING, every run it holds as of its clock's sent_ms (the state loses
        those it gives the worker and the worker does not list: state_apply's `_beat`)."""
        worker = _worker_id(args[1])
        holding, sent_ms = holding_option(args[2:])

        async def run() -> Any:
            now = self.clock.wall_ms()
            await self._write(S.encode_beat(worker, now, holding, sent_ms))
            self.counters["heartbeats"] += 1
            return self.state.killed_attempts(worker, now)

        return run()

    def cmd_poll(self, session: Any, args: list[bytes]) -> Any:
        """WORKER.POLL worker_id tags timeout_ms resync max_runs SHELL|HANDLERS names
        [AHEAD n]: the runs claimed for the worker, waiting up to timeout_ms for some. Its
        advert (scheduler/routing.py): `tags`, and an embedded worker's handler names; a
        poll without one is refused (ERR_NO_ADVERT, `poll_options`)."""
        worker = _worker_id(args[1])
        tags = sorted(_names(args[2], "tags")) if len(args) > 2 else []
        timeout_ms = DEFAULT_POLL_MS
        if len(args) > 3:
            timeout_ms = parse_int(args[3], ERR_TIMEOUT_MS)
            if not 0 <= timeout_ms <= MAX_POLL_MS:
                raise CommandError(ERR_TIMEOUT_MS)
        resync = len(args) > 4 and args[4] == b"1"
        limit = S.DEFAULT_CLAIM
        if len(args) > 5:
            limit = parse_int(args[5], ERR_MAX_RUNS)
            if not 1 <= limit <= S.MAX_CLAIM:
                raise CommandError(ERR_MAX_RUNS)
        handlers, ahead = poll_options(args[6:])
        return self._poll(_Poller(worker, tags, handlers, limit, ahead), timeout_ms / 1000,
                          resync)

    async def _poll(self, poller: _Poller, timeout: float, resync: bool) -> Any:
        worker, tags, handlers, limit, ahead = poller
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if resync or self.state.pending(tags, worker, handlers):
                runs = None if resync else await self._claim_with_fires(poller)
                if runs is None:  # not the leader, or its firing loop did not take it
                    self.firing.fired.clear()
                    entry = S.encode_claim(worker, tags, self.clock.wall_ms(), limit, resync,
                                           handlers, ahead)
                    runs = await self._write(entry)
                    self.counters["claims"] += 1
                if runs:
                    return _poll_reply(runs)
                resync = False
            left = deadline - loop.time()
            if left <= 0:
                return []
            runs = await self._wait_for_runs(poller, left)
            if runs:
                return _poll_reply(runs)

    async def _claim_with_fires(self, poller: _Poller) -> list[dict[str, Any]] | None:
        """On the leader, claim in the firing loop's next entry (scheduler/polls.py): the
        runs it claimed for this poll, or None if it did not take the poll in time."""
        if not self.firing.leads():
            return None
        poll = self.firing.parked.park(poller.worker, poller.tags, poller.limit, eager=True,
                                       handlers=poller.handlers, ahead=poller.ahead)
        self.firing.wake()
        try:
            await asyncio.wait_for(asyncio.shield(poll.runs), EAGER_CLAIM_WAIT_S)
        except TimeoutError:
            pass
        finally:
            self.firing.parked.unpark(poll)
        return await poll.runs if poll.taken else None

    async def _wait_for_runs(self, poller: _Poller, left: float) -> list[dict[str, Any]]:
        """Wait up to `left` s for runs to fire. On the leader the poll parks meanwhile, so
        the next fire entry also claims for it (scheduler/polls.py): those runs are
        returned; [] when it was not taken or they went to other claims."""
        self.firing.fired.clear()
        poll = None
        if self.firing.leads():
            poll = self.firing.parked.park(poller.worker, poller.tags, poller.limit,
                                           handlers=poller.handlers, ahead=poller.ahead)
        try:
            async with asyncio.timeout(left):
                await self.firing.fired.wait()
        except TimeoutError:
            pass
        finally:
            if poll is not None:
                self.firing.parked.unpark(poll)
        if poll is None or not poll.taken:
            return []
        return await poll.runs

    def cmd_done(self, session: Any, args: list[bytes]) -> Any:
        return self._report([_result(args[1:])])

    def cmd_results(self, session: Any, args: list[bytes]) -> Any:
        """WORKER.RESULTS: WORKER.DONE's four arguments for each of several runs, committed
        as one entry (a worker with many short runs reports them together)."""
        if (len(args) - 1) % 4 or len(args) - 1 > 4 * MAX_RESULTS:
            raise CommandError("ERR wrong number of arguments for 'worker.results' command")
        return self._report([_result(args[i:i + 4]) for i in range(1, len(args), 4)])

    def _report(self, results: list[S.Result]) -> Any:
        async def run() -> Any:
            now = self.clock.wall_ms()
            broadcast = any(self.state.has_broadcast_dependent(r[0]) for r in results)
            workers = self.firing.live_workers(now) if broadcast else ()
            await self._write(S.encode_done_many(results, now, workers))
            self.counters["results"] += len(results)
            return OK

        return run()
