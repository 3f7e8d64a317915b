"""The pipeline lane (kvcache/mcpipe_pure.py and its compiled twin kvcache/_mcpipe.pyx).

- Examples: a pipeline of simple commands answered in one write; a read holding anything
  else handed on whole; a read ending inside a command answered up to it.
- Hypothesis: both twins' `pipeline` (over either storage twin) give the same replies,
  consume the same bytes and leave the same cache and counters on random reads of simple and
  other commands.
- Hypothesis: however a stream is cut into reads, a lane (either twin) in front of the request
  loop writes and counts what the loop alone does, the loop's write points (which release the
  items a pipeline pinned) included.
- Live: pipelines of simple commands, each sent in one write, answered byte for byte as the
  real memcached answers them (tests/test_kvcache_differential.py's masking).
"""

from __future__ import annotations

import importlib
import random
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvcache import mcpipe_pure, mcproto_pure, storage_pure
from kvcache.commands import FLUSH_AFTER, execute
from kvcache.engine import Engine, Stream
from kvcache.items import STALE, Mode
from kvcache.settings import Settings
from kvcache.storage import Storage
from tests.kvcache_wire import Memcached, masked, reference_missing, request
from tests.procs import kvcache_daemon

ITEM_SIZE_MAX = 1024 * 1024
NOW = 1_750_000_000
VALUE_MAX = ITEM_SIZE_MAX - 400
BIG = b"b" * (200 * 1024)
WRITE_FLUSH_BYTES = 256 * 1024  # kvcache/server.py's


def _import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


NATIVE_PIPE = _import("kvcache._mcpipe")
NATIVE_PROTO = _import("kvcache._mcproto")
needs_native = pytest.mark.skipif(NATIVE_PIPE is None or NATIVE_PROTO is None,
                                  reason="kvcache's extensions are not built (make native)")
PIPES = [pytest.param(mcpipe_pure, id="pure"),
         pytest.param(NATIVE_PIPE, id="native", marks=needs_native)]


def _storage(kind: Any = Storage) -> Any:
    storage = kind(4 << 20, ITEM_SIZE_MAX, NOW)
    storage.store(Mode.SET, b"k", b"value", 3, 0)
    storage.store(Mode.SET, b"n", b"41", 0, NOW + 100)
    storage.store(Mode.SET, b"big", BIG, 0, 0)
    storage.store(Mode.SET, b"old", b"gone", 0, NOW - 1)  # expired
    storage.store(Mode.SET, b"s", b"stale", 0, 0)
    storage.invalidate(storage.find(b"s"), None)
    assert storage.find(b"s").casbits & STALE
    return storage


def _state(storage: Storage) -> tuple[object, ...]:
    stats = storage.stats
    slab = stats.slab
    return (stats.get_cmds, stats.get_misses, stats.get_expired, stats.touch_cmds,
            stats.incr_misses, stats.decr_misses, list(slab.get_hits), list(slab.set_cmds),
            list(slab.touch_hits), list(slab.incr_hits), list(slab.decr_hits),
            list(slab.hits_to_hot), list(slab.hits_to_warm), list(slab.hits_to_cold),
            sorted((i.key, i.value, i.flags, i.exptime, i.casbits) for i in storage.items()))


@pytest.mark.parametrize("pipe", PIPES)
def test_a_meta_pipeline_in_one_reply(pipe: ModuleType) -> None:
    storage = _storage()
    pinned: set[Any] = set()
    data = (b"mg k v f t c s k O12\r\nms m 2 T0 F7 k O9\r\nhi\r\nmg m v f q\r\nmg nope v k O1\r\n"
            b"mg nope q\r\nincr n 2\r\ndecr n 50 noreply\r\nset a 0 0 1 noreply\r\nx\r\n"
            b"mg s k\r\nmg n T100 t v\r\n")
    parts, size, consumed = pipe.pipeline(data, storage, pinned, VALUE_MAX, 20)
    cas = storage.find(b"k").cas
    assert consumed == len(data)
    assert size == len(b"".join(parts))
    assert b"".join(parts) == (
        b"VA 5 f3 t-1 c%d s5 kk O12\r\nvalue\r\nHD km O9\r\nVA 2 f7\r\nhi\r\n"
        b"EN knope O1\r\n43\r\nHD ks X W\r\nVA 2 t100\r\n0 \r\n" % cas)
    assert len(pinned) == 4  # the mg hits since the last write point
    assert storage.stats.touch_cmds == 1


@pytest.mark.parametrize("pipe", PIPES)
def test_anything_else_leaves_the_read_to_the_loop(pipe: ModuleType) -> None:
    storage = _storage()
    before = _state(storage)
    for data in (b"get k\r\nversion\r\n", b"mg k v\r\nmg k b\r\n", b"mg k v v\r\n",
                 b"set a 0 0 1\r\nxy\r\n", b"incr n -1\r\n", b"ms k 1 c\r\nx\r\n",
                 b"get k\n", b"mg k " + b"x" * 3000 + b"\r\n", b"get k\r\n" + b"x" * 3000,
                 b"set a 0 0 5\r\n", b"get " + b"k " * 600 + b"\r\n", b"get big big\r\n"):
        assert pipe.pipeline(data, storage, set(), VALUE_MAX, 20) is None, data
    assert _state(storage) == before


@pytest.mark.parametrize("pipe", PIPES)
def test_a_read_ending_inside_a_command(pipe: ModuleType) -> None:
    storage = _storage()
    data = b"get k\r\nset a 0 0 3\r\nab"
    assert pipe.pipeline(data, storage, set(), VALUE_MAX, 20) == (
        [b"VALUE k 3 5\r\nvalue\r\nEND\r\n"], 25, 7)
    data = b"mn\r\nget big big\r\nmn\r\n"  # a reply the loop streams: from there on its
    assert pipe.pipeline(data, storage, set(), VALUE_MAX, 20) == ([b"MN\r\n"], 4, 4)
    data = b"get big\r\nset a 0 0 1 noreply\r\nx\r\nget k\r\n"  # long: gathered, not joined
    block = b"VALUE big 0 %d\r\n%s\r\nEND\r\n" % (len(BIG), BIG)
    assert pipe.pipeline(data, storage, set(), VALUE_MAX, 20) == (
        [block, b"VALUE k 3 5\r\nvalue\r\nEND\r\n"], len(block) + 25, len(data))


SIMPLE = [b"get k\r\n", b"get k miss old k\r\n", b"gets k n\r\n", b"get  k  n \r\n",
          b"set k 5 0 3\r\nabc\r\n", b"set n 0 0 1 noreply\r\n7\r\n", b"set t 0 0 2\r\n12\r\n",
          b"mn\r\n", b"incr n 1\r\n", b"decr n 3\r\n", b"incr k 1\r\n", b"incr miss 1\r\n",
          b"decr t 1 noreply\r\n", b"mg k v\r\n", b"mg n v f t c s k O7 q\r\n",
          b"mg miss k O3\r\n", b"mg miss v q\r\n", b"mg n T50 t\r\n", b"mg k u v\r\n",
          b"mg s v c\r\n", b"mg t v\r\n", b"ms k 2 T0 F9\r\nzz\r\n", b"ms m 1 q k O5\r\nq\r\n",
          b"ms n 2 T100\r\n99\r\n", b"get big k\r\n", b"incr t 10\r\n", b"md t\r\n",
          b"md miss q O4 k\r\n", b"md k q\r\n", b"ma n\r\n", b"ma n D5 MD v t c O2 k\r\n",
          b"ma miss k\r\n", b"ma k v\r\n", b"ma n M+ q\r\n", b"ma t D100 M- v\r\n"]
OTHER = [b"version\r\n", b"get big big\r\n", b"mg k b\r\n", b"ma n\r\n", b"md t q\r\n",
         b"set k 0 0 1\r\nxyz\r\n", b"touch k 10\r\n", b"get k\n", b"incr n -2\r\n",
         b"mg k v v\r\n", b"ms k 1 I\r\nx\r\n", b"gat 10 k\r\n", b"mg k t T9 v\r\n",
         b"ma n N0\r\n", b"md k C5\r\n", b"ma n Mx\r\n", b"ma n MI MD\r\n", b"md k I\r\n"]
commands = st.lists(st.one_of(st.sampled_from(SIMPLE), st.sampled_from(OTHER)),
                    min_size=1, max_size=8)


@needs_native
@settings(max_examples=120, deadline=None)
@given(stream=commands, cut=st.integers(min_value=0))
def test_twins_agree(stream: list[bytes], cut: int) -> None:
    data = b"".join(stream)
    data = data[:len(data) - cut % 8]
    seen = []
    for pipe, kind in ((mcpipe_pure, storage_pure.Storage), (NATIVE_PIPE, Storage),
                       (NATIVE_PIPE, storage_pure.Storage)):
        storage = _storage(kind)
        pinned: set[Any] = set()
        outcome = pipe.pipeline(data, storage, pinned, VALUE_MAX, 3)
        seen.append((outcome, len(pinned), _state(storage)))
    assert seen[0] == seen[1] == seen[2]


class Loop:
    """A lane (the `proto` twin) in front of kvcache/server.py's request loop, without
    sockets: replies queued, written when the input runs dry, at WRITE_FLUSH_BYTES and per
    stream piece; the pinned items released at the loop's write points. `lane=False`: the
    loop alone."""

    def __init__(self, proto: ModuleType, lane: bool, reqs_per_event: int) -> None:
        self.storage = _storage()
        self.settings = Settings(item_size_max=ITEM_SIZE_MAX, reqs_per_event=reqs_per_event)
        self.engine = Engine(self.storage, self.settings)
        self.pinned: set[Any] = self.engine.pinned
        self.parser = proto.RequestParser(ITEM_SIZE_MAX)
        self.written: list[bytes] = []
        self.lane = proto.Lane(self.parser, self.storage, self.settings, self.pinned, self.read)
        self.lane.attach(self)
        self.lane.open = lane

    def write(self, data: bytes) -> None:  # the transport's
        self.written.append(data)

    def writelines(self, parts: list[bytes]) -> None:
        self.written.append(b"".join(parts))

    def is_closing(self) -> bool:
        return False

    def read(self, data: bytes) -> None:
        self.storage.stats.bytes_read += len(data)
        self.parser.feed(data)
        out: list[bytes] = []
        count = 0
        while (request := self.parser.next_request()) is not None:
            reply = execute(self.engine, request)
            if isinstance(reply, Stream):
                self._flush(out)
                out, count = [], 0
                for chunk in reply.chunks:
                    self.lane.send(chunk)
                continue
            out.append(reply)
            count += 1
            line = type(request) is list
            if count >= self.settings.reqs_per_event or (line and request
                                                         and request[0] in FLUSH_AFTER):
                count = 0
                self.pinned.clear()
            if sum(map(len, out)) >= WRITE_FLUSH_BYTES:
                self._flush(out)
                out = []
        self._flush(out)

    def _flush(self, out: list[bytes]) -> None:
        if any(out):
            self.lane.send(b"".join(out))

    def outcome(self) -> tuple[object, ...]:
        stats = self.storage.stats
        return (b"".join(self.written), stats.bytes_read, stats.bytes_written,
                _state(self.storage))


PROTOS = [mcproto_pure] + ([NATIVE_PROTO] if NATIVE_PROTO is not None else [])


@settings(max_examples=120, deadline=None)
@given(stream=commands, points=st.lists(st.integers(min_value=0), max_size=5),
       reqs_per_event=st.sampled_from([1, 2, 20]))
def test_split_reads_answer_as_the_request_loop_does(stream: list[bytes], points: list[int],
                                                     reqs_per_event: int) -> None:
    data = b"".join(stream)
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    reads = [data[a:b] for a, b in zip(edges, edges[1:], strict=False) if b > a]
    outcomes = []
    for proto, lane in [(mcproto_pure, False)] + [(p, True) for p in PROTOS]:
        loop = Loop(proto, lane, reqs_per_event)
        for read in reads:
            loop.lane.data_received(read)
        outcomes.append(loop.outcome())
    assert all(outcome == outcomes[0] for outcome in outcomes[1:])


# -- live, against the real memcached --------------------------------------------------------
SKIP_REASON = reference_missing()
FLAGS = ["-m", "64", "-I", "1m", "-t", "1", "-U", "0"]
PRELOAD = b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (k, len(v), v) for k, v in (
    (b"k", b"value"), (b"n", b"41"), (b"t", b"12"), (b"x", b"not a number")))
PIPELINES = {
    "meta": b"mg k v f t c s k O12\r\nms m 2 T0 F7 k O9\r\nhi\r\nmg m v f q\r\n"
            b"mg nope v k O1\r\nmg nope q\r\nmg k T100 t v\r\nmg k u s\r\nmn\r\n",
    "noreply": b"".join(b"set nr%d 0 0 3 noreply\r\nabc\r\n" % i for i in range(50)) +
               b"get nr0 nr49 nope\r\nmn\r\n",
    "counters": b"incr n 1\r\ndecr n 100\r\nincr n 18446744073709551615\r\nincr nope 1\r\n"
                b"decr x 1\r\nincr t 5 noreply\r\nget t n\r\n",
    "gets": b"gets k n nope\r\nget k\r\nset k 9 0 1\r\nz\r\nmg k v f c\r\n",
    "md-ma": b"ma n\r\nma n D5 MD v t c O2 k\r\nma nope k O1\r\nma x v\r\nma t M+ q\r\n"
             b"ma t v\r\nmd t O3 k\r\nmd t\r\nmd nope q\r\nmd k q\r\nget k t\r\n",
}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("pipe")
    real = Memcached(tmp, FLAGS).start()
    ours = kvcache_daemon(tmp, extra=FLAGS).start()
    yield (real.host, real.port), (ours.host, ours.port)
    real.stop()
    assert ours.stop() == 0, ours.log()


def _both(servers: Any, stream: bytes) -> tuple[bytes, bytes]:
    replies = []
    for host, port in servers:
        request(host, port, b"flush_all\r\n")
        request(host, port, PRELOAD)
        replies.append(request(host, port, stream))
    return replies[0], replies[1]


@pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")
@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_same_replies_as_memcached(servers: Any, name: str) -> None:
    expected, got = _both(servers, PIPELINES[name])
    assert masked(got) == masked(expected)


@pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")
def test_random_pipelines_as_memcached(servers: Any) -> None:
    rng = random.Random(14)
    live = [c for c in SIMPLE if b"big" not in c] + [b"version\r\n", b"md t q\r\n"]
    for _ in range(12):
        stream = b"".join(rng.choice(live) for _ in range(rng.randint(1, 12)))
        expected, got = _both(servers, stream)
        assert masked(got) == masked(expected), stream
