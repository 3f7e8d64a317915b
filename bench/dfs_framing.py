"""Why dfs moves chunk data on its own framing rather than RESP: the same bytes sent over
loopback to a server that takes them and throws them away, once as RESP commands parsed by
core's RESP server (the one every RESP daemon runs) and once as dfs data-path frames parsed
by dfs/chunk_net.py, the way a chunk server reads a PUT.

    .venv/bin/python -m bench.dfs_framing [--mib 512] [--piece-kib 1024]

Each server runs in its own process on uvloop; the client streams `--mib` MiB in pieces of
`--piece-kib` KiB, pipelined, then waits for the server's one reply counting the bytes, and
the rate is bytes over that time. Prints a table; writes bench/results/dfs_framing.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "dfs_framing.json"


def _serve_resp(port: int, ready: Any) -> None:
    import uvloop

    from core.resp_server import Command, Limits, RespServer

    received = [0]

    def put(session: Any, args: list[bytes]) -> int:
        received[0] += len(args[2])
        return received[0]

    async def main() -> None:
        server = RespServer("bench", "0", [Command("FS.PUT", put, 3, frozenset({"write"}))],
                            limits=Limits(max_bulk=64 * 1024 * 1024))
        await server.start("127.0.0.1", port)
        ready.set()
        await asyncio.Event().wait()

    uvloop.run(main())


def _serve_frames(port: int, ready: Any) -> None:
    import uvloop

    from dfs.chunk_net import read_frame, write_frame

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = 0
        while (frame := await read_frame(reader)) is not None:
            received += len(frame.payload)
            if frame.op == "end":
                await write_frame(writer, {"ok": True, "received": received})
        writer.close()

    async def main() -> None:
        await asyncio.start_server(handle, "127.0.0.1", port, limit=16 * 1024 * 1024)
        ready.set()
        await asyncio.Event().wait()

    uvloop.run(main())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _send_resp(port: int, total: int, piece: bytes) -> float:
    from core.resp_client import encode_command

    sock = socket.create_connection(("127.0.0.1", port))
    head = encode_command("FS.PUT", "k", piece)
    started = time.perf_counter()
    for _ in range(total // len(piece)):
        sock.sendall(head)
    sock.sendall(b"PING\r\n")
    reply = b""
    while not reply.endswith(b"+PONG\r\n"):
        reply += sock.recv(1 << 20)
    elapsed = time.perf_counter() - started
    sock.close()
    return elapsed


def _send_frames(port: int, total: int, piece: bytes) -> float:
    from dfs.chunk_net import SyncLink

    link = SyncLink(f"127.0.0.1:{port}", 60)
    started = time.perf_counter()
    for _ in range(total // len(piece)):
        link.send({"op": "data"}, piece)
    link.send({"op": "end"})
    reply = link.receive()
    elapsed = time.perf_counter() - started
    assert reply is not None and reply.header["received"] == total
    link.close()
    return elapsed


def measure(kind: str, total: int, piece: bytes) -> float:
    """MiB/s of one kind ("resp" or "frames")."""
    port = _free_port()
    ready = multiprocessing.Event()
    target = _serve_resp if kind == "resp" else _serve_frames
    server = multiprocessing.Process(target=target, args=(port, ready), daemon=True)
    server.start()
    ready.wait(30)
    try:
        send = _send_resp if kind == "resp" else _send_frames
        send(port, min(total, 16 * len(piece)), piece)  # warm up
        return total / (1 << 20) / send(port, total, piece)
    finally:
        server.terminate()
        server.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512, help="MiB sent per measurement")
    parser.add_argument("--piece-kib", type=int, default=1024, help="KiB per command/frame")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (the best is kept)")
    args = parser.parse_args()
    piece = bytes(args.piece_kib * 1024)
    total = args.mib * (1 << 20)
    rates: dict[str, float] = {}
    for kind in ("resp", "frames"):
        runs = []
        for round_ in range(args.rounds):
            print(f"{kind}: round {round_ + 1}/{args.rounds} ...", flush=True)
            runs.append(measure(kind, total, piece))
        rates[kind] = max(runs)
    ratio = rates["frames"] / rates["resp"]
    print(f"{'path':<28}{'MiB/s':>10}")
    print(f"{'RESP (core RespServer)':<28}{rates['resp']:>10.0f}")
    print(f"{'dfs frames (chunk_net)':<28}{rates['frames']:>10.0f}")
    print(f"frames / RESP: {ratio:.2f}x")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"mib": args.mib, "piece_kib": args.piece_kib,
                               "resp_mib_s": rates["resp"], "frames_mib_s": rates["frames"],
                               "ratio": ratio, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                   time.gmtime())}, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
