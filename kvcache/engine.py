"""What every command handler works on, and the kinds of reply a handler returns.

`Engine` is the state a kvcache daemon's commands share (storage, counters, settings, the
process view, the crawler switches, the items a pipeline's replies still refer to); it runs
nothing itself. The handlers live by family (kvcache/commands.py: the classic commands and
the dispatcher; kvcache/meta.py: the meta commands; kvcache/admin.py: the operator commands),
each taking an Engine and the request, and each returning a `Reply`:
- bytes: the reply (b"" when noreply silences it);
- a `Stream`: a reply produced piece by piece (multi-key gets), written as the socket drains;
- a `Closing`: close the connection, with or without the replies queued before it.
This module sits under all three families, so none of them imports another to know these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from kvcache.items import Item
from kvcache.settings import Settings
from kvcache.stats import ProcessView
from kvcache.storage import Storage


class Stream:
    """A reply produced piece by piece (the server writes each as the socket drains)."""

    __slots__ = ("chunks",)

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks


class Closing:
    """Close the connection. `flush`: write the replies queued before it first (quit);
    otherwise drop the ones not yet written, as memcached does when it gives up on a stream
    (an HTTP request line, a command line too long)."""

    __slots__ = ("flush",)

    def __init__(self, flush: bool) -> None:
        self.flush = flush


CLOSE_AFTER_REPLIES = Closing(flush=True)
CLOSE_NOW = Closing(flush=False)

Reply = bytes | Stream | Closing
Handler = Callable[["Engine", list[bytes]], Reply]


class Engine:
    """The state every request of one daemon runs against (single-threaded).

    The server owns one; kvcache.commands.execute(engine, request) runs a request on it."""

    def __init__(
        self,
        storage: Storage,
        settings: Settings,
        view: ProcessView | None = None,
        on_shutdown: Callable[[], None] | None = None,
        on_verbosity: Callable[[int], None] | None = None,
    ) -> None:
        self.storage = storage
        self.stats = storage.stats
        self.settings = settings
        self.view = view
        self.on_shutdown = on_shutdown
        self.on_verbosity = on_verbosity
        self.crawl_requested = False
        self.crawler_enabled = True
        # Items an mg reply refers to until the connection writes it out. memcached holds a
        # reference for each, and a held item is not incremented in place; the server
        # points this at the running connection's set and clears it on every write.
        self.pinned: set[Item] = set()
