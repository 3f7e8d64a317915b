"""`-C` (no CAS): an item is 8 bytes smaller, so at the -I limit a value 8 bytes longer fits,
as in memcached. The request parser (both twins) takes `use_cas` from the settings; a live
daemon and a real memcached started with the same flags accept and refuse the same sizes.
"""

from __future__ import annotations

import importlib

import pytest

from kvcache import mcproto_pure
from kvcache.slabs import item_ntotal
from tests.kvcache_wire import MEMCACHED, Memcached, request
from tests.procs import kvcache_daemon

LIMIT = 1024 * 1024
KEY = b"k"
LONGEST_WITH_CAS = LIMIT - item_ntotal(len(KEY), 0, 0, use_cas=True)
LONGEST_WITHOUT = LIMIT - item_ntotal(len(KEY), 0, 0, use_cas=False)
SIZES = (LONGEST_WITH_CAS, LONGEST_WITH_CAS + 1, LONGEST_WITHOUT, LONGEST_WITHOUT + 1)


def _twins() -> list[object]:
    try:
        return [mcproto_pure, importlib.import_module("kvcache._mcproto")]
    except ImportError:
        return [mcproto_pure]


def _script() -> bytes:
    return b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (KEY, n, b"x" * n) for n in SIZES)


@pytest.mark.parametrize("module", _twins())
def test_the_parser_counts_the_cas_only_when_it_is_on(module) -> None:
    for use_cas, refused in ((True, [False, True, True, True]),
                             (False, [False, False, False, True])):
        parser = module.RequestParser(LIMIT, use_cas=use_cas)  # type: ignore[attr-defined]
        parser.feed(_script())
        requests = []
        while (request := parser.next_request()) is not None:
            requests.append(request)
        assert [r.too_large for r in requests] == refused, use_cas


@pytest.mark.skipif(MEMCACHED is None, reason="memcached is not installed")
def test_sizes_at_the_limit_with_and_without_cas_as_memcached(tmp_path) -> None:
    for flags in ([], ["-C"]):
        real = Memcached(tmp_path, flags).start()
        ours = kvcache_daemon(tmp_path, extra=flags).start()
        try:
            expected = request(real.host, real.port, _script())
            assert request(ours.host, ours.port, _script()) == expected, flags
        finally:
            real.stop()
            assert ours.stop() == 0, ours.log()
