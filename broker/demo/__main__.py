"""Run the simulated device on its own: ``python -m broker.demo --root DIR --port P``.

The password comes from the environment variable named by ``--password-env`` (default
``DEVICE_PASSWORD``), never from the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from pathlib import Path

from broker.demo import start_simulated_device
from broker.demo.web import start_device_web


async def _main(args: argparse.Namespace) -> None:
    password = os.environ.get(args.password_env)
    if not password:
        sys.exit(f"simulated device: environment variable {args.password_env} is not set")
    device = await start_simulated_device(Path(args.root), host=args.host, port=args.port,
                                          password=password)
    print(f"simulated device listening on {device.host}:{device.port}", flush=True)
    web = None
    if args.web_port is not None:
        web = await start_device_web(device.state, host=args.host, port=args.web_port)
        print(f"simulated device web UI on {web.url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        if web is not None:
            await web.close()
        await device.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m broker.demo")
    parser.add_argument("--root", required=True, help="the device's file system")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--password-env", default="DEVICE_PASSWORD")
    parser.add_argument("--web-port", type=int, default=None,
                        help="also serve the device's web UI on this port (0: any free port)")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
