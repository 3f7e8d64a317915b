"""What `kvcache serve` loads at start: the proxy's layers stay out of the server's memory.

kvcache/__main__.py builds one command line for `serve` and `proxy`; kvcache/proxy.py loads
the proxy's modules (proxy_server and what it imports) only when a proxy runs, and still
hands out ProxyConfig and ProxyServer to whoever asks for them.
"""

from __future__ import annotations

import subprocess
import sys

PROXY_LAYERS = ("kvcache.proxy_server", "kvcache.proxy_exec", "kvcache.proxy_backend",
                "kvcache.proxy_plan", "kvcache.proxy_wire")


def test_the_server_command_line_does_not_load_the_proxy() -> None:
    code = ("import sys, kvcache.__main__ as m; m.build_parser(); "
            "print(' '.join(n for n in sys.modules if n.startswith('kvcache.proxy_')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    loaded = set(done.stdout.split())
    assert not loaded & set(PROXY_LAYERS), loaded


def test_the_proxy_classes_are_still_there_on_demand() -> None:
    from kvcache import proxy, proxy_server

    assert proxy.ProxyServer is proxy_server.ProxyServer
    assert proxy.ProxyConfig is proxy_server.ProxyConfig
