"""Linearizability of register and counter histories: Wing & Gong's search, Lowe's improvements.

Strategy (as in Porcupine and Knossos's linear checker, written afresh here):
- Partition by key: a history is linearizable iff each key's sub-history is (locality), so
  each key is searched alone, the smallest first.
- Each operation becomes a call entry at its invocation and a return entry at its
  completion, in one doubly linked list sorted by time (calls before returns at equal times,
  the permissive order). Failed operations are dropped (they did not happen); an info
  operation's return sits at +infinity, so it may be linearized at any point after its call
  or never; an info read constrains nothing and is dropped, and so (for registers) is an
  info write whose value nothing observes.
- Before searching, a quick necessary test (a register read of a value no write attempted
  in time) catches the grossest violations even where the search would time out.
- The search walks the list from its head: at a call it tries to apply the operation to the
  model; if the model accepts and the pair (set of linearized operations as a bitset, model
  state) was never seen before, the call and its return are lifted out of the list, the
  pair is memoized and the walk restarts at the head. At the return of an operation not yet
  linearized, the last choice is undone (backtrack). When the walk reaches the list's end,
  or a return at +infinity (everything left is an info operation, which may be left out),
  the history is linearizable; when backtracking has nothing left to undo, it is not.
- A step limit and a time limit stop the search with "unknown", never with a pass.
- On failure the search reports where it got furthest: the return that blocked it there,
  the longest linearizable prefix that reached it, and the model states it could be in.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from tests.faults.history import FAIL, INFO, History, Operation
from tests.faults.report import UNKNOWN, CheckResult, as_operations, origin_of

CHECKER = "linearizable"
DEFAULT_TIME_LIMIT_S = 10.0
CLOCK_EVERY_STEPS = 256
PREFIX_CONTEXT_OPS = 3
MAX_CONCURRENT_SHOWN = 8
MAX_STATES_SHOWN = 8
MAX_STATE_CHARS = 40

ERR_UNKNOWN_F = "the {model} model has no operation {f!r}"
ERR_CAS_VALUE = "a cas value is a pair (expected, new), got {value!r}"

_INF = float("inf")
_NIL = -1


class Model(Protocol):
    """A sequential specification: a start state and a step function (states are hashable)."""

    name: str

    def init(self) -> Hashable:
        """The state before any operation."""
        ...

    def step(self, state: Hashable, op: Operation) -> tuple[bool, Hashable]:
        """Whether `op` with its recorded outcome is legal in `state`, and the state after.

        For an info operation (outcome unknown) the step is the effect it would have had if
        it took effect; it is only called for operations that can change the state.
        """
        ...

    def reduce(self, ops: list[Operation]) -> list[Operation]:
        """One key's operations (none failed) less those that cannot change the verdict."""
        ...

    def impossible(self, ops: list[Operation]) -> Operation | None:
        """An operation no linearization can explain, by a quick necessary test, or None."""
        ...


@dataclass(frozen=True)
class Register:
    """A read/write/compare-and-set register starting at `initial`.

    write: value v. read: result is the value. cas: value (expected, new); an ok cas with
    result True or None swapped, with result False found another value.
    """

    initial: Hashable = None
    name: str = "register"

    def init(self) -> Hashable:
        return self.initial

    def step(self, state: Hashable, op: Operation) -> tuple[bool, Hashable]:
        if op.f == "write":
            return True, op.value
        if op.f == "read":
            return op.result == state, state
        if op.f == "cas":
            expected, new = _pair(op.value)
            if op.status == INFO or op.result in (True, None):
                return (True, new) if state == expected else (False, state)
            return state != expected, state
        raise ValueError(ERR_UNKNOWN_F.format(model=self.name, f=op.f))

    def reduce(self, ops: list[Operation]) -> list[Operation]:
        """Drop unknown reads, and unknown writes of values nothing ever observes.

        Sound when no ok cas reports a mismatch: leaving such a write out only changes the
        state during a stretch in which no operation looks at it (no read returns its value
        and no cas expects it), and an unknown write may always be left out.
        """
        ops = [op for op in ops if not (op.status == INFO and op.f == "read")]
        if any(op.f == "cas" and op.status != INFO and op.result is False for op in ops):
            return ops
        seen = {op.result for op in ops if op.f == "read"}
        seen |= {_pair(op.value)[0] for op in ops if op.f == "cas"}
        return [op for op in ops
                if not (op.status == INFO and op.f == "write" and op.value not in seen)]

    def impossible(self, ops: list[Operation]) -> Operation | None:
        """The first read (or swapping cas) of a value not written before it completed."""
        first: dict[Hashable, int] = {}
        for op in ops:
            if op.f in ("write", "cas"):
                value = op.value if op.f == "write" else _pair(op.value)[1]
                first[value] = min(first.get(value, op.invoke_time), op.invoke_time)
        for op in ops:
            seen = _observed(op)
            if op.status != INFO and seen is not _NOTHING and seen != self.initial \
                    and first.get(seen, _INF) > op.complete_time:  # type: ignore[operator]
                return op
        return None


_NOTHING = object()


def _observed(op: Operation) -> Any:
    """The value an ok read returned or an ok swapping cas expected, else _NOTHING."""
    if op.f == "read":
        return op.result
    if op.f == "cas" and op.result in (True, None):
        return _pair(op.value)[0]
    return _NOTHING


@dataclass(frozen=True)
class Counter:
    """A counter starting at `initial`: incr by value (1 when None), read.

    An ok incr whose result is not None must return the new value (as Redis INCR does).
    """

    initial: int = 0
    name: str = "counter"

    def init(self) -> Hashable:
        return self.initial

    def step(self, state: Hashable, op: Operation) -> tuple[bool, Hashable]:
        if op.f == "incr":
            after = int(state) + (1 if op.value is None else int(op.value))  # type: ignore[arg-type]
            if op.status == INFO or op.result is None:
                return True, after
            return op.result == after, after
        if op.f == "read":
            return op.result == state, state
        raise ValueError(ERR_UNKNOWN_F.format(model=self.name, f=op.f))

    def reduce(self, ops: list[Operation]) -> list[Operation]:
        """Drop unknown reads."""
        return [op for op in ops if not (op.status == INFO and op.f == "read")]

    def impossible(self, ops: list[Operation]) -> Operation | None:
        """No quick test here: tests/faults/checkers.py check_counter bounds the reads."""
        return None


@dataclass
class _Outcome:
    valid: bool | str
    steps: int
    blocked_op: int = -1
    prefix: tuple[int, ...] = ()
    states: tuple[Hashable, ...] = ()


class _Budget:
    """A shared step and time allowance for all keys of one check."""

    def __init__(self, time_limit: float | None, max_steps: int | None,
                 clock: Callable[[], float]) -> None:
        self.clock = clock
        self.deadline = None if time_limit is None else clock() + time_limit
        self.steps_left = max_steps
        self.spent_steps = 0

    def spend(self, steps: int) -> bool:
        """Charge `steps`; False once the allowance is gone."""
        self.spent_steps += steps
        if self.steps_left is not None:
            self.steps_left -= steps
            if self.steps_left < 0:
                return False
        return self.deadline is None or self.clock() < self.deadline


def check_linearizable(
    source: History | Iterable[Operation],
    model: Model | None = None,
    *,
    fs: Iterable[str] | None = None,
    time_limit: float | None = DEFAULT_TIME_LIMIT_S,
    max_steps: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> CheckResult:
    """Whether the operations (those whose f is in `fs`, default: all) are linearizable.

    `model` defaults to a Register starting at None. Keys are checked independently, the
    smallest first. valid is False on the first key found not linearizable, "unknown" when
    the step or time limit ran out before every key was decided, True otherwise.
    """
    model = model or Register()
    ops = as_operations(source)
    origin = origin_of(ops)
    wanted = None if fs is None else set(fs)
    by_key: dict[Any, list[Operation]] = defaultdict(list)
    for op in ops:
        if wanted is None or op.f in wanted:
            by_key[_key(op.key)].append(op)
    budget = _Budget(time_limit, max_steps, clock)
    undecided = []
    for key, key_ops in sorted(by_key.items(), key=lambda item: len(item[1])):
        usable = model.reduce([op for op in key_ops if op.status != FAIL])
        bad = model.impossible(usable)
        if bad is not None:
            return _impossible(key, usable, bad, model, origin)
        outcome = _search(usable, model, budget)
        if outcome.valid is False:
            return _failure(key, usable, outcome, model, origin, budget)
        if outcome.valid == UNKNOWN:
            undecided.append(key)
    if undecided:
        text = (f"the search ran out of its limits ({budget.spent_steps} steps) before deciding "
                f"{len(undecided)} of {len(by_key)} keys, e.g. {undecided[0]!r}; no violation "
                "was found, which is not a pass")
        return CheckResult(CHECKER, UNKNOWN, text, details={"undecided_keys": undecided})
    text = f"{len(by_key)} keys, {len(ops)} operations linearizable against the {model.name}"
    return CheckResult(CHECKER, True, text, details={"steps": budget.spent_steps})


def _key(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def _build_list(ops: list[Operation]) -> tuple[list[int], list[int], list[int], list[float]]:
    """The entry list: nodes 1..2n after head 0; node 2i+1 calls op i, node 2i+2 returns it."""
    entries: list[tuple[float, int, int]] = []
    for i, op in enumerate(ops):
        end = _INF if op.status == INFO else op.complete_time
        entries.append((op.invoke_time, 0, 2 * i + 1))
        entries.append((_INF if end is None else end, 1, 2 * i + 2))
    entries.sort()
    size = 2 * len(ops) + 1
    nxt, prv, pos = [_NIL] * size, [_NIL] * size, [0] * size
    at: list[float] = [0.0] * size
    last = 0
    for order, (when, _, node) in enumerate(entries, start=1):
        nxt[last], prv[node], pos[node], at[node] = node, last, order, when
        last = node
    return nxt, prv, pos, at


def _search(ops: list[Operation], model: Model, budget: _Budget) -> _Outcome:
    nxt, prv, pos, at = _build_list(ops)

    def lift(call: int) -> None:
        for node in (call, call + 1):
            nxt[prv[node]] = nxt[node]
            if nxt[node] != _NIL:
                prv[nxt[node]] = prv[node]

    def unlift(call: int) -> None:
        for node in (call + 1, call):
            nxt[prv[node]] = node
            if nxt[node] != _NIL:
                prv[nxt[node]] = node

    seen: set[tuple[int, Hashable]] = set()
    stack: list[tuple[int, Hashable]] = []
    state, linearized, steps = model.init(), 0, 0
    best = _Outcome(False, 0)
    best_pos = -1
    entry = nxt[0]
    while entry != _NIL:
        steps += 1
        if steps % CLOCK_EVERY_STEPS == 0 and not budget.spend(CLOCK_EVERY_STEPS):
            return _Outcome(UNKNOWN, steps)
        index = (entry - 1) // 2
        if entry % 2 == 1:  # a call: try to linearize its operation now
            legal, after = model.step(state, ops[index])
            if legal:
                memo = (linearized | (1 << index), after)
                if memo not in seen:
                    seen.add(memo)
                    stack.append((entry, state))
                    state, linearized = after, memo[0]
                    lift(entry)
                    entry = nxt[0]
                    continue
            entry = nxt[entry]
            continue
        if at[entry] == _INF:  # only info operations remain: leave them out
            break
        if pos[entry] > best_pos:
            best_pos = pos[entry]
            best = _Outcome(False, 0, index, tuple((c - 1) // 2 for c, _ in stack), (state,))
        elif pos[entry] == best_pos and len(best.states) < MAX_STATES_SHOWN \
                and state not in best.states:
            best.states += (state,)
        if not stack:
            budget.spend(steps % CLOCK_EVERY_STEPS)
            best.steps = steps
            return best
        entry, state = stack.pop()
        linearized &= ~(1 << ((entry - 1) // 2))
        unlift(entry)
        entry = nxt[entry]
    budget.spend(steps % CLOCK_EVERY_STEPS)
    return _Outcome(True, steps)


def _impossible(key: Any, usable: list[Operation], bad: Operation, model: Model,
                origin: int) -> CheckResult:
    writes = [op for op in usable if op.f != "read" and op.id != bad.id
              and op.invoke_time <= (bad.complete_time or 0)]
    window = sorted([*writes[-PREFIX_CONTEXT_OPS:], bad], key=lambda op: (op.invoke_time, op.id))
    text = (f"key {key!r}: operation {bad.id} ({bad.f} {bad.value!r} -> {bad.result!r} by "
            f"{bad.process!r}) saw {_short(repr(_observed(bad)))}, which is neither the "
            f"{model.name}'s initial value nor written by any operation invoked before it "
            "completed")
    details = {"key": key, "blocked_op": bad.id, "longest_prefix": None, "states": None}
    return CheckResult(CHECKER, False, text, tuple(window), details, origin)


def _failure(key: Any, usable: list[Operation], outcome: _Outcome, model: Model,
             origin: int, budget: _Budget) -> CheckResult:
    blocked = usable[outcome.blocked_op]
    prefix = [usable[i] for i in outcome.prefix]
    in_prefix = {op.id for op in prefix}
    concurrent = [op for op in usable
                  if op.id != blocked.id and op.id not in in_prefix and _overlaps(op, blocked)]
    context = prefix[-PREFIX_CONTEXT_OPS:]
    last_change = next((op for op in reversed(prefix) if op.f != "read"), None)
    if last_change is not None and last_change not in context:
        context.insert(0, last_change)
    window = {op.id: op for op in context}
    window.update({op.id: op for op in concurrent[:MAX_CONCURRENT_SHOWN]})
    window[blocked.id] = blocked
    states = ", ".join(_short(repr(state)) for state in outcome.states)
    tail = ", ".join(str(op.id) for op in context) or "nothing"
    text = (f"key {key!r}: operation {blocked.id} ({blocked.f} {blocked.value!r} -> "
            f"{blocked.result!r} by {blocked.process!r}) cannot be linearized: the longest "
            f"linearizable prefix has {len(prefix)} operations (its last state change and "
            f"last operations: {tail}), after which the {model.name} may hold {states}; "
            f"{len(concurrent)} other operations were pending around it")
    details = {
        "key": key,
        "blocked_op": blocked.id,
        "longest_prefix": [op.id for op in prefix],
        "states": list(outcome.states),
        "steps": budget.spent_steps,
    }
    window_ops = tuple(sorted(window.values(), key=lambda op: (op.invoke_time, op.id)))
    return CheckResult(CHECKER, False, text, window_ops, details, origin)


def _overlaps(op: Operation, other: Operation) -> bool:
    other_end = _INF if other.known_end is None else other.known_end
    op_end = _INF if op.known_end is None else op.known_end
    return op.invoke_time <= other_end and other.invoke_time <= op_end


def _short(text: str) -> str:
    return text if len(text) <= MAX_STATE_CHARS else text[: MAX_STATE_CHARS - 3] + "..."


def _pair(value: Any) -> tuple[Any, Any]:
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise ValueError(ERR_CAS_VALUE.format(value=value))
    return value[0], value[1]
