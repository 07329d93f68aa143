"""The soak test, shortened for CI: 20 concurrent sessions for 30 s through
imapfront to the emulator (Q239082 chain bug on, quirks = exchange55) and,
at the same time, to a private Dovecot, mixing APPEND (up to 4 MiB), FETCH,
IDLE and RST disconnects. Nothing acknowledged may be lost or altered, no
session may see another's data, RSS stays under the bound tests/soak/soak.py
states, and descriptors and chain counters return to their baseline. The
full run is `tests/soak/soak.py` (200 sessions, 5 minutes)."""

import os
import sys

import pytest

import imapfront_harness as h

pytestmark = pytest.mark.skipif(bool(os.environ.get("IMAPFRONT_SANITIZED")),
                                reason="the soak's RSS bounds do not hold under AddressSanitizer's shadow memory "
                "(it runs on the normal build)")

sys.path.insert(0, os.path.join(h.SRC, "tests", "soak"))

import soak  # noqa: E402

SESSIONS = 20
DURATION = 30.0
SEED = 20240601


def test_soak_short(workdir, need_bin):
    lines = []

    def log(text):
        lines.append(text)
        print(text)

    reports = soak.soak(["emulator", "dovecot"], SESSIONS, DURATION, SEED,
                        os.path.join(workdir, "soak"), log=log, parallel=True)
    for r in reports:
        if "skipped" in r:
            print("[%s] skipped: %s" % (r["backend"], r["skipped"]))
    ran = [r for r in reports if "skipped" not in r]
    assert any(r["backend"] == "emulator" for r in ran), reports
    failed = ["[%s] %s" % (r["backend"], f) for r in reports for f in r["failures"]]
    assert not failed, "\n".join(failed + lines)
