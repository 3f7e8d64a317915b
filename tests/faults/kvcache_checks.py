"""Checkers of the kvcache drill's histories (tests/faults/kvcache_drill.py runs the drill).

Strategy: the drill's history holds client `set`s (each value written once) and `get`s of
keys routed by the proxy, `home_get`s read straight from a backend, and instants marking
each round's cut, the proxy's mark-down, the heal and the mark-up (`Round`). Every checker
is a pure function of the operations and the rounds, returning a CheckResult whose window
holds the few operations that show a violation. A cache may always miss, so no checker
demands a hit except right after an acknowledged set in remap mode's cut, where the brief of
remap (serve the keys from the next node) does. What each checks is in its docstring and in
kvcache_drill.py's header.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tests.faults.history import FAIL, Operation
from tests.faults.report import CheckResult, origin_of

F_SET, F_GET, F_HOME_GET = "set", "get", "home_get"
UNAVAILABLE = "SERVER_ERROR backend unavailable"
HANG = "hang"
FAIL_MODE, REMAP_MODE = "fail", "remap"
NEVER = 1 << 62  # the end of an operation that never completed


@dataclass
class Round:
    """One cut: its backend (`host:port`), kind, and the instants (ns) of the cut, the
    proxy's mark-down, the heal, the proxy's mark-up, and the next round's cut."""

    victim: str
    kind: str
    cut_at: int = 0
    down_at: int = 0
    heal_at: int = 0
    up_at: int = 0
    next_at: int = NEVER

    def cut(self, op: Operation) -> bool:
        """`op` ran entirely while the backend was cut."""
        return op.invoke_time > self.cut_at and end(op) < self.heal_at

    def down(self, op: Operation) -> bool:
        """`op` ran entirely while the cut backend was marked down."""
        return op.invoke_time > self.down_at and end(op) < self.heal_at

    def back(self, op: Operation) -> bool:
        """`op` ran entirely after the proxy marked the backend up, before the next cut."""
        return op.invoke_time > self.up_at and end(op) < self.next_at


def end(op: Operation) -> int:
    """The completion time, or NEVER for an operation still open at the end."""
    return op.complete_time if op.complete_time is not None else NEVER


def _kv(ops: Iterable[Operation]) -> list[Operation]:
    return sorted((op for op in ops if op.f in (F_SET, F_GET)), key=lambda op: op.invoke_time)


def _invoked_between(ops: list[Operation], start: int, stop: int) -> list[Operation]:
    """The operations of `ops` (sorted by invocation) invoked after `start`, before `stop`."""
    times = [op.invoke_time for op in ops]
    return ops[bisect_right(times, start):bisect_left(times, stop)]


class _Overwrites:
    """Per key, the acknowledged sets by invocation, with the earliest completion among each
    suffix: whether some set began after an instant and ended before another is one search."""

    def __init__(self, sets: Iterable[Operation]) -> None:
        by_key: dict[str, list[Operation]] = defaultdict(list)
        for op in sets:
            by_key[op.key].append(op)
        self.invokes: dict[str, list[int]] = {}
        self.first_done: dict[str, list[Operation]] = {}
        for key, ops in by_key.items():
            ops.sort(key=lambda op: op.invoke_time)
            self.invokes[key] = [op.invoke_time for op in ops]
            suffix: list[Operation] = []
            for op in reversed(ops):
                suffix.append(op if not suffix or end(op) < end(suffix[-1]) else suffix[-1])
            self.first_done[key] = suffix[::-1]

    def within(self, key: str, after: int, before: int) -> Operation | None:
        """An acknowledged set of `key` invoked after `after` that ended before `before`."""
        times = self.invokes.get(key, [])
        at = bisect_right(times, after)
        if at == len(times):
            return None
        candidate = self.first_done[key][at]
        return candidate if end(candidate) < before else None


def _fail(name: str, text: str, window: Iterable[Operation], ops: list[Operation]
          ) -> CheckResult:
    shown = sorted(window, key=lambda op: (op.invoke_time, op.id))
    return CheckResult(name, False, text, tuple(shown), origin=origin_of(ops))


def check_stale_reads(ops: list[Operation]) -> CheckResult:
    """No get returns a value that an acknowledged set had overwritten before the get
    began, nor one no set could have written (never attempted before the get ended, or only
    by a set the proxy never sent). Misses are always allowed."""
    sets = {op.value: op for op in ops if op.f == F_SET}
    overwrites = _Overwrites(op for op in sets.values() if op.ok)
    reads = 0
    for get in (op for op in ops if op.f == F_GET and op.ok and op.result is not None):
        reads += 1
        wrote = sets.get(get.result)
        if wrote is None or wrote.status == FAIL or wrote.invoke_time > end(get):
            window = [get] if wrote is None else [wrote, get]
            return _fail("stale reads", f"get {get.id} of {get.key!r} returned {get.result!r}, "
                         "which no set could have written by then", window, ops)
        if not wrote.ok:
            continue  # an unknown set may take effect at any time after its invocation
        later = overwrites.within(get.key, end(wrote), get.invoke_time)
        if later is not None:
            text = (f"get {get.id} of {get.key!r} returned {get.result!r} (set {wrote.id}), "
                    f"overwritten by set {later.id} ({later.value!r}) before the get began")
            return _fail("stale reads", text, [wrote, later, get], ops)
    return CheckResult("stale reads", True, f"{reads} hits, none stale or phantom")


def check_cut_routing(ops: list[Operation], rounds: list[Round], mode: str,
                      owner: Callable[[str], str]) -> CheckResult:
    """During each cut, keys of the other backends all work; once the cut backend is marked
    down its keys fail fast with UNAVAILABLE (fail mode) or all work, a get after an
    acknowledged set of the key in the cut being a hit (remap mode)."""
    kv = _kv(ops)
    seen = 0
    for cut in rounds:
        during = _invoked_between(kv, cut.cut_at, cut.heal_at)
        for op in during:
            if cut.cut(op) and owner(op.key) != cut.victim and not op.ok:
                return _fail("cut routing", f"op {op.id} on {op.key!r} of a healthy backend "
                             f"failed during the cut of {cut.victim}: {op.error}", [op], ops)
        mine = [op for op in during if cut.down(op) and owner(op.key) == cut.victim]
        seen += len(mine)
        failure = (_fail_fast if mode == FAIL_MODE else _remapped)(mine, cut, ops)
        if failure is not None:
            return failure
        if not mine:
            return CheckResult("cut routing", "unknown", f"no request for a key of {cut.victim} "
                               "ran while it was marked down", origin=origin_of(ops))
    return CheckResult("cut routing", True, f"{mode}: {seen} requests for keys of cut backends "
                       f"behaved, over {len(rounds)} cuts")


def _fail_fast(mine: list[Operation], cut: Round, ops: list[Operation]) -> CheckResult | None:
    for op in mine:
        if op.status != FAIL or not (op.error or "").startswith(UNAVAILABLE):
            return _fail("cut routing", f"op {op.id} on {op.key!r} of {cut.victim}, marked down "
                         f"in fail mode, ended {op.status} ({op.error or op.result!r}), not "
                         f"{UNAVAILABLE!r}", [op], ops)
    return None


def _remapped(mine: list[Operation], cut: Round, ops: list[Operation]) -> CheckResult | None:
    for op in mine:
        if not op.ok:
            return _fail("cut routing", f"op {op.id} on {op.key!r} of {cut.victim}, marked down "
                         f"in remap mode, failed: {op.error}", [op], ops)
    for get in (op for op in mine if op.f == F_GET and op.result is None):
        before = [s for s in mine if s.f == F_SET and s.key == get.key and s.ok
                  and end(s) < get.invoke_time]
        if before:
            return _fail("cut routing", f"get {get.id} of {get.key!r} missed after set "
                         f"{before[-1].id} was acknowledged in the cut (remap mode serves it "
                         "from the next node)", [before[-1], get], ops)
    return None


def check_no_hangs(ops: list[Operation]) -> CheckResult:
    """No request waited the clients' hang timeout for the proxy's answer."""
    hung = [op for op in ops if (op.error or "").startswith(HANG)]
    if hung:
        return _fail("no hangs", f"{len(hung)} requests got no answer from the proxy in time",
                     hung[:5], ops)
    return CheckResult("no hangs", True, f"all {len(ops)} requests answered")


def check_recovery(ops: list[Operation], rounds: list[Round]) -> CheckResult:
    """After the proxy marks a healed backend up, every request works, and keys set through
    the proxy are found on that backend itself."""
    kv = _kv(ops)
    for cut in rounds:
        for op in _invoked_between(kv, cut.up_at, cut.next_at):
            if cut.back(op) and not op.ok:
                return _fail("recovery", f"op {op.id} on {op.key!r} failed after {cut.victim} "
                             f"was back: {op.error}", [op], ops)
    probes = [op for op in ops if op.f == F_HOME_GET]
    for op in probes:
        if not op.ok or op.result != op.value:
            return _fail("recovery", f"the home backend answered {op.result!r} for {op.key!r}, "
                         f"set to {op.value!r} through the proxy", [op], ops)
    if len(probes) < len(rounds):
        return CheckResult("recovery", "unknown", "a round ended without its home probe",
                           origin=origin_of(ops))
    return CheckResult("recovery", True, f"{len(probes)} keys found on their returned backend")


def shadow_chances(ops: list[Operation], rounds: list[Round],
                   owner: Callable[[str], str]) -> int:
    """How many times a stale copy could have shown: a key of a cut backend, set before the
    cut and again while it was down, then read after its return before any newer set. Each
    such read is one the stale-read check would fail if a returning backend kept old values
    (in fail mode the backend holds the key's only copy, so there are none)."""
    kv = _kv(ops)
    chances = 0
    for cut in rounds:
        before = {op.key for op in kv if op.f == F_SET and op.ok and end(op) < cut.cut_at
                  and owner(op.key) == cut.victim}
        during = {op.key for op in _invoked_between(kv, cut.down_at, cut.heal_at)
                  if op.f == F_SET and op.ok and cut.down(op)} & before
        written: set[str] = set()
        for op in _invoked_between(kv, cut.up_at, cut.next_at):
            if op.f == F_SET:
                written.add(op.key)
            elif op.key in during and op.key not in written and op.ok:
                chances += 1
                during.discard(op.key)
    return chances


__all__ = ["Round", "check_cut_routing", "check_no_hangs", "check_recovery",
           "check_stale_reads", "shadow_chances"]
