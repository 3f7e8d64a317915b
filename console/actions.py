"""What a logged-in user may do from the console, carried out with the daemons' own clients.

Strategy: a login is checked by the daemon itself: the console opens a connection to a node
of that daemon and sends `AUTH password`; only a daemon's OK admits the password (a daemon
without a password refuses AUTH, so nobody can log in to it and it stays read-only). Job
actions go through `scheduler.client.AsyncSchedulerClient` with the password the user logged
in with, so the scheduler applies its own rules (leader forwarding, failover) and its own
refusals, which the page shows as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from console.probes import PROBE_TIMEOUT_S, split_address
from core.resp_client import AsyncRespConnection, ReplyError, RespConnectionError
from scheduler.client import AsyncSchedulerClient, SchedulerError, SchedulerUnavailable

__all__ = ["ACTION_DEADLINE_S", "JOB_ACTIONS", "ActionError", "check_password", "job_action"]

JOB_ACTIONS: Final = ("pause", "resume", "run")
ACTION_DEADLINE_S: Final = 10.0

ERR_WRONG_PASSWORD: Final = "wrong password for {}: {}"
ERR_UNREACHABLE: Final = "no node of {} answered: {}"
ERR_ACTION: Final = "unknown action {!r} (pause, resume or run)"


class ActionError(Exception):
    """A login or an action refused; `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def check_password(daemon: str, addresses: Sequence[str], password: str) -> None:
    """Return if some node of `daemon` accepts `AUTH password`; raise ActionError (403 for a
    refused password, 503 when no node answers)."""
    failures = []
    for address in addresses:
        host, port = split_address(address)
        try:
            conn = await AsyncRespConnection.connect(host, port, timeout=PROBE_TIMEOUT_S,
                                                     password=password)
        except ReplyError as exc:
            raise ActionError(403, ERR_WRONG_PASSWORD.format(daemon, exc)) from None
        except (RespConnectionError, OSError) as exc:
            failures.append(f"{address}: {exc}")
            continue
        await conn.close()
        return
    raise ActionError(503, ERR_UNREACHABLE.format(daemon, "; ".join(failures)))


async def job_action(addresses: Sequence[str], password: str, action: str,
                     name: str) -> str | None:
    """Pause, resume or run job `name` now; returns the run id for `run`. Raises
    ActionError with the scheduler's refusal (409) or when it cannot be reached (503)."""
    if action not in JOB_ACTIONS:
        raise ActionError(400, ERR_ACTION.format(action))
    nodes = [split_address(a) for a in addresses]
    client = AsyncSchedulerClient(nodes, password=password, deadline_s=ACTION_DEADLINE_S)
    try:
        if action == "pause":
            await client.pause(name)
        elif action == "resume":
            await client.resume(name)
        else:
            return await client.run(name)
        return None
    except SchedulerError as exc:
        status = 503 if isinstance(exc, SchedulerUnavailable) else 409
        raise ActionError(status, str(exc)) from None
    finally:
        await client.close()
