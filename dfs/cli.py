"""The `dfs` file commands, as `hdfs dfs` has them, and `dfs admin report`:

    dfs put LOCAL REMOTE      dfs get REMOTE LOCAL     dfs cat REMOTE...
    dfs ls [PATH]             dfs rm [-r] PATH         dfs mv SRC DST
    dfs mkdir [-p] PATH       dfs stat PATH            dfs du [-s] PATH
    dfs admin report          dfs admin decommission [--cancel] [--no-wait] NODE

Every command takes `--masters HOST:PORT,...` (default: $DFS_MASTERS, else the three
masters of `make run`). put and get show a progress bar on stderr (bytes, percent, rate;
`--quiet` hides it). A REMOTE naming a directory (or ending in "/") gets the local file's
name, as with cp; put makes the directories above REMOTE that are missing. Exit status: 0
done, 1 the file system refused or failed (the reason is printed), 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

from dfs.admin import drain_line, drain_state, human, report_lines
from dfs.client import DfsClient, DfsError
from dfs.client_io import PIECE_BYTES

__all__ = ["ACTIONS", "Progress", "add_client_parsers", "human", "run"]

ENV_MASTERS = "DFS_MASTERS"
ACTIONS = ("put", "get", "cat", "ls", "rm", "mv", "mkdir", "stat", "du", "admin")
PROGRESS_EVERY_S = 0.2
BAR_WIDTH = 30
ERR_NOT_FILE = "{} is a directory"
ERR_NO_NODE = "admin decommission needs NODE (a chunk server's id or address)"
DRAIN_POLL_S = 0.5


class Progress:
    """A progress bar on a stream: `update(n)` as bytes move, `done()` at the end."""

    def __init__(self, label: str, total: int | None, stream: Any = None,
                 quiet: bool = False) -> None:
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.moved = 0
        self.started = time.monotonic()
        self._shown = 0.0

    def update(self, count: int) -> None:
        self.moved += count
        if time.monotonic() - self._shown >= PROGRESS_EVERY_S:
            self._show()

    def _show(self, end: str = "\r") -> None:
        if self.quiet:
            return
        self._shown = time.monotonic()
        rate = self.moved / max(1e-6, self._shown - self.started)
        if self.total:
            share = min(1.0, self.moved / self.total)
            bar = "#" * int(share * BAR_WIDTH)
            text = (f"{self.label} [{bar:<{BAR_WIDTH}}] {share:4.0%} {human(self.moved)}/"
                    f"{human(self.total)} {human(rate)}/s")
        else:
            text = f"{self.label} {human(self.moved)} {human(rate)}/s"
        self.stream.write(text + end)
        self.stream.flush()

    def done(self) -> None:
        self._show("\n")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--masters", default=None,
                        help="HOST:PORT,... of the masters (default: $DFS_MASTERS, else "
                             "make run's 127.0.0.1:7881-7883)")
    parser.add_argument("--password", default=None, help="the masters' --requirepass")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="bytes per chunk of a file written (default 64 MiB)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_client_parsers(sub: Any) -> None:
    """Add the file commands (see the module header) to the `dfs` subcommands."""
    specs: list[tuple[str, str, list[tuple[list[str], dict[str, Any]]]]] = [
        ("put", "copy a local file (- for stdin) into dfs",
         [(["local"], {"help": "local file, or -"}), (["remote"], {"help": "dfs path"})]),
        ("get", "copy a dfs file to a local file",
         [(["remote"], {"help": "dfs path"}), (["local"], {"help": "local path"})]),
        ("cat", "print dfs files to stdout", [(["remote"], {"nargs": "+", "help": "dfs paths"})]),
        ("ls", "list a directory: type, size, time, path",
         [(["path"], {"nargs": "?", "default": "/", "help": "dfs path (default /)"})]),
        ("rm", "delete to the trash", [(["-r"], {"action": "store_true", "dest": "recursive",
                                                 "help": "a directory and all under it"}),
                                       (["path"], {"help": "dfs path"})]),
        ("mv", "rename (atomic)", [(["src"], {"help": "dfs path"}),
                                   (["dst"], {"help": "dfs path"})]),
        ("mkdir", "make a directory", [(["-p"], {"action": "store_true", "dest": "parents",
                                                 "help": "and its parents; existing is fine"}),
                                       (["path"], {"help": "dfs path"})]),
        ("stat", "a path's fields", [(["path"], {"help": "dfs path"})]),
        ("du", "bytes under a path", [(["-s"], {"action": "store_true", "dest": "summary",
                                                "help": "one total only"}),
                                      (["path"], {"help": "dfs path"})]),
        ("admin", "cluster administration", [
            (["what"], {"choices": ["report", "decommission"],
                        "help": "report: servers, racks, space, under-replicated; "
                                "decommission NODE: drain a chunk server, with progress"}),
            (["node"], {"nargs": "?", "help": "decommission: the chunk server's id or "
                                              "address"}),
            (["--cancel"], {"action": "store_true", "help": "decommission: unmark NODE"}),
            (["--no-wait"], {"action": "store_true", "dest": "no_wait",
                             "help": "decommission: mark NODE and return at once"})]),
    ]
    for name, text, arguments in specs:
        parser = sub.add_parser(name, help=text)
        for flags, options in arguments:
            parser.add_argument(*flags, **options)
        _common(parser)


def _masters(args: argparse.Namespace) -> str:
    if args.masters:
        return str(args.masters)
    if os.environ.get(ENV_MASTERS):
        return os.environ[ENV_MASTERS]
    from dfs.launch import master_addresses

    return ",".join(master_addresses())


def run(args: argparse.Namespace, out: Any = None) -> int:
    """Run one file command (see the module header); its exit status."""
    out = out or sys.stdout
    options: dict[str, Any] = {"password": args.password}
    if args.chunk_size:
        options["chunk_size"] = args.chunk_size
    try:
        with DfsClient(_masters(args), **options) as fs:
            COMMANDS[args.action](fs, args, out)
    except (DfsError, OSError, ValueError) as exc:
        print(f"dfs: {exc}", file=sys.stderr)
        return 1
    return 0


def _target(fs: DfsClient, remote: str, name: str) -> str:
    if remote.endswith("/"):
        return remote + name
    try:
        if fs.stat(remote)["type"] == "dir":
            return posixpath.join(remote, name)
    except DfsError:
        pass
    return remote


def _copy(src: BinaryIO, dst: BinaryIO, progress: Progress) -> None:
    """Copy, then close `dst` (for dfs: the upload's end) and finish the bar."""
    with dst:
        while piece := src.read(PIECE_BYTES):
            dst.write(piece)
            progress.update(len(piece))
    progress.done()


def cmd_put(fs: DfsClient, args: argparse.Namespace, out: Any) -> None:
    if args.local == "-":
        remote = args.remote
        fs.mkdir(posixpath.dirname(remote) or "/", parents=True)
        with fs.open(remote, "wb") as dst:
            _copy(sys.stdin.buffer, dst, Progress(f"put {remote}", None, quiet=args.quiet))
        return
    local = Path(args.local)
    remote = _target(fs, args.remote, local.name)
    fs.mkdir(posixpath.dirname(remote) or "/", parents=True)
    with open(local, "rb") as src, fs.open(remote, "wb") as dst:
        _copy(src, dst, Progress(f"put {remote}", local.stat().st_size, quiet=args.quiet))


def cmd_get(fs: DfsClient, args: argparse.Namespace, out: Any) -> None:
    stat = fs.stat(args.remote)
    if stat["type"] == "dir":
        raise ValueError(ERR_NOT_FILE.format(args.remote))
    local = Path(args.local)
    if local.is_dir():
        local = local / posixpath.basename(args.remote.rstrip("/"))
    partial = local.with_name(local.name + "._COPYING_")
    with fs.open(args.remote, "rb") as src, open(partial, "wb") as dst:
        _copy(src, dst, Progress(f"get {args.remote}", int(stat["size"]), quiet=args.quiet))
    os.replace(partial, local)


def cmd_cat(fs: DfsClient, args: argparse.Namespace, out: Any) -> None:
    sink = getattr(out, "buffer", out)
    for remote in args.remote:
        with fs.open(remote, "rb") as src:
            while piece := src.read(PIECE_BYTES):
                sink.write(piece)
    sink.flush()


def _row(path: str, stat: dict[str, Any]) -> str:
    kind = "d" if stat["type"] == "dir" else "-"
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(int(stat["mtime_ms"]) / 1000))
    return f"{kind} {int(stat.get('size', 0)):>12} {when} {path}"


def cmd_ls(fs: DfsClient, args: argparse.Namespace, out: Any) -> None:
    stat = fs.stat(args.path)
    if stat["type"] != "dir":
        print(_row(args.path, stat), file=out)
        return
    for name in fs.ls(args.path):
        path = posixpath.join(args.path, name.rstrip("/"))
        print(_row(path, fs.stat(path)), file=out)


def cmd_rm(fs: DfsClient, args: argparse.Namespace, out: Any) -> None:
    fs.delete(args.path, recursive=args.recursive)


def cmd_mv(fs: DfsClient, args: argparse.Namespace, out: Any) -> None:
    fs.rename(args.src, _target(fs, args.dst, posixpath.basename(args.src.rstrip("/"))))


def cmd_mkdir(fs: DfsClient, args: argparse.Namespace, out: Any) -> None:
    fs.mkdir(args.path, parents=args.parents)


def cmd_stat(fs: DfsClient, args: argparse.Namespace, out: Any) -> None:
    for key, value in fs.stat(args.path).items():
        print(f"{key}: {value}", file=out)


def usage(fs: DfsClient, path: str) -> int:
    """Bytes of the files under `path` (a walk of FS.LS and FS.STAT, no recursion)."""
    total, todo = 0, [path]
    while todo:
        current = todo.pop()
        stat = fs.stat(current)
        if stat["type"] != "dir":
            total += int(stat.get("size", 0))
            continue
        todo += [posixpath.join(current, n.rstrip("/")) for n in fs.ls(current)]
    return total


def cmd_du(fs: DfsClient, args: argparse.Namespace, out: Any) -> None:
    if args.summary or fs.stat(args.path)["type"] != "dir":
        print(f"{usage(fs, args.path):>12}  {args.path}", file=out)
        return
    for name in fs.ls(args.path):
        path = posixpath.join(args.path, name.rstrip("/"))
        print(f"{usage(fs, path):>12}  {path}", file=out)


def cmd_admin(fs: DfsClient, args: argparse.Namespace, out: Any) -> None:
    if args.what == "decommission":
        decommission(fs, args, out)
        return
    for line in report_lines(fs.report()):
        print(line, file=out)


def _drain_bar(node: str, left: int, total: int, quiet: bool, end: str = "\r") -> None:
    if quiet:
        return
    share = (total - left) / total if total else 1.0
    bar = "#" * int(share * BAR_WIDTH)
    sys.stderr.write(f"decommission {node} [{bar:<{BAR_WIDTH}}] {share:4.0%} "
                     f"{left}/{total} chunks left{end}")
    sys.stderr.flush()


def decommission(fs: DfsClient, args: argparse.Namespace, out: Any) -> None:
    """Mark the node, then (unless --no-wait) show its drain as a bar of chunks moved off
    it until it holds none: then it may be stopped."""
    if not args.node:
        raise ValueError(ERR_NO_NODE)
    fs.decommission(args.node, cancel=args.cancel)
    if args.cancel:
        print(f"{args.node} is no longer decommissioning", file=out)
        return
    row = drain_state(fs.report(), args.node)
    total = int(row[2]) if row else 0
    while row and row[1] and int(row[2]) > 0 and not args.no_wait:
        total = max(total, int(row[2]))
        _drain_bar(args.node, int(row[2]), total, args.quiet)
        time.sleep(DRAIN_POLL_S)
        row = drain_state(fs.report(), args.node)
    if total and not args.no_wait:
        _drain_bar(args.node, int(row[2]) if row else 0, total, args.quiet, "\n")
    print(drain_line(row) if row else f"{args.node} is not marked", file=out)


COMMANDS = {"put": cmd_put, "get": cmd_get, "cat": cmd_cat, "ls": cmd_ls, "rm": cmd_rm,
            "mv": cmd_mv, "mkdir": cmd_mkdir, "stat": cmd_stat, "du": cmd_du,
            "admin": cmd_admin}
