"""The `stats` family of replies, with memcached 1.6.18's names and order.

Every stat name memcached prints is printed, in its order, so tools that scrape `stats`
find what they expect. Where a figure describes machinery kvcache does not have (worker
threads, extstore, TLS) the value describes kvcache instead: one event loop, no TLS.
Per-class figures use memcached's slab classes (kvcache/slabs.py), which are the arena's
classes too: `stats slabs` shows each class's real pages and chunks (kvcache's large
classes, above memcached's largest, among them), `bytes` the chunks items hold. The
counters themselves live in kvcache/counters.py; this module reads them with the storage and
the process figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvcache.replies import VERSION

if TYPE_CHECKING:
    from kvcache.settings import Settings
    from kvcache.storage import Storage

# The per-class counters `stats slabs` prints for each class (set_cmds as cmd_set).
_SUMMED_SLAB_FIELDS = ("get_hits", "set_cmds", "delete_hits", "incr_hits", "decr_hits",
                       "cas_hits", "cas_badval", "touch_hits")


@dataclass
class ProcessView:
    """What `stats` needs from outside the cache: filled in by the server."""

    pid: int
    started: int  # Unix time the daemon started
    cpu_times: Callable[[], tuple[float, float]]
    event_loop: str  # printed where memcached prints its libevent version
    connections: Callable[[], list[tuple[int, str, str, str, int]]]
    # (fd, addr, listen_addr or "", state, seconds since last command)


Stat = tuple[str, object]


def render(stats: Iterable[Stat]) -> bytes:
    """STAT lines and END."""
    return b"".join(b"STAT %s %s\r\n" % (k.encode(), str(v).encode()) for k, v in stats) + (
        b"END\r\n"
    )


def _cpu(seconds: float) -> str:
    """memcached's "%ld.%06ld" of a timeval."""
    micros = round(seconds * 1_000_000)
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


def general(view: ProcessView, settings: Settings, storage: Storage) -> list[Stat]:
    """`stats` with no argument."""
    stats = storage.stats
    slab = stats.slab
    user, system = view.cpu_times()
    now = storage.now
    index_bytes = storage.hash_bytes
    return [
        ("pid", view.pid), ("uptime", max(0, now - view.started)), ("time", now),
        ("version", VERSION), ("libevent", view.event_loop), ("pointer_size", 64),
        ("rusage_user", _cpu(user)), ("rusage_system", _cpu(system)),
        ("max_connections", settings.maxconns),
        ("curr_connections", stats.curr_connections),
        ("total_connections", stats.total_connections),
        ("rejected_connections", stats.rejected_connections),
        ("connection_structures", stats.curr_connections + 1),
        ("response_obj_oom", 0), ("response_obj_count", 0), ("response_obj_bytes", 0),
        ("read_buf_count", 0), ("read_buf_bytes", 0), ("read_buf_bytes_free", 0),
        ("read_buf_oom", 0), ("reserved_fds", 0),
        ("cmd_get", stats.get_cmds), ("cmd_set", slab.total("set_cmds")),
        ("cmd_flush", stats.flush_cmds), ("cmd_touch", stats.touch_cmds),
        ("cmd_meta", stats.meta_cmds),
        ("get_hits", slab.total("get_hits")), ("get_misses", stats.get_misses),
        ("get_expired", stats.get_expired), ("get_flushed", stats.get_flushed),
        ("delete_misses", stats.delete_misses), ("delete_hits", slab.total("delete_hits")),
        ("incr_misses", stats.incr_misses), ("incr_hits", slab.total("incr_hits")),
        ("decr_misses", stats.decr_misses), ("decr_hits", slab.total("decr_hits")),
        ("cas_misses", stats.cas_misses), ("cas_hits", slab.total("cas_hits")),
        ("cas_badval", slab.total("cas_badval")),
        ("touch_hits", slab.total("touch_hits")), ("touch_misses", stats.touch_misses),
        ("store_too_large", stats.store_too_large),
        ("store_no_memory", stats.store_no_memory),
        ("auth_cmds", 0), ("auth_errors", 0),
        # memcached prints idle_kicks only when an idle timeout is set
        *((("idle_kicks", stats.idle_kicks),) if settings.idle_timeout else ()),
        ("bytes_read", stats.bytes_read), ("bytes_written", stats.bytes_written),
        ("limit_maxbytes", storage.limit_bytes), ("accepting_conns", 1),
        ("listen_disabled_num", 0), ("time_in_listen_disabled_us", 0), ("threads", 1),
        ("conn_yields", 0),
        ("hash_power_level", max(1, index_bytes // 20).bit_length()),
        ("hash_bytes", index_bytes), ("hash_is_expanding", 0),
        ("slab_reassign_rescues", storage.reassign_rescues),
        ("slab_reassign_chunk_rescues", 0),
        ("slab_reassign_evictions_nomem", storage.reassign_evictions),
        ("slab_reassign_inline_reclaim", 0),
        ("slab_reassign_busy_items", 0), ("slab_reassign_busy_deletes", 0),
        ("slab_reassign_running", 0), ("slabs_moved", storage.slabs_moved),
        ("lru_crawler_running", 0), ("lru_crawler_starts", stats.crawler_starts),
        ("lru_maintainer_juggles", 0), ("malloc_fails", 0),
        ("log_worker_dropped", 0), ("log_worker_written", 0), ("log_watcher_skipped", 0),
        ("log_watcher_sent", 0), ("log_watchers", 0), ("unexpected_napi_ids", 0),
        ("round_robin_fallback", 0),
        ("bytes", stats.bytes), ("curr_items", stats.curr_items),
        ("total_items", stats.total_items), ("slab_global_page_pool", storage.pool_pages),
        ("expired_unfetched", slab.total("expired_unfetched")),
        ("evicted_unfetched", slab.total("evicted_unfetched")), ("evicted_active", 0),
        ("evictions", slab.total("evicted")), ("reclaimed", slab.total("reclaimed")),
        ("crawler_reclaimed", slab.total("crawler_reclaimed")),
        ("crawler_items_checked", slab.total("crawler_items_checked")),
        ("lrutail_reflocked", 0), ("moves_to_cold", slab.total("moves_to_cold")),
        ("moves_to_warm", slab.total("moves_to_warm")),
        ("moves_within_lru", slab.total("moves_within_lru")), ("direct_reclaims", 0),
        ("lru_bumps_dropped", 0),
    ]


def settings_stats(settings: Settings, storage: Storage) -> list[Stat]:
    """`stats settings`."""
    oldest = storage.oldest_live
    return [
        ("maxbytes", storage.limit_bytes), ("maxconns", settings.maxconns),
        ("tcpport", 0 if settings.unix_socket else settings.port), ("udpport", settings.udp_port),
        ("inter", "NULL" if settings.unix_socket else settings.inter or "NULL"),
        ("verbosity", settings.verbose), ("oldest", oldest),
        ("evictions", "on" if settings.evict_to_free else "off"),
        ("domain_socket", settings.unix_socket or "NULL"),
        ("umask", f"{settings.unix_mask:o}"),
        ("shutdown_command", _yes(settings.shutdown_command)),
        ("growth_factor", f"{settings.growth_factor:.2f}"),
        ("chunk_size", settings.slab_min_size), ("num_threads", 1),
        ("num_threads_per_udp", 1), ("stat_key_prefix", ":"), ("detail_enabled", "no"),
        ("reqs_per_event", settings.reqs_per_event), ("cas_enabled", _yes(storage.use_cas)),
        ("tcp_backlog", settings.backlog),
        ("binding_protocol", "ascii"), ("auth_enabled_sasl", "no"),
        ("auth_enabled_ascii", "no"), ("item_size_max", storage.slabs.item_size_max),
        ("maxconns_fast", "yes"), ("hashpower_init", 0),
        ("slab_reassign", _yes(settings.slab_reassign)),
        ("slab_automove", settings.slab_automove), ("slab_automove_ratio", "0.80"),
        ("slab_automove_window", 30),
        ("slab_chunk_max", storage.slabs.chunk_max), ("lru_crawler", "yes"),
        ("lru_crawler_sleep", int(settings.crawl_interval_s * 1_000_000)),
        ("lru_crawler_tocrawl", settings.crawl_items_per_tick), ("tail_repair_time", 0),
        ("flush_enabled", _yes(settings.flush_enabled)),
        ("dump_enabled", _yes(settings.dump_enabled)), ("hash_algorithm", "siphash"),
        ("lru_maintainer_thread", "no"), ("lru_segmented", "yes"),
        ("hot_lru_pct", storage.hot_percent), ("warm_lru_pct", storage.warm_percent),
        ("hot_max_factor", f"{settings.hot_max_factor:.2f}"),
        ("warm_max_factor", f"{settings.warm_max_factor:.2f}"),
        ("temp_lru", "no"), ("temporary_ttl", 0), ("idle_timeout", settings.idle_timeout),
        ("watcher_logbuf_size", 0), ("worker_logbuf_size", 0), ("read_buf_mem_limit", 0),
        ("track_sizes", "no"), ("inline_ascii_response", "no"), ("ext_item_size", 0),
        ("ext_item_age", 0), ("ext_low_ttl", 0), ("ext_recache_rate", 0),
        ("ext_wbuf_size", 0), ("ext_compact_under", 0), ("ext_drop_under", 0),
        ("ext_max_sleep", 0), ("ext_max_frag", "0.00"), ("slab_automove_freeratio", "0.000"),
        ("ext_drop_unread", "no"), ("ssl_enabled", "no"), ("ssl_chain_cert", "(null)"),
        ("ssl_key", "(null)"), ("ssl_verify_mode", 0), ("ssl_keyformat", 0),
        ("ssl_ciphers", "NULL"), ("ssl_ca_cert", "NULL"), ("ssl_wbuf_size", 0),
        ("ssl_session_cache", "no"), ("ssl_kernel_tls", "no"), ("ssl_min_version", "none"),
        ("num_napi_ids", "(null)"), ("memory_file", "(null)"),
    ]


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def items_stats(storage: Storage) -> list[Stat]:
    """`stats items`: one block per size class holding items, with its LRU segments: the
    age (now minus last access) of each segment's tail, 0 when it is empty, and the get hits
    by the segment the item was found in. No TEMP LRU: hits_to_temp stays 0."""
    slab = storage.stats.slab
    ages_hot, ages_warm, ages_cold = storage.tail_ages()
    out: list[Stat] = []
    for cls in range(1, storage.slabs.largest + 1):
        number = slab.number[cls]
        if not number:
            continue
        p = f"items:{cls}:"
        hot, warm = slab.number_hot[cls], slab.number_warm[cls]
        out += [
            (p + "number", number), (p + "number_hot", hot), (p + "number_warm", warm),
            (p + "number_cold", number - hot - warm), (p + "age_hot", ages_hot.get(cls, 0)),
            (p + "age_warm", ages_warm.get(cls, 0)), (p + "age", ages_cold.get(cls, 0)),
            (p + "mem_requested", slab.requested[cls]),
            (p + "evicted", slab.evicted[cls]), (p + "evicted_nonzero", slab.evicted_nonzero[cls]),
            (p + "evicted_time", slab.evicted_time[cls]),
            (p + "outofmemory", slab.outofmemory[cls]), (p + "tailrepairs", 0),
            (p + "reclaimed", slab.reclaimed[cls]),
            (p + "expired_unfetched", slab.expired_unfetched[cls]),
            (p + "evicted_unfetched", slab.evicted_unfetched[cls]), (p + "evicted_active", 0),
            (p + "crawler_reclaimed", slab.crawler_reclaimed[cls]),
            (p + "crawler_items_checked", slab.crawler_items_checked[cls]),
            (p + "lrutail_reflocked", 0), (p + "moves_to_cold", slab.moves_to_cold[cls]),
            (p + "moves_to_warm", slab.moves_to_warm[cls]),
            (p + "moves_within_lru", slab.moves_within_lru[cls]), (p + "direct_reclaims", 0),
            (p + "hits_to_hot", slab.hits_to_hot[cls]),
            (p + "hits_to_warm", slab.hits_to_warm[cls]),
            (p + "hits_to_cold", slab.hits_to_cold[cls]), (p + "hits_to_temp", 0),
        ]
    return out


def slabs_stats(storage: Storage) -> list[Stat]:
    """`stats slabs`: every class holding a page, with its pages and chunks; the command
    counters per class as memcached counts them (items of the large classes count to
    memcached's largest, as memcached counts its chunked items)."""
    slab = storage.stats.slab
    sizes = storage.arena.sizes
    largest = storage.slabs.largest  # the large classes' counts are under this one
    out: list[Stat] = []
    active = 0
    for cls, pages, free in storage.page_table():
        active += 1
        per_page = storage.page_bytes // sizes[cls - 1]
        total = pages * per_page
        p = f"{cls}:"
        out += [
            (p + "chunk_size", sizes[cls - 1]), (p + "chunks_per_page", per_page),
            (p + "total_pages", pages), (p + "total_chunks", total),
            (p + "used_chunks", total - free), (p + "free_chunks", free),
            (p + "free_chunks_end", 0),
            *((p + ("cmd_set" if f == "set_cmds" else f),
               getattr(slab, f)[cls] if cls <= largest else 0) for f in _SUMMED_SLAB_FIELDS),
        ]
    out += [("active_slabs", active), ("total_malloced", storage.used_bytes - storage.hash_bytes)]
    return out


def conns_stats(view: ProcessView) -> list[Stat]:
    """`stats conns`: the listener and every client, by file descriptor."""
    out: list[Stat] = []
    for fd, addr, listen_addr, state, idle in view.connections():
        out.append((f"{fd}:addr", addr))
        if listen_addr:
            out.append((f"{fd}:listen_addr", listen_addr))
        out += [(f"{fd}:state", state), (f"{fd}:secs_since_last_cmd", idle)]
    return out


SIZES_DISABLED: list[Stat] = [("sizes_status", "disabled")]
