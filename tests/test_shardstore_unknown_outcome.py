"""A write whose outcome is unknown, as a Redis Cluster client sees it (found by the
consistency drill's review: tests/faults/shardstore_drill.py routes by itself for this).

shardstore/writes.py raises ProposalUnknown when a write may or may not have been applied
(a lost leader after sending, a timeout); shardstore/handlers.py answers it with
`-TRYAGAIN ...`. In Redis Cluster, TRYAGAIN means the command was not run, and redis-py's
RedisCluster (like other cluster clients) sends it again by itself: one INCR of the caller
can then be applied twice, though the caller saw one reply. Here one single-node daemon
runs in this loop, and its leader-side write is made to apply the command and then lose
the outcome once (what writes.py does when the connection to the leader drops after the
request went out). The reply was `-TRYAGAIN` until the drill's review found it; it is now
`-UNKNOWN ...`, an error the client hands to the caller instead of resending.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import redis
from redis.cluster import RedisCluster

from core.raft.driver_types import ProposalUnknown
from shardstore.server import ShardNode
from tests.shardstore_procs import SINGLE_HOST as HOST
from tests.shardstore_procs import single_node

KEY = "visits"


def lose_one_outcome(node: ShardNode) -> None:
    """The next write is applied, then its outcome is lost (ProposalUnknown), once."""
    real = node.writes.write
    lost = [False]

    async def write(group_id: int, args: list[bytes], ranged: bool = False) -> Any:
        result = await real(group_id, args, ranged)
        if not lost[0]:
            lost[0] = True
            raise ProposalUnknown("the connection to the leader dropped after sending (test)")
        return result

    node.writes.write = write  # type: ignore[method-assign]


def test_an_unknown_outcome_is_not_a_tryagain_that_clients_retry(tmp_path: Path) -> None:
    async def main() -> tuple[Any, Any]:
        node = await single_node(tmp_path)
        try:
            port = node.settings.listen[1]
            lose_one_outcome(node)

            def one_incr() -> tuple[Any, Any]:
                rc = RedisCluster(host=HOST, port=port)
                try:
                    try:
                        reply: Any = rc.incr(KEY)
                    except redis.RedisError as exc:
                        reply = exc
                    return reply, rc.get(KEY)
                finally:
                    rc.close()

            return await asyncio.to_thread(one_incr)
        finally:
            await node.stop()

    reply, stored = asyncio.run(main())
    # one INCR, applied once: the client got the error, and did not resend it
    assert isinstance(reply, redis.ResponseError), (reply, stored)
    assert str(reply).startswith("UNKNOWN the write may or may not have been applied"), reply
    assert stored == b"1", (reply, stored)


README_SENTENCE = ("A write whose outcome is unknown on a node (its shard's leader lost under "
                   "it) is answered `-UNKNOWN ...` too, never `-TRYAGAIN`, which Redis Cluster "
                   "clients resend by themselves.")


def test_the_readme_says_what_this_test_shows() -> None:
    readme = Path(__file__).resolve().parent.parent / "README.md"
    assert README_SENTENCE in " ".join(readme.read_text().split())
