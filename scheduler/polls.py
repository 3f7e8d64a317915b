"""Worker polls waiting at the leader, whose claims ride on the next fire entry.

A WORKER.POLL that finds nothing to claim waits (a long poll). On the leader it also parks
here: the firing loop takes every parked poll when it commits fires and puts their claims
in the fire entry (scheduler.state applies the fires, then the claims, as a claim entry
right after would), so a run is fired and claimed by one Raft commit instead of two.
Exactly-once is unchanged: the claim is committed before its runs are handed out.

A poll that finds runs to claim on the leader parks too, eagerly: the firing loop claims for
it at once, in one entry with whatever fires then; at 1,000 fires/s that is the next fire
entry anyway, and one claim entry per turn serves every waiting worker.

A taken poll waits for that entry's outcome, even past its own timeout, since runs may be
claimed for it there. If the outcome is unknown (an error, the loop stopping) the poll fails
with TRYAGAIN, and the worker's next poll asks to resync, which hands back what the cluster
claimed for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from scheduler.entries import claim_fields

__all__ = ["ParkedPoll", "ParkedPolls"]

RunDicts = list[dict[str, Any]]


def _retrieve(future: asyncio.Future[RunDicts]) -> None:
    """A poll cancelled meanwhile never reads its outcome: mark it read (no warning)."""
    if not future.cancelled():
        future.exception()


@dataclass
class ParkedPoll:
    """One waiting poll. `runs` resolves to what the fire entry claimed for it, once taken."""

    worker: str
    tags: list[str]
    limit: int
    eager: bool = False  # runs wait for it already: the loop should not wait for a fire
    handlers: list[str] | None = None  # an embedded worker's (scheduler/routing.py)
    ahead: int | None = None  # runs fired ahead it takes besides (entries.claim_fields)
    runs: asyncio.Future[RunDicts] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    taken: bool = False

    def __post_init__(self) -> None:
        self.runs.add_done_callback(_retrieve)


class ParkedPolls:
    """The polls parked at this node, in arrival order (the order their claims apply)."""

    def __init__(self) -> None:
        self._waiting: list[ParkedPoll] = []

    def park(self, worker: str, tags: list[str], limit: int, eager: bool = False,
             handlers: list[str] | None = None, ahead: int | None = None) -> ParkedPoll:
        poll = ParkedPoll(worker, tags, limit, eager, handlers, ahead)
        self._waiting.append(poll)
        return poll

    @property
    def eager(self) -> bool:
        """Whether a parked poll has runs to claim now (the loop commits its claim even
        without a fire: in one entry with the fires of the moment, if any)."""
        return any(poll.eager for poll in self._waiting)

    def unpark(self, poll: ParkedPoll) -> None:
        """The poll stops waiting (timeout, a fire to claim by itself, cancelled). A taken
        poll is the firing loop's until its entry's outcome is known."""
        if not poll.taken:
            self._waiting.remove(poll)

    def take(self, now_ms: int) -> tuple[list[ParkedPoll], list[dict[str, Any]]]:
        """Every parked poll, now the firing loop's, and its claim (`claim_fields`)."""
        polls, self._waiting = self._waiting, []
        for poll in polls:
            poll.taken = True
        return polls, [claim_fields(p.worker, p.tags, now_ms, p.limit, handlers=p.handlers,
                                    ahead=p.ahead) for p in polls]

    @staticmethod
    def resolve(polls: Sequence[ParkedPoll], claimed: Sequence[RunDicts]) -> None:
        """Hand each taken poll the runs its claim took (`claimed[i]` for `polls[i]`)."""
        for poll, runs in zip(polls, claimed, strict=True):
            if not poll.runs.done():
                poll.runs.set_result(runs)

    @staticmethod
    def fail(polls: Sequence[ParkedPoll], exc: BaseException) -> None:
        """The entry's outcome is unknown: each taken poll fails with `exc`."""
        for poll in polls:
            if not poll.runs.done():
                poll.runs.set_exception(exc)
