"""An fsspec filesystem for `dfs://` paths, so pandas, dask and anything else on fsspec read
and write dfs files unchanged (pyarrow through `filesystem=`).

    import dfs.fsspec_fs  # registers the "dfs" protocol with fsspec
    df.to_csv("dfs:///data/t.csv", storage_options={"masters": "127.0.0.1:7481"})
    pd.read_csv("dfs://127.0.0.1:7481/data/t.csv")

Strategy: a thin adapter over `dfs.client.DfsClient`: files are the client's buffered
binary files (fsspec wraps them for text modes), listings and info come from FS.LS and
FS.STAT. The masters come from `masters=` ("host:port,..."), else the URL's host:port,
else the DFS_MASTERS environment variable. Importing this module registers the protocol
(`fsspec.register_implementation`).
"""

from __future__ import annotations

import os
from typing import Any

import fsspec
from fsspec.spec import AbstractFileSystem
from fsspec.utils import infer_storage_options

from dfs.client import DfsClient, DfsError

__all__ = ["ENV_MASTERS", "ERR_NO_MASTERS", "PROTOCOL", "DfsFileSystem"]

PROTOCOL = "dfs"
ENV_MASTERS = "DFS_MASTERS"
ERR_NO_MASTERS = ("no dfs masters: pass masters='host:port,...', put one in the URL "
                  "(dfs://host:port/path) or set DFS_MASTERS")
ERR_MODE = "dfs files are opened 'rb' or 'wb', not {!r}"


class DfsFileSystem(AbstractFileSystem):
    """`DfsFileSystem(masters="h:p,h:p", password=None, chunk_size=...)` (see the module
    header)."""

    protocol = PROTOCOL
    root_marker = "/"

    def __init__(self, masters: str | None = None, password: str | None = None,
                 **options: Any) -> None:
        super().__init__(masters=masters, password=password, **options)
        masters = masters or options.pop("host", None) or os.environ.get(ENV_MASTERS)
        if not masters:
            raise ValueError(ERR_NO_MASTERS)
        client_options = {k: v for k, v in options.items() if k in ("chunk_size",
                                                                    "deadline_s")}
        self.client = DfsClient(masters, password=password, **client_options)

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]  # type: ignore[return-value]
        if path.startswith(PROTOCOL + "://"):
            path = path[len(PROTOCOL) + 3:]
            if not path.startswith("/"):
                path = "/" + path.partition("/")[2]  # drop the host:port part
        path = "/" + path.lstrip("/")
        return path.rstrip("/") or "/"

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        options = infer_storage_options(path)
        if options.get("host"):
            port = options.get("port")
            return {"masters": f"{options['host']}:{port}" if port else options["host"]}
        return {}

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        try:
            stat = self.client.stat(path)
        except DfsError as exc:
            if "no such" in str(exc):
                raise FileNotFoundError(path) from None
            raise
        kind = "directory" if stat["type"] == "dir" else "file"
        return {"name": path, "size": int(stat.get("size", 0)), "type": kind,
                "mtime_ms": stat.get("mtime_ms")}

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        if self.info(path)["type"] == "file":
            return [self.info(path)] if detail else [path]
        names = [n.rstrip("/") for n in self.client.ls(path)]
        full = [f"{path.rstrip('/')}/{n}" for n in names]
        return [self.info(p) for p in full] if detail else full

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if mode not in ("rb", "wb"):
            raise ValueError(ERR_MODE.format(mode))
        return self.client.open(self._strip_protocol(path), mode)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        self.client.mkdir(self._strip_protocol(path), parents=create_parents)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        path = self._strip_protocol(path)
        if not exist_ok and self.exists(path):
            raise FileExistsError(path)
        self.client.mkdir(path, parents=True)

    def rmdir(self, path: str) -> None:
        self.client.delete(self._strip_protocol(path))

    def _rm(self, path: str) -> None:
        self.client.delete(self._strip_protocol(path), recursive=True)

    def mv(self, path1: str, path2: str, recursive: bool = False, maxdepth: Any = None,
           **kwargs: Any) -> None:
        self.client.rename(self._strip_protocol(path1), self._strip_protocol(path2),
                           replace=True)


fsspec.register_implementation(PROTOCOL, DfsFileSystem, clobber=True)
