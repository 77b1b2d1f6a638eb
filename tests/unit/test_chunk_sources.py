"""Closing a source at shutdown (found by hand: Ctrl-C during a transfer
printed a CancelledError traceback as the daemon exited)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import cast

import pytest

from pybootd.api import BytesResponse
from pybootd.runtime import Runtime
from pybootd.sources.chunks import PooledSource


def test_a_close_dropped_by_the_exiting_pool_logs_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    pool = ThreadPoolExecutor(1)
    release = threading.Event()
    pool.submit(release.wait, 5)  # the one worker is busy: the close waits in the queue
    source = PooledSource(cast(Runtime, SimpleNamespace(executor=pool)), BytesResponse(b"x"), 1)
    source.close()
    pool.shutdown(wait=False, cancel_futures=True)  # what the daemon does when it must exit
    release.set()
    pool.shutdown(wait=True)
    assert [r.getMessage() for r in caplog.records] == []
