"""An embedded worker in its own process, for tests that SIGKILL it:

    python -m tests.embedded_worker_proc --scheduler H:P,... --id ID --tags T --out FILE

Its one handler, "hold", appends "worker_id run_id attempt" to FILE; the first attempt of a
run then holds it until the process dies, a later attempt returns (succeeds).
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from scheduler.client import EmbeddedWorker, Run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scheduler", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--tags", default="")
    parser.add_argument("--out", required=True)
    parser.add_argument("--heartbeat-ms", type=int, default=300)
    args = parser.parse_args()
    servers = [(h, int(p)) for h, p in (a.rsplit(":", 1) for a in args.scheduler.split(","))]
    worker = EmbeddedWorker(servers, tags=[t for t in args.tags.split(",") if t],
                            worker_id=args.id, heartbeat_s=args.heartbeat_ms / 1000)

    @worker.handler("hold")
    async def hold(run: Run) -> None:
        with open(args.out, "a") as out:
            out.write(f"{worker.worker_id} {run.run_id} {run.attempt}\n")
        if run.attempt == 1:
            await asyncio.Event().wait()  # until SIGKILL

    async def serve() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await worker.run(stop)

    asyncio.run(serve())


if __name__ == "__main__":
    main()
