"""Attacks of test_attack5.py that fail against the current proxy (not
collected by meson: the file name does not start with test_). Run with
  cd build && python3 -m pytest -q ../tests/integration/attack5_failing.py

test_connect_rate_one_spreads_a_burst
  input:    [backend] connect_rate = 1, queue_timeout = 15s; 100 TLS clients
            at once right after the start (greeting, LOGIN, LOGOUT).
  expected: docs/configuration.md `connect_rate`: a first burst of 1
            connect, then 1 a second, the rate doubling every second, the
            warm-up ending at the latest after 6 s. By 3 s at most
            1 + 7 / ln 2 (about 11) connects can have been made, so the
            slowest client waits at least 3 s (about 6 s in the model).
  observed: all 100 get their greeting within about 1.2 s (99 waited in
            the queue, imapfront_backend_warming 0 afterwards): with
            connect_rate = 1 the warm-up ends after about a second. The same
            burst takes 5.1 s at connect_rate = 2, 4.8 s at 3 and 4.0 s at
            5, as the doubling model says; only 1 is off (a guess: the
            "bucket found full again at least a second after it began" end
            condition is met at once by a one-token bucket)."""

import ops_support as ops
from test_attack5 import burst


def test_connect_rate_one_spreads_a_burst(backends, proxy_factory, ctx):
    b = backends()
    S = ops.addr(b.port)
    proxy = ops.start_proxy(proxy_factory, b.port, extra={"backend": {
        "connect_rate": "1", "queue_timeout": "15s"}})
    results, slowest = burst(proxy.port, ctx, 100, timeout=15)
    assert results == ["ok"] * 100, [r for r in results if r != "ok"][:5]
    assert ops.scrape(proxy).value("imapfront_backend_queue_waits_total", server=S) >= 50
    assert slowest >= 3.0, slowest
