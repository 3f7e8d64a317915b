"""The replies of COMMAND, COMMAND INFO and COMMAND DOCS, built from command table rows in
Redis 7's shapes, so cluster clients (redis-py's RedisCluster, redis-cli) read them as they
read Redis's.

COMMAND INFO gives each command as a 10-element array: name, arity, flags, first key, last
key, key step, ACL categories, tips, key specs, subcommands. Flags, categories, tips and key
specs are sets (RESP3 `~`, RESP2 arrays), each key spec a map of flags, begin_search and
find_keys; subcommands an array (an empty set when there are none), as Redis 7.0 sends them.
COMMAND DOCS maps each name to a map of summary, since, group, complexity (when known) and
subcommands (when any); RESP2 flattens every map into an array. Values are plain reply
values; core.resp encodes them.
"""

from __future__ import annotations

from core.command_table import (
    BeginIndex,
    BeginKeyword,
    Command,
    FindKeynum,
    FindRange,
    KeySpec,
    Resolved,
    full_name_of,
)
from core.resp import RespSet, Simple


def info_entry(resolved: Resolved) -> list[object]:
    """COMMAND INFO's array for one row (a container lists its subcommands' arrays)."""
    command = resolved.command
    # Redis 7 sends a container's subcommands as an array, and no subcommands as an empty set.
    subcommands: list[object] = [
        info_entry(Resolved(sub, full_name_of(command, sub))) for sub in command.subcommands
    ] or RespSet()
    return [
        resolved.full_name,
        command.arity,
        RespSet(Simple(flag) for flag in command.reply_flags),
        command.first_key,
        command.last_key,
        command.key_step,
        RespSet(Simple("@" + category) for category in command.acl_categories),
        RespSet(command.tips),
        RespSet(key_spec_entry(spec) for spec in command.key_specs),
        subcommands,
    ]


def key_spec_entry(spec: KeySpec) -> dict[str, object]:
    """One key spec as Redis 7 describes it: flags, begin_search, find_keys."""
    return {
        "flags": RespSet(Simple(flag) for flag in spec.flags),
        "begin_search": _begin_entry(spec.begin),
        "find_keys": _find_entry(spec.find),
    }


def _begin_entry(begin: BeginIndex | BeginKeyword) -> dict[str, object]:
    if isinstance(begin, BeginIndex):
        return {"type": "index", "spec": {"index": begin.index}}
    return {"type": "keyword", "spec": {"keyword": begin.keyword, "startfrom": begin.startfrom}}


def _find_entry(find: FindRange | FindKeynum) -> dict[str, object]:
    if isinstance(find, FindRange):
        spec = {"lastkey": find.lastkey, "keystep": find.keystep, "limit": find.limit}
        return {"type": "range", "spec": spec}
    spec = {"keynumidx": find.keynumidx, "firstkey": find.firstkey, "keystep": find.keystep}
    return {"type": "keynum", "spec": spec}


def docs_entry(resolved: Resolved, since: str, group: str) -> dict[str, object]:
    """COMMAND DOCS's map for one row; `since` and `group` fill a row that leaves them out."""
    command = resolved.command
    entry: dict[str, object] = {
        "summary": command.summary,
        "since": command.since or since,
        "group": command.group or group,
    }
    if command.complexity:
        entry["complexity"] = command.complexity
    if command.subcommands:
        entry["subcommands"] = {
            full_name_of(command, sub): docs_entry(
                Resolved(sub, full_name_of(command, sub)),
                since,
                command.group or group,
            )
            for sub in command.subcommands
        }
    return entry


def help_lines(command: Command) -> list[Simple]:
    """CONFIG HELP and the like: the container's usage, then each subcommand and its
    summary, as status lines."""
    lines = [Simple(f"{command.name} <subcommand> [<arg> [value] [opt] ...]. Subcommands are:")]
    for sub in command.subcommands:
        lines.append(Simple(sub.name))
        lines.append(Simple(f"    {sub.summary}"))
    return lines
