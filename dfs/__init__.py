"""dfs: a replicated chunk file system (issue 13). This slice holds the masters' namespace.

Where the parts live: dfs/namespace.py is the namespace tree as a sans-I/O state machine
(the Raft log's entries and their replies), dfs/master.py the `dfs master` daemon on the
RESP-on-Raft service (core/raft_service.py), dfs/__main__.py the command line.
The data side: dfs/chunks.py (each file's chunks and versions, in the same log),
dfs/chunk_placement.py and dfs/chunk_commands.py (the leader's live view: locations from
reports, placement, leases, safe mode, re-replication), dfs/chunkserver.py with
dfs/chunk_store.py and dfs/chunk_wire.py (the chunk servers and their data path),
dfs/client.py with dfs/client_io.py (the client library), dfs/cli.py (the file commands),
dfs/fsspec_fs.py (dfs:// for fsspec).
"""
