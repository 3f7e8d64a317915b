"""dfs versions end to end: 3 masters and 3 chunk servers as processes; `dfs.client` writes a
file three times (each write commits by renaming its temporary file over the path), every
version is listed, and each one restored reads back its own bytes. Timeouts only detect
hangs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dfs.client import DfsClient
from tests.dfs_cluster import DfsCluster


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[DfsClient]:
    cluster = DfsCluster(tmp_path, chunkservers=3)
    try:
        cluster.start()
        with cluster.client() as client:
            yield client
    finally:
        cluster.stop()


def test_write_three_times_then_restore_and_read_each_version(fs: DfsClient) -> None:
    contents = [b"first\n", b"second, longer\n", b"third" * 1000]
    fs.mkdir("/v", parents=True)
    for data in contents:
        fs.write_bytes("/v/f", data)
    rows = fs.master.call("FS.VERSIONS", "/v/f")
    assert [(r[0], r[2], r[4]) for r in rows] == [
        (3, len(contents[2]), 1), (2, len(contents[1]), 0), (1, len(contents[0]), 0)]
    for number, data in enumerate(contents, start=1):
        if current(fs) != number:
            assert fs.master.call("FS.RESTORE", "/v/f", str(number)) in ("OK", b"OK")
        assert current(fs) == number
        assert fs.read_bytes("/v/f") == data, number


def current(fs: DfsClient) -> int:
    """The number of /v/f's current version."""
    (number,) = [r[0] for r in fs.master.call("FS.VERSIONS", "/v/f") if r[4] == 1]
    return int(number)
