"""Ketama continuum, pure-Python reference: the twin of native._ketama.

The rules (libmemcached's MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED, as uhashring computes them):

- A server is named `host` when its port is 11211 and `host:port` otherwise (`server_name`).
- Server i of n, weight w_i, total weight W, gets `40 * n * w_i // W` digests (`digest_counts`):
  40 per server at equal weights. The digests are md5(f"{name}-{j}") for j = 0, 1, ...
- Each 16-byte digest gives 4 points: bytes 4k..4k+3 read little-endian, k = 0..3. So 160
  points per server at equal weights (`server_points`).
- A key's hash is the first 4 bytes of md5(key), little-endian (`key_hash`).
- A key belongs to the first point at or after its hash, wrapping to the first point past the
  top (`Continuum.lookup`): the binary search of libmemcached, twemproxy and libketama.
- Two servers can draw the same point (md5 truncated to 32 bits). The server later in the list
  owns it, as in uhashring; libmemcached leaves the order of equal points to qsort.

Where the references disagree, and what we do:
- uhashring bisects to the first point *after* the hash; everyone else takes the first point
  *at or after* it. Only a key whose hash equals a point exactly (odds ~ points / 2**32) can
  land differently; we follow libmemcached.
- libmemcached computes the digest count in float32, `floor(w/W * 160 / 4 * n + 1e-10)`, which
  comes out one short for some pools (25 equal servers: 39 digests; 5 servers of total weight
  25: 7 for weight 1). We use the exact integer formula, as uhashring does. Pools of at most
  24 equal-weight servers get the same count either way.

`Continuum` is the hot path: a sorted array of distinct points with their owners, searched
per key. Building (md5 of the server names, sorting) happens once per pool change, here only.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from hashlib import md5

DEFAULT_PORT = 11211
DIGESTS_PER_SERVER = 40  # at weight 1 in an equal-weight pool
POINTS_PER_DIGEST = 4
POINT_MAX = 0xFFFFFFFF


def server_name(host: str, port: int) -> str:
    """The string ketama hashes for a server: "host" on port 11211, else "host:port"."""
    return host if port == DEFAULT_PORT else f"{host}:{port}"


def key_hash(key: bytes) -> int:
    """First 4 bytes of md5(key), little-endian: the key's position on the continuum."""
    if not isinstance(key, bytes):
        raise TypeError(f"key must be bytes, not {type(key).__name__}")
    return int.from_bytes(md5(key).digest()[:4], "little")


def digest_counts(weights: Sequence[int]) -> list[int]:
    """Digests per server: `40 * n * w // sum(weights)` for each weight w (all weights >= 1)."""
    if any(w < 1 for w in weights):
        raise ValueError("weights must be >= 1")
    n, total = len(weights), sum(weights)
    return [DIGESTS_PER_SERVER * n * w // total for w in weights]


def server_points(name: str, digests: int) -> list[int]:
    """The 4 * digests points of one server, in generation order (not sorted)."""
    points: list[int] = []
    for j in range(digests):
        digest = md5(f"{name}-{j}".encode()).digest()
        points.extend(int.from_bytes(digest[4 * k : 4 * k + 4], "little") for k in range(4))
    return points


def build(names: Sequence[str], weights: Sequence[int]) -> tuple[list[int], list[int]]:
    """Sorted distinct points and their owners (indexes into names) for a pool.

    A point drawn by several servers belongs to the last of them in `names` order.
    """
    if len(names) != len(weights):
        raise ValueError("one weight per name")
    owner_of: dict[int, int] = {}
    for index, (name, count) in enumerate(zip(names, digest_counts(weights), strict=True)):
        for point in server_points(name, count):
            owner_of[point] = index
    points = sorted(owner_of)
    return points, [owner_of[p] for p in points]


class Continuum:
    """Sorted distinct points, each owned by a server index; lookups by key or by hash.

    Invariants: `points` strictly ascending within [0, 2**32); `owners[i] >= 0` owns points[i].
    An empty continuum raises LookupError on every lookup.
    """

    __slots__ = ("_points", "_owners", "_servers")

    def __init__(self, points: Sequence[int], owners: Sequence[int]) -> None:
        if len(points) != len(owners):
            raise ValueError("points and owners differ in length")
        previous = -1
        for point, owner in zip(points, owners, strict=True):
            if not previous < point <= POINT_MAX:
                raise ValueError("points must be strictly ascending 32-bit values")
            if owner < 0:
                raise ValueError("owners must be >= 0")
            previous = point
        self._points = list(points)
        self._owners = list(owners)
        self._servers = len(set(self._owners))

    def __len__(self) -> int:
        return len(self._points)

    @property
    def servers(self) -> int:
        """How many distinct owners hold at least one point."""
        return self._servers

    def _index(self, hash_value: int) -> int:
        if not self._points:
            raise LookupError("empty continuum")
        index = bisect_left(self._points, hash_value)
        return 0 if index == len(self._points) else index

    def lookup_hash(self, hash_value: int) -> int:
        """Owner of the first point >= hash_value, wrapping around (0 <= hash_value < 2**32)."""
        if not 0 <= hash_value <= POINT_MAX:
            raise ValueError("hash must be a 32-bit unsigned value")
        return self._owners[self._index(hash_value)]

    def lookup(self, key: bytes) -> int:
        """Owner of `key`: `lookup_hash(key_hash(key))`."""
        return self._owners[self._index(key_hash(key))]

    def lookup_many(self, keys: Iterable[bytes]) -> list[int]:
        """`[lookup(k) for k in keys]`."""
        return [self._owners[self._index(key_hash(k))] for k in keys]

    def successors(self, key: bytes, n: int) -> list[int]:
        """The first min(n, servers) distinct owners met walking the ring from key's point."""
        if n < 0:
            raise ValueError("n must be >= 0")
        start = self._index(key_hash(key))
        want = min(n, self._servers)
        found: list[int] = []
        size = len(self._owners)
        i = start
        while len(found) < want:
            owner = self._owners[i]
            if owner not in found:
                found.append(owner)
            i = i + 1 if i + 1 < size else 0
        return found
