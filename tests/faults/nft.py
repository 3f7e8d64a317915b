"""Network faults as data, and the nftables rules that carry them out in each namespace.

Strategy: the harness keeps one `FaultPlan`: a set of directed cuts (packets from `src` to
`dst` are dropped) and a map of loss probabilities (packets from `src`, or from anyone, to
`dst` are dropped at random). Every fault call edits the plan; the rules of each host are then
derived from the plan alone (`ruleset(...)`), so calling a fault twice changes nothing and
faults add up until `heal()` empties the plan. All drops happen at the receiver, in the input
hook of a table the harness owns (`inet faultharness`), matching `ip saddr`. A host's table is
replaced in one `nft -f` transaction (declare, flush, refill), so a change is atomic and a host
whose rules did not change is not touched. Random loss uses `numgen random mod LOSS_SCALE`.

What a one-way cut means for TCP: dropping only `src -> dst` also breaks TCP in the other
direction, since a connection `dst -> src` needs `src`'s SYN-ACK and ACKs to arrive at `dst`.
Only datagrams (UDP) show the one-way behaviour itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.faults import netns

TABLE = "faultharness"
LOSS_SCALE = 10_000  # probabilities are applied in steps of 1 / LOSS_SCALE
INNER_LINK = "eth0"  # every host's link to the bridge has this name inside its namespace
ANY = "*"  # a loss entry from any source


@dataclass
class FaultPlan:
    """The network faults in force. Invariant: no cut or loss from a host to itself."""

    cuts: set[tuple[str, str]] = field(default_factory=set)
    losses: dict[tuple[str, str], float] = field(default_factory=dict)

    def cut(self, src: str, dst: str) -> None:
        """Drop every packet from `src` to `dst`."""
        if src != dst:
            self.cuts.add((src, dst))

    def lose(self, src: str, dst: str, probability: float) -> None:
        """Drop packets from `src` (or ANY) to `dst` with `probability`; 0 removes the entry."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"loss probability must lie in [0, 1], got {probability}")
        if src == dst:
            return
        if probability == 0.0:
            self.losses.pop((src, dst), None)
        else:
            self.losses[(src, dst)] = probability

    def clear(self) -> None:
        """No fault at all."""
        self.cuts.clear()
        self.losses.clear()


def _threshold(probability: float) -> int:
    return round(probability * LOSS_SCALE)


def _loss_rule(match: str, probability: float) -> str | None:
    threshold = _threshold(probability)
    if threshold <= 0:
        return None
    if threshold >= LOSS_SCALE:
        return f"{match} drop"
    return f"{match} numgen random mod {LOSS_SCALE} < {threshold} drop"


def input_rules(plan: FaultPlan, dst: str, addresses: dict[str, str]) -> list[str]:
    """The input-chain rules of host `dst`, given every host's address, in a stable order."""
    rules = [f"ip saddr {addresses[src]} drop" for src, d in sorted(plan.cuts) if d == dst]
    for (src, d), probability in sorted(plan.losses.items()):
        if d != dst:
            continue
        match = f'iifname "{INNER_LINK}"' if src == ANY else f"ip saddr {addresses[src]}"
        rule = _loss_rule(match, probability)
        if rule is not None:
            rules.append(rule)
    return rules


def ruleset(rules: list[str]) -> str:
    """An `nft -f` script that replaces the harness's table with one holding `rules`."""
    body = "\n".join(f"    {rule}" for rule in rules)
    return (
        f"table inet {TABLE}\n"
        f"flush table inet {TABLE}\n"
        f"table inet {TABLE} {{\n"
        "  chain input {\n"
        "    type filter hook input priority 0; policy accept;\n"
        f"{body}\n"
        "  }\n"
        "}\n"
    )


def apply(namespace: str, script: str) -> None:
    """Load an `nft -f` script inside `namespace` (one atomic transaction)."""
    netns.run(["ip", "netns", "exec", namespace, "nft", "-f", "-"], stdin=script)


def listing(namespace: str) -> str:
    """What nftables holds in `namespace` now (for failure messages)."""
    return netns.run(["ip", "netns", "exec", namespace, "nft", "list", "ruleset"], check=False)
