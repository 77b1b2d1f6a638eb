"""Run the DHCP service alone, for tests: ``python tests/dhcp_runner.py CONFIG``.

A tiny stand-in for ``python -m pybootd -c CONFIG -p`` that does not drop
privileges; prints ``READY <server address>`` on stdout once serving, and
stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pybootd.config import load_config
from pybootd.server.dhcp import DhcpService
from pybootd.server.runtime import Runtime


async def serve(path: str) -> None:
    config = load_config(path)
    logging.basicConfig(level=config.logger.level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(config.daemon.workers)
    service = DhcpService(Runtime(config, loop, executor))
    await service.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {service.server_address}", flush=True)
    await stop.wait()
    service.stop_accepting()
    await service.drain(5)
    service.close()
    executor.shutdown(wait=False, cancel_futures=True)


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
