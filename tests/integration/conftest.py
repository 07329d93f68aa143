"""pytest fixtures shared by the integration tests (see imapfront_harness)."""

import os

import pytest

import imapfront_harness as h
import ops_support as ops


def pytest_report_header(config):
    return "imapfront: %s\nemulator: %s" % (h.BIN, h.EMULATOR)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    """One temporary directory for the whole session."""
    return str(tmp_path_factory.mktemp("imapfront"))


@pytest.fixture(scope="session")
def cert(workdir):
    """(cert_path, key_path): self-signed ECDSA P-256 for localhost."""
    return h.make_cert(workdir)


@pytest.fixture(scope="session")
def ctx(cert):
    """A client SSLContext that trusts the test certificate."""
    return h.client_context(cert[0])


@pytest.fixture(scope="session")
def need_bin():
    if not os.access(h.BIN, os.X_OK):
        pytest.fail("imapfront binary not found at %s (set IMAPFRONT_BIN)" % h.BIN)
    return h.BIN


@pytest.fixture
def emulator_factory(workdir, cert):
    """emulator_factory(flags=(), record=False) starts an emulator; all
    stop at teardown."""
    started = []

    def start(flags=(), record=False):
        emu = h.Emulator(workdir, cert[0], cert[1], flags=flags, record=record)
        started.append(emu)
        return emu

    yield start
    for emu in started:
        emu.stop()


@pytest.fixture
def backends(workdir):
    """backends(port=0, users="demo:demo", flags=()) starts a plain-only
    emulator whose port stays the same across kill()/start(); all stop at
    teardown."""
    started = []

    def start(port=0, users="demo:demo", flags=()):
        e = ops.EmulatorAt(workdir, port=port, users=users, flags=flags)
        started.append(e)
        return e

    yield start
    for e in started:
        e.stop()


@pytest.fixture
def emulator(emulator_factory):
    return emulator_factory()


@pytest.fixture
def proxy_factory(workdir, cert, need_bin):
    """proxy_factory(backend_port, extra=None) starts an imapfront; all
    stop at teardown (SIGTERM, bounded wait, SIGKILL)."""
    started = []

    def start(backend_port, extra=None):
        p = h.Proxy(workdir, cert[0], cert[1], backend_port, extra=extra)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


@pytest.fixture
def proxy(proxy_factory, emulator):
    """imapfront in front of a fresh emulator's plain port."""
    return proxy_factory(emulator.plain_port)
