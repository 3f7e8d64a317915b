"""The commands every RESP daemon answers, with Redis's replies and error texts, so that
redis-cli, redis-benchmark and redis-py work unchanged against our daemons.

One function per command; `common_commands(server)` returns their table rows.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from core.resp import OK, CommandError, Simple, Verbatim

if TYPE_CHECKING:
    from core.resp_server import Command, RespServer, Session

ERR_NOPROTO = "NOPROTO unsupported protocol version"
ERR_WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."
ERR_NO_PASSWORD = (
    "ERR AUTH <password> called without any password configured for the default user. "
    "Are you sure your configuration is correct?"
)
ERR_HELLO_NOAUTH = (
    "NOAUTH HELLO must be called with the client already authenticated, otherwise the "
    "HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and "
    "select the RESP protocol version at the same time"
)
ERR_SYNTAX = "ERR syntax error"
ERR_UNKNOWN_SUBCOMMAND = "ERR unknown subcommand '{}'. Try {} HELP."
ERR_CLIENT_NAME = "ERR Client names cannot contain spaces, newlines or special characters."
ERR_DB_RANGE = "ERR DB index is out of range"
ERR_NOT_INTEGER = "ERR value is not an integer or out of range"
DEFAULT_INFO_SKIPS = {"commandstats"}


def common_commands(server: RespServer) -> list[Command]:
    from core.resp_server import Command

    def row(name: str, handler, arity: int, *flags: str, summary: str = "") -> Command:
        return Command(name, lambda s, a: handler(server, s, a), arity, frozenset(flags), summary)

    return [
        row("PING", cmd_ping, -1, summary="Answer PONG, or echo the argument"),
        row("ECHO", cmd_echo, 2, summary="Echo the argument"),
        row("HELLO", cmd_hello, -1, "noauth", summary="Choose RESP2 or RESP3, authenticate"),
        row("AUTH", cmd_auth, -2, "noauth", summary="Authenticate with --requirepass"),
        row("QUIT", cmd_quit, -1, "noauth", summary="Close the connection"),
        row("INFO", cmd_info, -1, summary="Server figures by section"),
        row("COMMAND", cmd_command, -1, summary="Describe the command table"),
        row("CLIENT", cmd_client, -2, summary="Connection name, id, library info"),
        row("CONFIG", cmd_config, -2, summary="CONFIG GET of the known settings"),
        row("SELECT", cmd_select, 2, summary="Accepts database 0 only"),
    ]


def parse_int(raw: bytes, error: str = ERR_NOT_INTEGER) -> int:
    """A decimal integer argument, or CommandError(`error`)."""
    digits = raw[1:] if raw[:1] == b"-" else raw
    if not digits.isdigit() or len(digits) > 19:
        raise CommandError(error)
    return int(raw)


def cmd_ping(server: RespServer, session: Session, args: list[bytes]) -> object:
    if len(args) > 2:
        raise CommandError("ERR wrong number of arguments for 'ping' command")
    return args[1] if len(args) == 2 else Simple("PONG")


def cmd_echo(server: RespServer, session: Session, args: list[bytes]) -> object:
    return args[1]


def _check_password(server: RespServer, username: bytes, password: bytes) -> None:
    if server.password is None:
        raise CommandError(ERR_NO_PASSWORD)
    good = hmac.compare_digest(password, server.password.encode())
    if username != b"default" or not good:
        raise CommandError(ERR_WRONGPASS)


def cmd_auth(server: RespServer, session: Session, args: list[bytes]) -> object:
    if len(args) > 3:
        raise CommandError(ERR_SYNTAX)
    username = args[1] if len(args) == 3 else b"default"
    if server.password is None and len(args) == 3:
        # As Redis's passwordless default user: any password for "default" is accepted.
        if username != b"default":
            raise CommandError(ERR_WRONGPASS)
        session.authenticated = True
        return OK
    _check_password(server, username, args[-1])
    session.authenticated = True
    return OK


def cmd_hello(server: RespServer, session: Session, args: list[bytes]) -> object:
    protocol = session.protocol
    if len(args) >= 2:
        digits = args[1]
        if not digits.isdigit() or int(digits) not in (2, 3):
            raise CommandError(ERR_NOPROTO)
        protocol = int(digits)
    index = 2
    name: str | None = None
    while index < len(args):
        option = args[index].upper()
        if option == b"AUTH" and index + 2 < len(args):
            _check_password(server, args[index + 1], args[index + 2])
            session.authenticated = True
            index += 3
        elif option == b"SETNAME" and index + 1 < len(args):
            name = _client_name(args[index + 1])
            index += 2
        else:
            option = args[index].decode(errors="replace")
            raise CommandError(f"ERR Syntax error in HELLO option '{option}'")
    if not session.authenticated:
        raise CommandError(ERR_HELLO_NOAUTH)
    session.protocol = protocol
    if name is not None:
        session.name = name
    return {
        "server": server.name,
        "version": server.version,
        "proto": protocol,
        "id": session.id,
        "mode": "standalone",
        "role": "master",
        "modules": [],
    }


def cmd_quit(server: RespServer, session: Session, args: list[bytes]) -> object:
    session.close_after_reply = True
    return OK


def cmd_info(server: RespServer, session: Session, args: list[bytes]) -> object:
    wanted = {a.decode("utf-8", "replace").lower() for a in args[1:]}
    everything = not wanted or bool(wanted & {"all", "everything"})
    lines: list[str] = []
    for title, fields in server.info_sections().items():
        key = title.lower()
        if everything and (wanted or key not in DEFAULT_INFO_SKIPS) or key in wanted:
            if lines:
                lines.append("")
            lines.append(f"# {title}")
            lines.extend(f"{name}:{value}" for name, value in fields.items())
    return Verbatim("\r\n".join(lines) + "\r\n" if lines else "")


def _command_info(command: Command) -> list[object]:
    flags = [Simple(f) for f in sorted(command.flags)]
    return [command.name.lower(), command.arity, flags, 0, 0, 0, [], [], [], []]


def cmd_command(server: RespServer, session: Session, args: list[bytes]) -> object:
    table = server.commands
    if len(args) == 1:
        return [_command_info(c) for c in table.values()]
    sub = args[1].upper()
    if sub == b"COUNT":
        return len(table)
    if sub == b"LIST":
        return [c.name.lower() for c in table.values()]
    if sub == b"INFO":
        return [
            _command_info(table[n.upper()]) if n.upper() in table else None for n in args[2:]
        ]
    if sub == b"DOCS":
        names = [n.upper() for n in args[2:]] or list(table)
        return {
            table[n].name.lower(): {"summary": table[n].summary, "since": "0.1.0"}
            for n in names
            if n in table
        }
    raise CommandError(ERR_UNKNOWN_SUBCOMMAND.format(args[1].decode(errors="replace"), "COMMAND"))


def _client_name(raw: bytes) -> str:
    if any(b <= 32 or b >= 127 for b in raw):
        raise CommandError(ERR_CLIENT_NAME)
    return raw.decode()


def cmd_client(server: RespServer, session: Session, args: list[bytes]) -> object:
    sub = args[1].upper()
    if sub == b"SETNAME" and len(args) == 3:
        session.name = _client_name(args[2])
        return OK
    if sub == b"GETNAME" and len(args) == 2:
        return session.name or None
    if sub == b"ID" and len(args) == 2:
        return session.id
    if sub == b"SETINFO" and len(args) == 4:
        attr = args[2].lower()
        if attr == b"lib-name":
            session.lib_name = _client_name(args[3])
        elif attr == b"lib-ver":
            session.lib_ver = _client_name(args[3])
        else:
            raise CommandError(f"ERR Unrecognized option '{args[2].decode(errors='replace')}'")
        return OK
    if sub in (b"LIST", b"INFO") and len(args) == 2:
        chosen = server.sessions.values() if sub == b"LIST" else [session]
        return "".join(_client_line(s) for s in chosen)
    raise CommandError(ERR_UNKNOWN_SUBCOMMAND.format(args[1].decode(errors="replace"), "CLIENT"))


def _client_line(session: Session) -> str:
    return (
        f"id={session.id} addr={session.peer} name={session.name} resp={session.protocol} "
        f"lib-name={session.lib_name} lib-ver={session.lib_ver} "
        f"cmd={session.last_command.lower()}\n"
    )


def cmd_config(server: RespServer, session: Session, args: list[bytes]) -> object:
    if args[1].upper() == b"GET" and len(args) < 3:
        raise CommandError("ERR wrong number of arguments for 'config|get' command")
    if args[1].upper() == b"GET":
        return server.config_get([a.decode("utf-8", "replace") for a in args[2:]])
    raise CommandError(ERR_UNKNOWN_SUBCOMMAND.format(args[1].decode(errors="replace"), "CONFIG"))


def cmd_select(server: RespServer, session: Session, args: list[bytes]) -> object:
    if parse_int(args[1]) != 0:
        raise CommandError(ERR_DB_RANGE)
    return OK
