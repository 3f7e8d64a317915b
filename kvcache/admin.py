"""The operator commands: stats, verbosity, shutdown, cache_memlimit, slabs, lru,
lru_crawler and watch, answered with memcached 1.6.18's words.

`slabs reassign` moves a page between classes at once (kvcache/slab_policy.py says which
page and when it may not, in memcached's words); `slabs automove` sets the level the
daemon's automove task runs at. Each class has a segmented LRU without memcached's LRU
maintainer thread:
`lru tune` sets the HOT and WARM shares the LRU keeps (the age factors are validated and
reported by `stats settings`, not applied: no age caps are modelled); `lru mode` and
`lru temp_ttl` are answered ERROR, as memcached answers them when its maintainer thread is
off (`stats settings`: lru_maintainer_thread no). `watch` (a live log stream) is not
offered: it is answered as a memcached started without it.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import quote

from kvcache import replies, slab_policy
from kvcache.engine import CLOSE_NOW, Engine, Handler, Reply
from kvcache.items import FETCHED
from kvcache.numbers import strtol32, strtoul32
from kvcache.protocol import has_noreply, ntokens
from kvcache.settings import MAX_VERBOSITY, MEGABYTE
from kvcache.slabs import MAX_SLAB_CLASSES, item_ntotal
from kvcache.stats import (
    SIZES_DISABLED,
    conns_stats,
    general,
    items_stats,
    render,
    settings_stats,
    slabs_stats,
)

log = logging.getLogger("kvcache")

MIN_MEMLIMIT_MB = 8
MAX_MEMLIMIT_MB = 1_000_000_000
MAX_CRAWLER_SLEEP_US = 1_000_000
MAX_HOT_WARM_PCT = 80
REASSIGN_DISABLED = "CLIENT_ERROR slab reassignment disabled"
_REASSIGN_REPLIES = {
    slab_policy.REASSIGN_OK: replies.OK,
    slab_policy.REASSIGN_BADCLASS: replies.line(replies.REASSIGN_BAD_CLASS),
    slab_policy.REASSIGN_NOSPARE: replies.line(replies.REASSIGN_NO_SPARE),
    slab_policy.REASSIGN_SAME: replies.line(replies.REASSIGN_SAME),
}
_C_DOUBLE = re.compile(
    rb"^[ \t\n\v\f\r]*[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf(inity)?|nan)"
    rb"[ \t\n\v\f\r]?$", re.IGNORECASE)


def _strtod(token: bytes) -> float | None:
    return float(token) if _C_DOUBLE.match(token) else None


def cmd_verbosity(engine: Engine, tokens: list[bytes]) -> Reply:
    noreply = has_noreply(tokens)
    level = strtoul32(tokens[1])
    if level is None:
        return replies.unless(noreply, replies.BAD_FORMAT)
    engine.settings.verbose = min(level, MAX_VERBOSITY)
    if engine.on_verbosity is not None:
        engine.on_verbosity(engine.settings.verbose)
    return replies.unless(noreply, replies.OK)


def cmd_stats(engine: Engine, tokens: list[bytes]) -> Reply:
    storage = engine.storage
    view = engine.view
    count = ntokens(tokens)
    if count == 2:
        if view is None:
            return replies.ERROR
        return render(general(view, engine.settings, storage))
    sub = tokens[1]
    if sub == b"reset":
        engine.stats.reset()
        return replies.RESET
    if sub == b"detail":
        if count < 4 or tokens[2] not in (b"on", b"off", b"dump"):
            return replies.line(replies.STATS_DETAIL_USAGE)
        return replies.END if tokens[2] == b"dump" else replies.OK
    if sub == b"settings":
        return render(settings_stats(engine.settings, storage))
    if sub == b"items":
        return render(items_stats(storage))
    if sub == b"slabs":
        return render(slabs_stats(storage))
    if sub == b"sizes":
        return render(SIZES_DISABLED)
    if sub == b"conns" and view is not None:
        return render(conns_stats(view))
    if sub == b"cachedump":
        return _cachedump(engine, tokens)
    return replies.ERROR


def _cachedump(engine: Engine, tokens: list[bytes]) -> Reply:
    """`stats cachedump <class> <limit>`: keys of one size class, most recent first."""
    if not engine.settings.dump_enabled:
        return replies.line(replies.CACHEDUMP_DISABLED)
    if ntokens(tokens) < 5:
        return replies.line(replies.BAD_COMMAND_LINE)
    clsid, limit = strtoul32(tokens[2]), strtoul32(tokens[3])
    if clsid is None or limit is None:
        return replies.line(replies.BAD_FORMAT)
    if clsid >= MAX_SLAB_CLASSES:
        return replies.line(replies.CACHEDUMP_ILLEGAL_SLAB)
    storage = engine.storage
    lines = []
    for item in storage.items():
        if storage.clsid_of(item) == clsid:
            lines.append(b"ITEM %s [%d b; %d s]\r\n" % (item.key, len(item.value), item.exptime))
            if limit and len(lines) >= limit:
                break
    return b"".join(lines) + replies.END


def cmd_shutdown(engine: Engine, tokens: list[bytes]) -> Reply:
    if not engine.settings.shutdown_command:
        return replies.line(replies.SHUTDOWN_DISABLED)
    count = ntokens(tokens)
    if count == 2 or (count == 3 and tokens[1] == b"graceful"):
        log.info("shutdown requested by a client")
        if engine.on_shutdown is not None:
            engine.on_shutdown()
        return CLOSE_NOW
    return replies.line(replies.SHUTDOWN_BAD_MODE)


def cmd_cache_memlimit(engine: Engine, tokens: list[bytes]) -> Reply:
    noreply = has_noreply(tokens)
    megabytes = strtoul32(tokens[1])
    if megabytes is None:
        return replies.unless(noreply, replies.ERROR)
    if megabytes < MIN_MEMLIMIT_MB:
        return replies.unless(noreply, replies.MEMLIMIT_TOO_SMALL)
    if megabytes > MAX_MEMLIMIT_MB:
        return replies.unless(noreply, replies.MEMLIMIT_NOT_MEGABYTES)
    engine.storage.set_limit(megabytes * MEGABYTE)
    engine.settings.maxbytes = megabytes * MEGABYTE
    log.info("memory limit set to %d MB", megabytes)
    return replies.unless(noreply, replies.OK)


def _classes(engine: Engine, spec: bytes) -> list[int] | None:
    """`all`, or a comma list of class ids (1..62), as lru_crawler takes them."""
    if spec in (b"all", b"hash"):
        return list(range(1, engine.storage.slabs.largest + 1))
    out = []
    for part in spec.split(b","):
        sid = strtoul32(part) if part else None
        if sid is None or not 1 <= sid < MAX_SLAB_CLASSES - 1:
            return None
        out.append(sid)
    return out


def cmd_lru_crawler(engine: Engine, tokens: list[bytes]) -> Reply:
    count = ntokens(tokens)
    sub = tokens[1] if count > 2 else b""
    if count == 4 and sub in (b"crawl", b"metadump"):
        if not engine.crawler_enabled:
            return replies.line(replies.CRAWLER_DISABLED)
        classes = _classes(engine, tokens[2])
        if classes is None or (sub == b"crawl" and tokens[2] == b"hash"):
            return replies.line(replies.CRAWLER_BAD_CLASS)
        if sub == b"crawl":
            engine.crawl_requested = True
            return replies.OK
        if not engine.settings.dump_enabled:
            return replies.line(replies.METADUMP_DISABLED)
        return _metadump(engine, set(classes))
    if count == 4 and sub in (b"tocrawl", b"sleep"):
        number = strtoul32(tokens[2])
        if number is None:
            return replies.line(replies.BAD_FORMAT)
        if sub == b"sleep" and number > MAX_CRAWLER_SLEEP_US:
            return replies.line(replies.CRAWLER_SLEEP_TOO_LONG)
        if sub == b"sleep":  # microseconds between crawler slices (kvcache/server.py)
            engine.settings.crawl_interval_s = number / 1_000_000
        else:  # items checked per slice; 0: no limit
            engine.settings.crawl_items_per_tick = number
        return replies.OK
    if count == 3 and sub == b"enable":
        if engine.crawler_enabled:
            return replies.line(replies.CRAWLER_START_FAILED)
        engine.crawler_enabled = True
        return replies.OK
    if count == 3 and sub == b"disable":
        if not engine.crawler_enabled:
            return replies.line(replies.CRAWLER_STOP_FAILED)
        engine.crawler_enabled = False
        return replies.OK
    return replies.ERROR


def _metadump(engine: Engine, classes: set[int]) -> bytes:
    """One line per item: the format of memcached's `lru_crawler metadump`."""
    storage = engine.storage
    lines = []
    for item in storage.items():
        if not storage.alive(item):
            continue
        ntotal = item_ntotal(len(item.key), item.flags, len(item.value), storage.use_cas)
        cls = storage.slabs.clsid(ntotal)
        if cls not in classes:
            continue
        lines.append(b"key=%s exp=%d la=%d cas=%d fetch=%s cls=%d size=%d\n" % (
            quote(item.key, safe="").encode(), item.exptime or -1, item.atime, item.cas,
            b"yes" if item.casbits & FETCHED else b"no", cls, ntotal))
    return b"".join(lines) + replies.END


def cmd_slabs(engine: Engine, tokens: list[bytes]) -> Reply:
    count = ntokens(tokens)
    if count == 5 and tokens[1] == b"reassign":
        if not engine.settings.slab_reassign:
            return replies.line(REASSIGN_DISABLED)
        src, dst = strtol32(tokens[2]), strtol32(tokens[3])
        if src is None or dst is None:
            return replies.line(replies.BAD_FORMAT)
        code = engine.storage.slabs_reassign(src, dst)
        if code == slab_policy.REASSIGN_OK:
            log.info("slabs reassign: a page of class %d went to class %d", src, dst)
        return _REASSIGN_REPLIES[code]
    if count >= 4 and tokens[1] == b"automove":
        noreply = has_noreply(tokens)
        if tokens[2] == b"ratio":
            if count < 5 or _strtod(tokens[3]) is None:
                return replies.unless(noreply, replies.ERROR)
            return replies.unless(noreply, replies.OK)
        level = strtoul32(tokens[2])
        if level is None:
            return replies.unless(noreply, replies.BAD_FORMAT)
        if level > slab_policy.AUTOMOVE_AGGRESSIVE:
            return replies.unless(noreply, replies.ERROR)
        engine.settings.slab_automove = level
        return replies.unless(noreply, replies.OK)
    return replies.ERROR


def cmd_lru(engine: Engine, tokens: list[bytes]) -> Reply:
    noreply = has_noreply(tokens)
    count = ntokens(tokens)
    sub = tokens[1]
    if sub == b"tune" and count >= 7:
        hot, warm = strtoul32(tokens[2]), strtoul32(tokens[3])
        hot_factor, factor = _strtod(tokens[4]), _strtod(tokens[5])
        if hot is None or warm is None or hot_factor is None or factor is None:
            return replies.unless(noreply, replies.ERROR)
        if hot + warm > MAX_HOT_WARM_PCT:
            return replies.unless(noreply, replies.LRU_PCTS_TOO_HIGH)
        if factor <= 0 or hot_factor <= 0:
            return replies.unless(noreply, replies.LRU_FACTORS_NOT_POSITIVE)
        engine.storage.hot_percent, engine.storage.warm_percent = hot, warm
        engine.settings.hot_max_factor, engine.settings.warm_max_factor = hot_factor, factor
        return replies.unless(noreply, replies.OK)
    # `lru mode` and `lru temp_ttl` need memcached's LRU maintainer thread, which kvcache
    # does not have: memcached without it answers both ERROR, whatever the arguments.
    return replies.unless(noreply, replies.ERROR)


def cmd_watch(engine: Engine, tokens: list[bytes]) -> Reply:
    return replies.unless(has_noreply(tokens), replies.WATCH_NOT_ALLOWED)


# name, handler, fewest and most tokens (memcached counts its terminal token too)
ADMIN_COMMANDS: list[tuple[bytes, Handler, int, int]] = [
    (b"verbosity", cmd_verbosity, 3, 4),
    (b"stats", cmd_stats, 2, 1 << 30),
    (b"shutdown", cmd_shutdown, 2, 1 << 30),
    (b"cache_memlimit", cmd_cache_memlimit, 3, 4),
    (b"slabs", cmd_slabs, 2, 1 << 30),
    (b"lru", cmd_lru, 3, 1 << 30),
    (b"lru_crawler", cmd_lru_crawler, 2, 1 << 30),
    (b"watch", cmd_watch, 2, 1 << 30),
]
