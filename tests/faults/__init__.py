"""Fault drills on real network partitions: the host harness, client histories and checkers."""
