"""idgen's benchmark, section 5: distinct pipelined requests beside redis-server.

One raw socket (bench.idgen_loads `mixed`) keeps cycles of `NEXT`, `NEXT 2`, `PING`,
`NEXT 1`, `NEXT 3`, `NEXT 7` in flight, so the server never sees a run of identical
requests it could answer in one batch; redis-server gets `INCR`/`INCRBY n`/`PING`. Rounds
interleave idgen and redis. Each run is checked: every reply, every id unique across the
run, the runs of one server disjoint, and the server's own count of ids issued equal to
what the client received.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from bench.common import Figure, ServerProcess, idgen_server, median, progress, redis_server
from bench.idgen_loads import MIXED, MIXED_KEY
from bench.recorder import Recorder, _cpu_note, run_load

MIXED_GOAL = 0.5  # distinct pipelined requests, as redis-benchmark -P 16
MIXED_DEPTH = 3  # cycles of 6 distinct requests in flight: 18, about -P 16


def _issued(server: ServerProcess, is_redis: bool) -> int:
    """Ids the server has issued so far: the mixed counter, or idgen's ids_issued."""
    if is_redis:
        value = server.call("GET", MIXED_KEY)
        return int(value) if value is not None else 0  # type: ignore[call-overload]
    return int(server.info()["ids_issued"])


def run_mixed(server: ServerProcess, is_redis: bool, seconds: float,
              earlier: list[dict[str, Any]]) -> dict[str, Any]:
    """One mixed run; checks the server issued what the client received and that this
    run's ids lie after every earlier run's on the same server."""
    name = "redis" if is_redis else "idgen"
    before = _issued(server, is_redis)
    result = run_load("mixed", [server], host=server.host, port=server.port, server=name,
                      depth=MIXED_DEPTH, seconds=seconds)
    issued = _issued(server, is_redis) - before
    if issued != result["ids"]:
        raise RuntimeError(f"{server.name} issued {issued} ids, the client received "
                           f"{result['ids']}")
    if earlier and result["first_id"] <= max(r["last_id"] for r in earlier):
        raise RuntimeError(f"{server.name}: ids of this run overlap an earlier run's")
    return result


def section_mixed(rounds: int, seconds: float, rec: Recorder) -> None:
    """Section 5's rounds and its two figures (req/s, and req per server CPU-s)."""
    section = "5 distinct pipelined"
    rates: dict[str, list[float]] = {"idgen": [], "redis": []}
    cost: dict[str, list[float]] = {"idgen": [], "redis": []}
    done: dict[str, list[dict[str, Any]]] = {"idgen": [], "redis": []}
    with redis_server() as redis, idgen_server(1) as idgen:
        progress(f"5 started {idgen.name} and {redis.name}")
        for round_ in range(rounds):
            for server, is_redis in ((idgen, False), (redis, True)):
                name = "redis" if is_redis else "idgen"
                label = f"5 mixed round {round_ + 1}/{rounds} {name}"
                result = rec.attempt(section, label, partial(
                    run_mixed, server, is_redis, seconds, done[name]))
                if result is None:
                    continue
                done[name].append(result)
                rates[name].append(result["rps"])
                cpu = result["cpu"]
                cost[name].append(cpu["server_cores"][0] * cpu["wall_s"] / result["requests"]
                                  * 1e6)
                progress(f"{label}: {result['rps']:,.0f} req/s, {result['ids']:,} ids, all "
                         f"unique; {_cpu_note(result['cpu'])}")
    label = f"NEXT/NEXT n/PING mix, {MIXED_DEPTH * len(MIXED['idgen'])} in flight"
    rec.add(Figure(
        section, label, median(rates["idgen"]), "req/s", "redis INCR/INCRBY mix",
        median(rates["redis"]), MIXED_GOAL, f">= {MIXED_GOAL}x",
        detail={"idgen_rps": rates["idgen"], "redis_rps": rates["redis"]},
    ) if rates["idgen"] and rates["redis"] else None, section, label)
    label = "the same mix per server CPU-s"  # the client shares the machine's two cores
    rec.add(Figure(
        section, label, 1e6 / median(cost["idgen"]), "req/CPU-s", "redis",
        1e6 / median(cost["redis"]), None, "-",
        detail={"idgen_us_per_request": cost["idgen"], "redis_us_per_request": cost["redis"]},
    ) if cost["idgen"] and cost["redis"] else None, section, label)


