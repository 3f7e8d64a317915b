"""Fault drills on real network partitions: the host harness, client histories and checkers.

Fault drills
------------
A drill (`drill(seed, duration_s, workdir) -> DrillReport`, tests/faults/drill.py) starts a
daemon's nodes as real processes in harness hosts (hosts.py), runs clients inside host
namespaces that record every operation (history.py: invoke, then ok, fail or info), lets a
`Nemesis` inject seeded faults meanwhile (partitions, one-way cuts, random loss, kills,
pauses, clock jumps), heals, lets the cluster settle, and checks the history (checkers.py,
linearizable.py); a failing round leaves its history and a readable report (report.py) in
its workdir. Drills are registered by name in drills.py. `make test` runs one short seeded
round of each (tests/test_drill_<name>.py, skipped where namespaces cannot be built);
`make drills` (run_drills.py) runs long randomized rounds and prints a table per daemon:
rounds, operations, faults injected, violations and the seeds to replay one with
`python -m tests.faults.run_drills --one NAME --seed S --duration D`.
"""
