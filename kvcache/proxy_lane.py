"""The proxy's fast lane: kvcache._proxylane when it is built, else its pure-Python twin
kvcache.proxylane_pure (the reference, whose docstring states the rules; native.load
chooses, INFRA_PURE=1 forces the twin). tests/test_kvcache_proxy_lane.py proves the twins
equal, and both in agreement with the request parser and the reply framer.
"""

from __future__ import annotations

from kvcache.twins import implementation
from native import load

_impl = load("kvcache._proxylane", "kvcache.proxylane_pure")

Answer = _impl.Answer
deliver = _impl.deliver
lane_request = _impl.lane_request
may_hold_a_block = _impl.may_hold_a_block
quick_take = _impl.quick_take
# Which twin is in use: "native" (compiled) or "pure" (the reference).
IMPLEMENTATION: str = implementation(_impl)

__all__ = ["IMPLEMENTATION", "Answer", "deliver", "lane_request", "may_hold_a_block",
           "quick_take"]
