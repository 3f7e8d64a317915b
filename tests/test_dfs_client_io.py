"""dfs.client's file objects against a fake master link (no processes): a close whose
FS.COMPLETE or FS.RENAME was applied by a first try whose reply was lost (the failover core
sends it again, and the retry is refused) still succeeds, while a real refusal is raised;
and `open` takes only "rb" and "wb".
"""

from __future__ import annotations

from typing import Any

import pytest

from dfs.client import DfsClient
from dfs.client_io import ChunkWriter
from dfs.client_master import DfsError


class FakeMaster:
    """Answers as the masters would after a lost reply: the replies are scripted."""

    def __init__(self, replies: dict[str, Any]) -> None:
        self.replies = replies
        self.calls: list[tuple[Any, ...]] = []

    def call(self, *args: Any) -> Any:
        self.calls.append(args)
        reply = self.replies.get(args[0])
        if isinstance(reply, Exception):
            raise reply
        return reply


def writer(master: FakeMaster) -> ChunkWriter:
    return ChunkWriter(master, "/d/f", 1024, 5.0)  # type: ignore[arg-type]


def test_retries_refused_because_the_first_try_took_effect_are_success() -> None:
    master = FakeMaster({
        "FS.CREATE": DfsError("already exists '/d/f.1234abcd._COPYING_'"),
        "FS.COMPLETE": DfsError("file '/d/f.x._COPYING_' is complete: its chunks cannot change"),
        "FS.RENAME": DfsError("no such file or directory '/d/f.x._COPYING_'"),
        "FS.STAT": DfsError("no such file or directory '/d/f.x._COPYING_'"),
        "FS.LOCATE": [0, 1, []],
    })
    w = writer(master)
    w.close()
    assert [c[0] for c in master.calls] == ["FS.CREATE", "FS.COMPLETE", "FS.RENAME",
                                            "FS.STAT", "FS.LOCATE"]
    assert w.closed


def test_a_real_refusal_is_raised() -> None:
    master = FakeMaster({"FS.RENAME": DfsError("no such file or directory '/d'"),
                         "FS.STAT": {"type": "file"}})  # the temporary file is still there
    with pytest.raises(DfsError, match="no such file"):
        writer(master).close()
    with pytest.raises(DfsError, match="permission denied"):
        writer(FakeMaster({"FS.CREATE": DfsError("permission denied")}))


def test_open_takes_rb_and_wb_only() -> None:
    with DfsClient("127.0.0.1:1") as fs, pytest.raises(ValueError, match="'rb' or 'wb'"):
        fs.open("/x", "r+")
