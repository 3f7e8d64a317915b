"""What one kvcache daemon was started with: memcached's settings, validated in one place."""

from __future__ import annotations

from dataclasses import dataclass

MEGABYTE = 1024 * 1024
DEFAULT_PORT = 11211
DEFAULT_MEMORY_MB = 64
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_ITEM_SIZE_MAX = MEGABYTE
MIN_ITEM_SIZE_MAX = 1024  # memcached refuses -I below 1k
MAX_ITEM_SIZE_MAX = 1024 * MEGABYTE  # ... and above 1g
MAX_VERBOSITY = 2
MAX_SLAB_AUTOMOVE = 2


class SettingsError(ValueError):
    """A setting memcached would refuse to start with; the message says which."""


@dataclass
class Settings:
    """memcached's `struct settings`, the part kvcache uses (`stats settings` shows it)."""

    port: int = DEFAULT_PORT
    inter: str = "127.0.0.1"
    maxbytes: int = DEFAULT_MEMORY_MB * MEGABYTE
    maxconns: int = DEFAULT_MAX_CONNECTIONS
    item_size_max: int = DEFAULT_ITEM_SIZE_MAX
    verbose: int = 0
    threads_requested: int = 4  # -t: accepted for compatibility, one event loop serves all
    evict_to_free: bool = True  # -M turns eviction off: a full cache refuses writes
    shutdown_command: bool = False  # -A enables the `shutdown` command
    flush_enabled: bool = True  # -F turns flush_all off
    dump_enabled: bool = True  # -X turns cachedump and metadump off
    backlog: int = 1024
    reqs_per_event: int = 20  # replies are written out at least this often (-R)
    growth_factor: float = 1.25  # -f and -n shape the size classes stats report
    slab_min_size: int = 48
    unix_socket: str | None = None  # -s: listen here instead of TCP
    unix_mask: int = 0o700  # -a
    udp_port: int = 0  # -U: serve UDP on this port too (0, the default: no UDP)
    hot_max_factor: float = 0.2  # `lru tune`'s age factors (memcached's defaults):
    warm_max_factor: float = 2.0  # reported by `stats settings`, not applied
    crawl_items_per_tick: int = 5000
    idle_timeout: int = 0  # -o idle_timeout: seconds a client may sit idle (0: for ever)
    crawl_interval_s: float = 0.1
    use_cas: bool = True  # -C turns CAS off: items carry no CAS (8 bytes less each)
    slab_reassign: bool = True  # -o slab_reassign / no_slab_reassign (on in memcached 1.6)
    slab_automove: int = 1  # -o slab_automove=N and `slabs automove N`: 0 off, 1, 2

    def validate(self) -> None:
        """Raise SettingsError for the combinations memcached refuses."""
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port {self.port} out of range")
        if self.maxbytes <= 0:
            raise SettingsError("memory limit (-m) must be positive")
        if self.maxconns <= 0:
            raise SettingsError("maximum connections (-c) must be positive")
        if self.item_size_max < MIN_ITEM_SIZE_MAX:
            raise SettingsError("Item max size cannot be less than 1024 bytes.")
        if self.item_size_max > MAX_ITEM_SIZE_MAX:
            raise SettingsError("Cannot set item size limit higher than 1 gigabyte.")
        if self.item_size_max > self.maxbytes // 2:
            raise SettingsError("Cannot set item size limit higher than 1/2 of memory max.")
        if self.growth_factor <= 1.0:
            raise SettingsError("Factor must be greater than 1")
        if self.slab_min_size <= 0:
            raise SettingsError("Chunk size must be greater than 0")
        if self.reqs_per_event <= 0:
            raise SettingsError("Number of requests per event must be greater than 0")
        if self.backlog <= 0:
            raise SettingsError("listen backlog must be positive")
        if self.idle_timeout < 0:
            raise SettingsError("idle_timeout must not be negative")
        if not 0 <= self.slab_automove <= MAX_SLAB_AUTOMOVE:
            raise SettingsError("slab_automove must be between 0 and 2")


def parse_size(text: str) -> int:
    """memcached's -I syntax: bytes, or a number with k/m/g (`1m`, `512k`)."""
    text = text.strip().lower()
    scale = {"k": 1024, "m": MEGABYTE, "g": 1024 * MEGABYTE}.get(text[-1:], 1)
    digits = text[:-1] if scale != 1 else text
    if not digits.isdigit():
        raise SettingsError(f"bad size {text!r}: expected bytes or a number with k, m or g")
    return int(digits) * scale
