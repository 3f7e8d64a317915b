"""README's sentence on what `make run` starts names every client port the packages'
launch.py declarations start (core/launcher.py finds them), as a port or in a range."""

from __future__ import annotations

import re
from pathlib import Path

from core.launcher import local_clusters

ROOT = Path(__file__).resolve().parent.parent
SENTENCE_START = "`make run` starts"
RANGE = re.compile(r"\b(\d{4,5})(?:-(\d{4,5}))?\b")


def make_run_sentence() -> str:
    text = " ".join((ROOT / "README.md").read_text().split())
    start = text.index(SENTENCE_START)
    return text[start:text.index("Ctrl-C", start)]


def named_ports(sentence: str) -> set[int]:
    ports: set[int] = set()
    for low, high in RANGE.findall(sentence):
        ports.update(range(int(low), int(high or low) + 1))
    return ports


def test_the_readme_names_every_port_make_run_starts(tmp_path: Path) -> None:
    started = {p.port for cluster in local_clusters(tmp_path) for p in cluster.processes
               if p.port}  # port 0: a process that listens on nothing (a worker)
    assert started, "no launch.py declared anything"
    missing = started - named_ports(make_run_sentence())
    assert not missing, f"make run starts these ports the README does not name: {missing}"
