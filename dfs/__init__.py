"""dfs: a replicated chunk file system (issue 13). This slice holds the masters' namespace.

Where the parts live: dfs/namespace.py is the namespace tree as a sans-I/O state machine
(the Raft log's entries and their replies), dfs/master.py the `dfs master` daemon on the
RESP-on-Raft service (core/raft_service.py), dfs/__main__.py the command line.
"""
