"""The commands every RESP daemon answers, with Redis's replies and error texts, so that
redis-cli, redis-benchmark and redis-py work unchanged against our daemons.

One function per command or subcommand; `common_commands(server)` returns their table rows,
whose arity, flags, ACL categories and tips are Redis 7's for the same commands (the
dispatcher checks arity from them, so no handler counts its arguments). COMMAND and its
subcommands answer from the server's table (core.command_info builds the reply shapes).
Handlers see the server as a core.resp_session.ServerView, never core.resp_server itself.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any

from core.command_info import docs_entry, help_lines, info_entry
from core.command_table import Command, KeysError, KeySpec, Resolved, keys_and_specs
from core.resp import OK, CommandError, RespSet, Simple, Verbatim
from core.resp_session import ServerView, Session
from core.users import DEFAULT_USER

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
ERR_HELLO_OPTION = "ERR Syntax error in HELLO option '{}'"
ERR_SYNTAX = "ERR syntax error"
ERR_CLIENT_NAME = "ERR Client names cannot contain spaces, newlines or special characters."
ERR_CLIENT_OPTION = "ERR Unrecognized option '{}'"
ERR_DB_RANGE = "ERR DB index is out of range"
ERR_NOT_INTEGER = "ERR value is not an integer or out of range"
ERR_GETKEYS_COMMAND = "ERR Invalid command specified"
ERR_GETKEYS_ARITY = "ERR Invalid number of arguments specified for command"
ERR_GETKEYS_NONE = "ERR The command has no key arguments"
ERR_GETKEYS_ARGS = "ERR Invalid arguments specified for command"
DEFAULT_INFO_SKIPS = {"commandstats"}

CONNECTION = "connection"
SERVER = "server"
# Redis's flag sets for these commands.
SESSION_FLAGS = ("noscript", "loading", "stale", "fast", "no_auth", "allow_busy")
QUICK_FLAGS = ("loading", "stale", "fast")
INTROSPECTION_FLAGS = ("loading", "stale")
CLIENT_FLAGS = ("noscript", "loading", "stale")
ADMIN_FLAGS = ("admin", "noscript", "loading", "stale")
ALL_SHARDS_TIPS = ("request_policy:all_shards", "response_policy:all_succeeded")

ServerHandler = Callable[[ServerView, Session, list[bytes]], Any]


def common_commands(server: ServerView) -> list[Command]:
    """The rows of the commands every RESP daemon answers, bound to `server`."""

    def row(
        name: str, handler: ServerHandler | None, arity: int, flags: tuple[str, ...] = (),
        **more: Any,
    ) -> Command:
        bound = None if handler is None else _bind(handler, server)
        return Command(name, bound, arity, frozenset(flags), **more)

    command_subs = (
        row("COUNT", cmd_command_count, 2, INTROSPECTION_FLAGS, acl=(CONNECTION,),
            summary="Number of commands in the table"),
        row("LIST", cmd_command_list, -2, INTROSPECTION_FLAGS, acl=(CONNECTION,),
            tips=("nondeterministic_output_order",),
            summary="Names of every command and subcommand [FILTERBY ACLCAT c|PATTERN p]"),
        row("INFO", cmd_command_info, -2, INTROSPECTION_FLAGS, acl=(CONNECTION,),
            tips=("nondeterministic_output_order",),
            summary="Arity, flags, key positions and key specs of the named commands"),
        row("DOCS", cmd_command_docs, -2, INTROSPECTION_FLAGS, acl=(CONNECTION,),
            tips=("nondeterministic_output_order",),
            summary="Summary, since and group of the named commands"),
        row("GETKEYS", cmd_command_getkeys, -4, INTROSPECTION_FLAGS, acl=(CONNECTION,),
            summary="The keys a full command names"),
        row("GETKEYSANDFLAGS", cmd_command_getkeysandflags, -4, INTROSPECTION_FLAGS,
            acl=(CONNECTION,), summary="The keys a full command names, each with its flags"),
        _help_row(row, "COMMAND", acl=(CONNECTION,)),
    )
    client_subs = (
        row("SETNAME", cmd_client_setname, 3, CLIENT_FLAGS, acl=(CONNECTION,),
            summary="Name this connection"),
        row("GETNAME", cmd_client_getname, 2, CLIENT_FLAGS, acl=(CONNECTION,),
            summary="This connection's name"),
        row("ID", cmd_client_id, 2, CLIENT_FLAGS, acl=(CONNECTION,),
            summary="This connection's id"),
        row("SETINFO", cmd_client_setinfo, 4, CLIENT_FLAGS, acl=(CONNECTION,),
            summary="Record the client library's name (lib-name) or version (lib-ver)"),
        row("LIST", cmd_client_list, -2, ADMIN_FLAGS, acl=(CONNECTION,),
            tips=("nondeterministic_output",), summary="One line per open connection"),
        row("INFO", cmd_client_info, 2, CLIENT_FLAGS, acl=(CONNECTION,),
            tips=("nondeterministic_output",), summary="This connection's line"),
        _help_row(row, "CLIENT", acl=(CONNECTION,)),
    )
    config_subs = (
        row("GET", cmd_config_get, -3, ADMIN_FLAGS,
            summary="Settings whose names match the glob patterns, with their values"),
        _help_row(row, "CONFIG"),
    )
    return [
        row("PING", cmd_ping, -1, ("fast",), max_arity=2, acl=(CONNECTION,), group=CONNECTION,
            tips=ALL_SHARDS_TIPS, summary="PONG, or the argument back"),
        row("ECHO", cmd_echo, 2, QUICK_FLAGS, acl=(CONNECTION,), group=CONNECTION,
            summary="The argument back"),
        row("HELLO", cmd_hello, -1, SESSION_FLAGS, acl=(CONNECTION,), group=CONNECTION,
            summary="Choose RESP2 or RESP3, authenticate, name the connection"),
        row("AUTH", cmd_auth, -2, SESSION_FLAGS, acl=(CONNECTION,), group=CONNECTION,
            summary="Authenticate as a named user, or as the default user with --requirepass"),
        row("QUIT", cmd_quit, -1, SESSION_FLAGS, acl=(CONNECTION,), group=CONNECTION,
            summary="Close the connection after the reply"),
        row("INFO", cmd_info, -1, INTROSPECTION_FLAGS, acl=("dangerous",), group=SERVER,
            tips=("nondeterministic_output", "request_policy:all_shards",
                  "response_policy:special"),
            summary="Server figures by section"),
        row("COMMAND", cmd_command, -1, INTROSPECTION_FLAGS, acl=(CONNECTION,), group=SERVER,
            tips=("nondeterministic_output_order",), subcommands=command_subs,
            summary="Every command's arity, flags, key positions and key specs"),
        row("CLIENT", None, -2, group=CONNECTION, subcommands=client_subs,
            summary="Connection name, id and library, the list of connections"),
        row("CONFIG", None, -2, group=SERVER, subcommands=config_subs,
            summary="Read the settings"),
        row("SELECT", cmd_select, 2, QUICK_FLAGS, acl=(CONNECTION,), group=CONNECTION,
            summary="Accepts database 0 only"),
    ]


def _bind(handler: ServerHandler, server: ServerView) -> Callable[[Session, list[bytes]], Any]:
    def bound(session: Session, args: list[bytes]) -> Any:
        return handler(server, session, args)

    return bound


def _help_row(row: Callable[..., Command], parent: str, **more: Any) -> Command:
    # The reply lists the parent's other subcommands; cmd_help finds the parent by name.
    def handler(server: ServerView, session: Session, args: list[bytes]) -> object:
        container = server.table.get(parent.encode())
        assert container is not None
        return help_lines(container)

    return row("HELP", handler, 2, INTROSPECTION_FLAGS, summary="This help", **more)


def parse_int(raw: bytes, error: str = ERR_NOT_INTEGER) -> int:
    """A decimal integer argument, or CommandError(`error`)."""
    digits = raw[1:] if raw[:1] == b"-" else raw
    if not digits.isdigit() or len(digits) > 19:
        raise CommandError(error)
    return int(raw)


def cmd_ping(server: ServerView, session: Session, args: list[bytes]) -> object:
    return args[1] if len(args) == 2 else Simple("PONG")


def cmd_echo(server: ServerView, session: Session, args: list[bytes]) -> object:
    return args[1]


def _check_password(server: ServerView, session: Session, username: bytes,
                    password: bytes) -> None:
    """Authenticate `session` as `username` or raise Redis's error: a named user is checked
    against the daemon's user table (core.users), the default user against --requirepass."""
    name = username.decode("utf-8", "replace")
    if name != DEFAULT_USER:
        if server.users is None or not server.users.verify(name, password):
            raise CommandError(ERR_WRONGPASS)
    else:
        if server.password is None:
            raise CommandError(ERR_NO_PASSWORD)
        if not hmac.compare_digest(password, server.password.encode()):
            raise CommandError(ERR_WRONGPASS)
    session.user = name
    session.authenticated = True


def cmd_auth(server: ServerView, session: Session, args: list[bytes]) -> object:
    if len(args) > 3:
        raise CommandError(ERR_SYNTAX)
    username = args[1] if len(args) == 3 else DEFAULT_USER.encode()
    if server.password is None and len(args) == 3 and username == DEFAULT_USER.encode():
        # As Redis's passwordless default user: any password for "default" is accepted.
        session.user = DEFAULT_USER
        session.authenticated = True
        return OK
    _check_password(server, session, username, args[-1])
    return OK


def cmd_hello(server: ServerView, session: Session, args: list[bytes]) -> object:
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
            _check_password(server, session, args[index + 1], args[index + 2])
            index += 3
        elif option == b"SETNAME" and index + 1 < len(args):
            name = _client_name(args[index + 1])
            index += 2
        else:
            option = args[index].decode(errors="replace")
            raise CommandError(ERR_HELLO_OPTION.format(option))
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
        "mode": server.mode,
        "role": "master",
        "modules": [],
    }


def cmd_quit(server: ServerView, session: Session, args: list[bytes]) -> object:
    session.close_after_reply = True
    return OK


def cmd_info(server: ServerView, session: Session, args: list[bytes]) -> object:
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


def cmd_command(server: ServerView, session: Session, args: list[bytes]) -> object:
    return [info_entry(Resolved(c, c.name.lower())) for c in server.table]


def cmd_command_count(server: ServerView, session: Session, args: list[bytes]) -> object:
    return len(server.table)


def cmd_command_list(server: ServerView, session: Session, args: list[bytes]) -> object:
    names = list(server.table.walk())
    if len(args) == 2:
        return [r.full_name for r in names]
    if len(args) != 5 or args[2].upper() != b"FILTERBY":
        raise CommandError(ERR_SYNTAX)
    kind, value = args[3].upper(), args[4].decode("utf-8", "replace")
    if kind == b"PATTERN":
        return [r.full_name for r in names if fnmatchcase(r.full_name, value.lower())]
    if kind == b"ACLCAT":
        category = value.lower()
        return [r.full_name for r in names if category in r.command.acl_categories]
    if kind == b"MODULE":
        return []
    raise CommandError(ERR_SYNTAX)


def cmd_command_info(server: ServerView, session: Session, args: list[bytes]) -> object:
    if len(args) == 2:
        return cmd_command(server, session, args)
    found = (server.table.find(name) for name in args[2:])
    return [None if resolved is None else info_entry(resolved) for resolved in found]


def cmd_command_docs(server: ServerView, session: Session, args: list[bytes]) -> object:
    if len(args) == 2:
        chosen = [Resolved(c, c.name.lower()) for c in server.table]
    else:
        chosen = [r for r in map(server.table.find, args[2:]) if r is not None]
    return {r.full_name: docs_entry(r, server.version, server.name) for r in chosen}


def cmd_command_getkeys(server: ServerView, session: Session, args: list[bytes]) -> object:
    return [key for key, _ in _request_keys(server, args[2:])]


def cmd_command_getkeysandflags(
    server: ServerView, session: Session, args: list[bytes]
) -> object:
    return [
        [key, RespSet(Simple(flag) for flag in spec.flags)]
        for key, spec in _request_keys(server, args[2:])
    ]


def _request_keys(server: ServerView, request: list[bytes]) -> list[tuple[bytes, KeySpec]]:
    """The keys of a full request and their specs, or Redis's COMMAND GETKEYS errors."""
    command = server.table.get(request[0])
    if command is not None and command.subcommands:
        command = command.by_name.get(request[1].upper()) if len(request) > 1 else None
    if command is None:
        raise CommandError(ERR_GETKEYS_COMMAND)
    if not command.key_specs:
        raise CommandError(ERR_GETKEYS_NONE)
    if not command.min_args <= len(request) <= command.max_args:
        raise CommandError(ERR_GETKEYS_ARITY)
    try:
        keys = keys_and_specs(command, request)
    except KeysError:
        raise CommandError(ERR_GETKEYS_ARGS) from None
    if not keys and "no_mandatory_keys" not in command.flags:
        raise CommandError(ERR_GETKEYS_ARGS)
    return keys


def _client_name(raw: bytes) -> str:
    if any(b <= 32 or b >= 127 for b in raw):
        raise CommandError(ERR_CLIENT_NAME)
    return raw.decode()


def cmd_client_setname(server: ServerView, session: Session, args: list[bytes]) -> object:
    session.name = _client_name(args[2])
    return OK


def cmd_client_getname(server: ServerView, session: Session, args: list[bytes]) -> object:
    return session.name or None


def cmd_client_id(server: ServerView, session: Session, args: list[bytes]) -> object:
    return session.id


def cmd_client_setinfo(server: ServerView, session: Session, args: list[bytes]) -> object:
    attr = args[2].lower()
    if attr == b"lib-name":
        session.lib_name = _client_name(args[3])
    elif attr == b"lib-ver":
        session.lib_ver = _client_name(args[3])
    else:
        raise CommandError(ERR_CLIENT_OPTION.format(args[2].decode(errors="replace")))
    return OK


def cmd_client_list(server: ServerView, session: Session, args: list[bytes]) -> object:
    if len(args) > 2:  # Redis's TYPE and ID filters are not offered
        raise CommandError(ERR_SYNTAX)
    return "".join(_client_line(s) for s in server.sessions.values())


def cmd_client_info(server: ServerView, session: Session, args: list[bytes]) -> object:
    return _client_line(session)


def _client_line(session: Session) -> str:
    return (
        f"id={session.id} addr={session.peer} name={session.name} resp={session.protocol} "
        f"lib-name={session.lib_name} lib-ver={session.lib_ver} "
        f"cmd={session.last_command.lower()}\n"
    )


def cmd_config_get(server: ServerView, session: Session, args: list[bytes]) -> object:
    return server.config_get([a.decode("utf-8", "replace") for a in args[2:]])


def cmd_select(server: ServerView, session: Session, args: list[bytes]) -> object:
    if parse_int(args[1]) != 0:
        raise CommandError(ERR_DB_RANGE)
    return OK
