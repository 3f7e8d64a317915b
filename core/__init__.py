"""Shared runtime of the infra-primitives daemons: only what two or more daemons use."""
