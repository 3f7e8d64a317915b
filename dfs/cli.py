"""The `dfs` file commands, as `hdfs dfs` has them, and `dfs admin report`:

    dfs put LOCAL REMOTE      dfs get REMOTE LOCAL     dfs cat REMOTE...
    dfs ls [PATH]             dfs rm [-r] PATH         dfs mv SRC DST
    dfs mkdir [-p] PATH       dfs stat PATH            dfs du [-s] PATH
    dfs chmod [-R] MODE PATH  dfs chown [-R] OWNER[:GROUP] PATH
    dfs versions PATH         dfs restore PATH VERSION dfs fsck [PATH]
    dfs admin report          dfs admin decommission [--cancel] [--no-wait] NODE

Every command takes `--masters HOST:PORT,...` (default: $DFS_MASTERS, else the three
masters of `make run`) and `--user NAME --password P` to log in as a dfs user (default:
$DFS_USER, $DFS_PASSWORD; a --password without a user is the masters' --requirepass). When
no master accepts a connection within 2 s the command says so and fails. put and get show
a progress bar on stderr (bytes, percent, rate; fsck a count of files checked, admin
decommission the chunks left; `--quiet` hides it). A REMOTE naming a directory (or ending
in "/") gets the local file's name, as with cp; put makes the directories above REMOTE that
are missing. Exit status: 0 done, 1 the file system refused or failed (the reason is
printed) or fsck found a missing chunk, 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import socket
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

from dfs import fsck
from dfs.admin import drain_line, drain_state, human, report_lines
from dfs.client import DfsClient, DfsError
from dfs.client_io import PIECE_BYTES
from dfs.client_master import DfsUnavailable, parse_masters

__all__ = ["ACTIONS", "Progress", "add_client_parsers", "human", "run"]

ENV_MASTERS = "DFS_MASTERS"
ENV_USER = "DFS_USER"
ENV_PASSWORD = "DFS_PASSWORD"
ACTIONS = ("put", "get", "cat", "ls", "rm", "mv", "mkdir", "stat", "du", "chmod", "chown",
           "versions", "restore", "fsck", "admin")
REACH_S = 2.0  # how long the masters get to accept a connection before the command fails
ERR_UNREACHABLE = "no dfs master reachable within {:g} s at {}: {}"
MAX_PROBE_BYTES = 4096
ERR_PREFIX = "ERR "  # a master's generic error word, left out of what the command prints
ERR_NOT_RESP = "not a dfs master (no RESP reply to PING)"
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
    parser.add_argument("--user", default=os.environ.get(ENV_USER),
                        help=f"log in as this dfs user (default: ${ENV_USER}; none: the "
                             "masters' default user)")
    parser.add_argument("--password", default=os.environ.get(ENV_PASSWORD),
                        help="the user's password, or without --user the masters' "
                             f"--requirepass (default: ${ENV_PASSWORD})")
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
        ("cat", "print dfs files to stdout", [
            (["remote"], {"nargs": "+", "help": "dfs paths"}),
            (["--version"], {"type": int, "default": None,
                             "help": "print this old version (see dfs versions) without "
                                     "restoring it"})]),
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
        ("chmod", "change a path's mode", [
            (["-R"], {"action": "store_true", "dest": "recursive",
                      "help": "and everything under the directory"}),
            (["mode"], {"help": "octal mode, e.g. 750"}), (["path"], {"help": "dfs path"})]),
        ("chown", "change a path's owner and group (superusers) or group", [
            (["-R"], {"action": "store_true", "dest": "recursive",
                      "help": "and everything under the directory"}),
            (["owner"], {"help": "OWNER, OWNER:GROUP or :GROUP"}),
            (["path"], {"help": "dfs path"})]),
        ("versions", "list a file's versions: version, time, size, current",
         [(["path"], {"help": "dfs file"})]),
        ("restore", "make an old version of a file current again",
         [(["path"], {"help": "dfs file"}),
          (["version"], {"type": int, "help": "the version number (see dfs versions)"})]),
        ("fsck", "report files with missing or under-replicated chunks (exit 1 if missing)",
         [(["path"], {"nargs": "?", "default": "/", "help": "dfs path (default /)"})]),
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
    options: dict[str, Any] = {"password": args.password, "username": args.user}
    if args.chunk_size:
        options["chunk_size"] = args.chunk_size
    try:
        masters = _masters(args)
        reachable(masters, args.user, args.password)
        with DfsClient(masters, **options) as fs:
            return int(COMMANDS[args.action](fs, args, out) or 0)
    except (DfsError, OSError, ValueError) as exc:
        text = str(exc)
        print(f"dfs: {text.removeprefix(ERR_PREFIX)}", file=sys.stderr)
        return 1


def reachable(masters: str, user: str | None = None, password: str | None = None,
              within_s: float = REACH_S) -> None:
    """Return once some master answers a PING, or with a `password` accepts the AUTH (a
    refused AUTH raises DfsError with the master's words at once); DfsUnavailable when none
    answers within `within_s` (every master tried in turn, each its share of the time)."""
    nodes = parse_masters(masters)
    words = [b"PING"] if password is None else [
        b"AUTH", *([user.encode()] if user else []), password.encode()]
    errors = []
    for host, port in nodes:
        try:
            line = _first_line(host, port, words, within_s / len(nodes))
        except OSError as exc:
            errors.append(f"{host}:{port}: {exc.strerror or exc}")
            continue
        if line.startswith(b"+"):
            return
        if line.startswith(b"-"):
            raise DfsError(line[1:].decode("utf-8", "replace"))
        errors.append(f"{host}:{port}: {ERR_NOT_RESP}")
    raise DfsUnavailable(ERR_UNREACHABLE.format(within_s, masters, "; ".join(errors)))


def _first_line(host: str, port: int, words: list[bytes], timeout_s: float) -> bytes:
    """Send one RESP command, return the first line of the reply (up to MAX_PROBE_BYTES)."""
    request = b"*%d\r\n" % len(words) + b"".join(
        b"$%d\r\n%s\r\n" % (len(w), w) for w in words)
    with socket.create_connection((host, port), timeout=timeout_s) as conn:
        conn.sendall(request)
        reply = b""
        while b"\r\n" not in reply and len(reply) < MAX_PROBE_BYTES:
            piece = conn.recv(MAX_PROBE_BYTES)
            if not piece:
                break
            reply += piece
    return reply.split(b"\r\n", 1)[0]


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
        with fs.open(remote, "rb", version=args.version) as src:
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


def _paths(fs: DfsClient, path: str, recursive: bool) -> list[str]:
    """`path`, and with `recursive` everything under it (a walk, parents first)."""
    found, todo = [], [path]
    while todo:
        current = todo.pop()
        found.append(current)
        if recursive and fs.stat(current)["type"] == "dir":
            todo += [posixpath.join(current, n.rstrip("/")) for n in fs.ls(current)]
    return found


def cmd_chmod(fs: DfsClient, args: argparse.Namespace, out: Any) -> None:
    for path in _paths(fs, args.path, args.recursive):
        fs.chmod(path, args.mode)


def cmd_chown(fs: DfsClient, args: argparse.Namespace, out: Any) -> None:
    for path in _paths(fs, args.path, args.recursive):
        fs.chown(path, args.owner)


def cmd_versions(fs: DfsClient, args: argparse.Namespace, out: Any) -> None:
    print(f"{'version':>7} {'modified':<16} {'size':>12}", file=out)
    for version, mtime_ms, size, _inode, current in fs.versions(args.path):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(int(mtime_ms) / 1000))
        print(f"{version:>7} {when:<16} {int(size):>12}{'  (current)' if current else ''}",
              file=out)


def cmd_restore(fs: DfsClient, args: argparse.Namespace, out: Any) -> None:
    fs.restore(args.path, args.version)
    print(f"{args.path}: version {args.version} restored", file=out)


def cmd_fsck(fs: DfsClient, args: argparse.Namespace, out: Any) -> int:
    shown = [time.monotonic()]

    def progress(files: int) -> None:
        if not args.quiet and time.monotonic() - shown[0] >= PROGRESS_EVERY_S:
            shown[0] = time.monotonic()
            sys.stderr.write(f"fsck {args.path}: {files} files checked\r")
            sys.stderr.flush()

    health = fsck.check(fs, args.path, progress)
    for line in fsck.lines(health, args.path):
        print(line, file=out)
    return 0 if health.healthy else 1


COMMANDS = {"put": cmd_put, "get": cmd_get, "cat": cmd_cat, "ls": cmd_ls, "rm": cmd_rm,
            "mv": cmd_mv, "mkdir": cmd_mkdir, "stat": cmd_stat, "du": cmd_du,
            "chmod": cmd_chmod, "chown": cmd_chown, "versions": cmd_versions,
            "restore": cmd_restore, "fsck": cmd_fsck, "admin": cmd_admin}
