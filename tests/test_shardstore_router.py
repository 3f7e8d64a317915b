"""`shardstore router`: its plan (shardstore/router_plan.py, sans I/O, hypothesis) and the
router itself in front of three live nodes (three shards of one replica, so most keys
need another node than the first one asked), driven by redis-py's plain `redis.Redis`
(RESP3) and by `redis-cli`: keys over every slot, MGET/MSET/DEL/EXISTS split across
shards and put back in order, pipelines answered in order, MOVED followed after the
router's map was spoiled, range tables read across shards in key order, and a clear
error once a shard's only node is gone."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import redis.asyncio as aredis
from hypothesis import given
from hypothesis import strategies as st

from core.command_table import Command
from core.daemon import ConfigError
from core.resp import OK, CommandError
from core.resp_server import RespServer
from core.resp_session import Session
from native.crc16 import key_slot
from shardstore import commands, router_cli
from shardstore.__main__ import main as shardstore_main
from shardstore.router import Router, RouterOptions
from shardstore.router_plan import SHARD, SLOT, RouteMap, assemble, plan
from tests.conftest import find_free_port
from tests.shardstore_procs import LoopCluster
from tests.test_shardstore_tables import _ready

ROOT = Path(__file__).resolve().parent.parent
READY_S = 30.0
ROWS = {row.name.upper(): row for row in commands.COMMANDS}


def _routes() -> RouteMap:
    routes = RouteMap()
    routes.load_slots([[0, 8191, [b"127.0.0.1", 1, b"n1", {}]],
                       [8192, 16383, [b"127.0.0.1", 2, b"n2", {}]]])
    routes.load_tables([[b"name", b"orders", b"keyspace", b"default", b"rule", b"RANGE",
                         b"kind", b"DATE", b"epoch", 0,
                         b"ranges", [[b"-", b"2026-12", 1, [b"127.0.0.1:1"], -1],
                                     [b"2026-12", b"+", 2, [b"127.0.0.1:2"], 5]]]])
    return routes


def test_the_plan_splits_multi_key_commands_by_target() -> None:
    routes = _routes()
    assert routes.masters == ["127.0.0.1:1", "127.0.0.1:2"]
    assert routes.catalog.tables["orders"].splits == [20261200]
    keys = [b"a", b"b", b"orders:2026-11-01", b"orders:2026-12-01"]
    parts = plan(ROWS["MGET"], [b"MGET", *keys], routes)
    assert [p.target for p in parts] == [(SLOT, key_slot(b"a")), (SLOT, key_slot(b"b")),
                                         (SHARD, 1), (SHARD, 2)]
    assert assemble(ROWS["MGET"], parts, [[b"1"], [b"2"], [b"3"], [None]]) == [
        b"1", b"2", b"3", None]
    mset = plan(ROWS["MSET"], [b"MSET", b"a", b"1", b"orders:2026-12-01", b"2"], routes)
    assert [p.args for p in mset] == [[b"MSET", b"a", b"1"],
                                      [b"MSET", b"orders:2026-12-01", b"2"]]
    assert routes.address((SHARD, 2)) == "127.0.0.1:2"
    dels = plan(ROWS["DEL"], [b"DEL", b"a", b"b"], routes)
    assert assemble(ROWS["DEL"], dels, [1, 0]) == 1
    with pytest.raises(CommandError, match="no date after the prefix"):
        plan(ROWS["GET"], [b"GET", b"orders:x"], routes)


@given(st.lists(st.binary(min_size=1, max_size=6), min_size=1, max_size=30))
def test_mget_parts_put_back_in_request_order(keys: list[bytes]) -> None:
    routes = _routes()
    parts = plan(ROWS["MGET"], [b"MGET", *keys], routes)
    replies = [p.args[1:] for p in parts]  # each part answers its own keys
    assert assemble(ROWS["MGET"], parts, replies) == keys


REPLIES = st.recursive(st.one_of(st.none(), st.integers(-5, 20000), st.binary(max_size=12),
                                  st.sampled_from([b"-", b"+", b"2026-12", b"DATE", b"RANGE",
                                                   b"name", b"ranges"])),
                        lambda inner: st.lists(inner, max_size=6), max_leaves=30)


@given(REPLIES)
def test_route_map_parsers_take_any_reply(reply: object) -> None:
    routes = RouteMap()
    for load in (routes.load_slots, lambda r: routes.load_tables([r])):
        try:
            load(reply)
        except ValueError as exc:
            assert "not understood" in str(exc) or "not a point" in str(exc) or "ERR" in str(
                exc)


@given(st.text(max_size=24))
def test_router_addresses_are_checked(text: str) -> None:
    try:
        host, port = router_cli._address(text)
    except ConfigError as exc:
        assert "not HOST:PORT" in str(exc)
        return
    assert host and 0 < port < 65536


def test_router_command_line_refuses_what_cannot_work(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    assert shardstore_main(["router", "--nodes", "nowhere"]) == 2
    assert "not HOST:PORT: 'nowhere'" in capsys.readouterr().err
    assert router_cli.DEFAULT_ROUTER_PORT == 7690


# -- scripted nodes: what phase-1 nodes never send ------------------------------------------

class ScriptedNode:
    """A RESP server that claims every slot for `owner` and answers GET/SET by script:
    `ask` sends GET elsewhere with -ASK (served there only after ASKING), `tryagain`
    answers that many -TRYAGAIN first, SET never answers (a write whose outcome is lost)."""

    def __init__(self) -> None:
        self.owner = ""
        self.ask = ""
        self.tryagain = 0
        slots = Command("SLOTS", lambda s, a: [[0, 16383, [*self._host_port(), b"x", {}]]], 2)
        self.server = RespServer("scripted", "0", [
            Command("CLUSTER", None, -2, subcommands=(slots,)),
            Command("TABLE.LIST", lambda s, a: [], 1),
            Command("ASKING", self._asking, 1),
            Command("GET", self._get, 2),
            Command("SET", self._set, -3),
        ])

    def _host_port(self) -> list[object]:
        host, _, port = self.owner.rpartition(":")
        return [host.encode(), int(port)]

    def _asking(self, session: Session, args: list[bytes]) -> object:
        session.asking = True  # type: ignore[attr-defined]
        return OK

    def _get(self, session: Session, args: list[bytes]) -> object:
        if self.ask:
            raise CommandError(f"ASK {key_slot(args[1])} {self.ask}")
        if self.tryagain:
            self.tryagain -= 1
            raise CommandError("TRYAGAIN no leader yet")
        if not getattr(session, "asking", False) and args[1] == b"asked":
            raise CommandError(f"MOVED {key_slot(args[1])} {self.owner}")
        return b"value of " + args[1]

    async def _set(self, session: Session, args: list[bytes]) -> object:
        await asyncio.sleep(30)
        return OK


def test_router_follows_ask_retries_tryagain_and_never_resends_a_lost_write() -> None:
    async def main() -> None:
        first, second = ScriptedNode(), ScriptedNode()
        await first.server.start("127.0.0.1", 0)
        await second.server.start("127.0.0.1", 0)
        a, b = (f"127.0.0.1:{n.server.port}" for n in (first, second))
        first.owner = second.owner = a
        first.ask = b
        router = Router(RouterOptions([a], timeout_s=0.5, deadline_s=3.0))
        await router.start("127.0.0.1", 0)
        client = aredis.Redis(port=router.server.port, protocol=3)
        try:
            assert await client.get("asked") == b"value of asked"
            assert router.figures["ask"] == 1
            first.ask, first.tryagain = "", 2
            assert await client.get("k") == b"value of k"
            assert router.figures["retries"] >= 2
            with pytest.raises(redis.ResponseError, match="^UNKNOWN router: .*outcome is unknown"):
                await client.set("k", "v")
        finally:
            await client.aclose()
            await router.stop()
            await first.server.stop(grace=0)
            await second.server.stop(grace=0)

    asyncio.run(main())


# -- live -----------------------------------------------------------------------------------

async def _check_keys(client: aredis.Redis, router: Router) -> None:
    keys = [f"key:{i}" for i in range(60)]
    for key in keys:
        assert await client.set(key, key)
    assert await client.get("key:7") == b"key:7"
    assert await client.mget(keys) == [k.encode() for k in keys]
    assert await client.mset({f"m:{i}": str(i) for i in range(20)})
    assert await client.exists(*[f"m:{i}" for i in range(20)], "nope") == 20
    assert await client.delete(*[f"m:{i}" for i in range(10)]) == 10
    assert await client.mget("m:0", "m:15") == [None, b"15"]
    assert await client.hset("h", mapping={"f": "1", "g": "2"}) == 2
    assert await client.hgetall("h") == {b"f": b"1", b"g": b"2"}
    assert await client.dbsize() == 60 + 10 + 1
    pipe = client.pipeline(transaction=False)
    for i in range(40):
        pipe.incr(f"counter:{i % 7}")
    assert await pipe.execute() == [i // 7 + 1 for i in range(40)]
    seen = [k async for k in client.scan_iter(count=50)]
    assert len(seen) == len(set(seen)) == 60 + 10 + 1 + 7
    wrong = {router.routes.slots[key_slot(b"key:1")]} ^ set(router.routes.masters)
    router.routes.slots[key_slot(b"key:1")] = sorted(wrong)[0]  # a stale map
    assert await client.get("key:1") == b"key:1"
    assert router.figures["moved"] >= 1


async def _check_range_table(client: aredis.Redis, router: Router,
                             cluster: LoopCluster) -> None:
    assert await client.execute_command(
        "TABLE.CREATE", "orders", "RANGE", "DATE", "SPLITS", "2026-11", "2026-12",
        "SHARDS", "1", "2", "3") == b"OK"
    deadline = time.monotonic() + READY_S  # the node that took it applied it; the others soon
    while not all("orders" in n.config_machine.catalog.tables for n in cluster.nodes):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    rows = [f"orders:2026-{m}-{d:02d}:{i}" for m in (10, 11, 12) for d in (3, 17)
            for i in range(2)]
    assert await client.mset(dict.fromkeys(rows, "o"))
    assert await client.mget(rows) == [b"o"] * len(rows)
    everything = await client.execute_command("TABLE.RANGE", "orders", "-", "+")
    assert everything == sorted(r.encode() for r in rows)
    touched = router.figures["range_shards_touched"]
    december = await client.execute_command("TABLE.RANGE", "orders", "2026-12", "2027-01")
    assert december == sorted(r.encode() for r in rows if "2026-12" in r)
    assert router.figures["range_shards_touched"] == touched + 1  # one month, one shard
    assert await client.execute_command("TABLE.RANGE", "orders", "2026-10-10", "2026-11-20",
                                        "COUNT", "3") == sorted(
        r.encode() for r in rows if "10-17" in r or "11-03" in r)[:3]
    assert isinstance(await client.execute_command("TABLE.SPLIT", "orders", "2027-01",
                                                   "SHARD", "1"), int)  # a move's id
    deadline = time.monotonic() + READY_S
    while 20270100 not in router.routes.catalog.tables["orders"].splits:  # the move ends
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
        await router.refresh()
    assert await client.set("orders:2027-01-05:1", "n")
    assert (await client.info("router"))["range_reads"] == 3


async def _check_redis_cli(port: int) -> None:
    cli = shutil.which("redis-cli")
    if cli is None:
        return
    for words, expected in ((["MSET", "cli:a", "1", "cli:b", "2"], "OK"),
                            (["MGET", "cli:a", "cli:b", "cli:c"], "1\n2\n\n"),
                            (["GET", "orders:2026-12-03:0"], "o")):
        proc = await asyncio.create_subprocess_exec(
            cli, "-p", str(port), *words, stdout=subprocess.PIPE)
        out, _ = await proc.communicate()
        assert out.decode().strip("\n") == expected.strip("\n"), words


async def _check_process(seed: str) -> None:
    """`python -m shardstore router` as a process: serves, and stops cleanly on SIGTERM."""
    port = find_free_port("127.0.0.1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shardstore", "router", "--listen", f"127.0.0.1:{port}",
        "--nodes", seed, cwd=ROOT, stderr=subprocess.PIPE)
    client = aredis.Redis(port=port)
    try:
        deadline = time.monotonic() + READY_S
        while True:
            try:
                assert await client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline and proc.returncode is None
                await asyncio.sleep(0.1)
        assert await client.set("proc:key", "1")
        assert await client.mget("proc:key", "key:3") == [b"1", b"key:3"]
    finally:
        await client.aclose()
        proc.send_signal(signal.SIGTERM)
        _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"shardstore router ready on 127.0.0.1:" in err


async def _check_unreachable(cluster: LoopCluster, client: aredis.Redis) -> None:
    victim = next(n for n in cluster.nodes if 3 in n.machines)
    await victim.stop()
    cluster.nodes.remove(victim)
    with pytest.raises(redis.ResponseError, match="router: .* did not answer within"):
        await client.get("orders:2026-12-03:0")


def test_router_in_front_of_three_nodes(tmp_path: Path) -> None:
    async def main() -> None:
        cluster = LoopCluster(tmp_path, shards=3, replicas=1)
        await cluster.start()
        router = None
        try:
            await _ready(cluster)
            seeds = [cluster.nodes[0].settings.advertise]
            router = Router(RouterOptions(seeds, deadline_s=1.5))
            await router.start("127.0.0.1", find_free_port("127.0.0.1"))
            client = aredis.Redis(port=router.server.port, protocol=3)
            await _check_keys(client, router)
            await _check_range_table(client, router, cluster)
            await _check_redis_cli(router.server.port)
            await _check_process(seeds[0])
            await _check_unreachable(cluster, client)
            await client.aclose()
        finally:
            if router is not None:
                await router.stop()
            await cluster.stop()

    asyncio.run(main())


README_SENTENCES = [  # each checked by a test of this file (make run's router: reshard's)
    "`shardstore router` is one address for clients that are not cluster-aware (`make run` "
    "starts one on 7690 in front of `default`): it sends each single-key command to its "
    "shard, splits `MGET`, `MSET`, `DEL`, `EXISTS` and `UNLINK` across shards and puts the "
    "replies back in order, follows `MOVED` and `ASK`, reads `TABLE.RANGE` across shards in "
    "key order, and never sends a write again whose node was lost under it (the client gets "
    "`-UNKNOWN ...`).",
]


def test_the_readme_says_what_these_tests_show() -> None:
    text = " ".join((ROOT / "README.md").read_text().split())
    for sentence in README_SENTENCES:
        assert sentence in text, sentence
