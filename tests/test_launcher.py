"""`make run`'s launcher: starts the local cluster, prints how to use it, stops on Ctrl-C;
the daemons join it by their declarations (`<package>/launch.py`)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from core import launcher
from core.launch_spec import Process
from tests.conftest import find_free_port

ROOT = Path(__file__).resolve().parent.parent


def test_launcher_starts_the_cluster_and_stops_it_on_ctrl_c(tmp_path: Path) -> None:
    # The launcher writes ./var relative to its working directory: run it in tmp_path. It
    # leads a process group, as a shell's foreground job does, and Ctrl-C below goes to the
    # whole group, as a terminal sends it.
    proc = subprocess.Popen(
        [sys.executable, "-m", "core.launcher"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        process_group=0,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    declared = [p for c in launcher.local_clusters(Path("var")) for p in c.processes]
    try:
        assert ready.wait(60), "".join(lines)
        output = "".join(lines)
        status = [line for line in lines if line.startswith("[")]
        assert_aligned(status, declared)
        assert all(re.search(r"  up(  \(.*\))?$", line.rstrip("\n")) for line in status), output
        assert "redis-cli -p 7101 NEXT" in output
        assert "(node 1, peers check it on 127.0.0.1:7201)" in output
        ids = [redis.Redis(port=port).execute_command("NEXT") for port in (7101, 7102, 7103)]
        assert len(set(ids)) == 3
        # The idgen daemons reach each other over their node ports (core/rpc).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            info = redis.Redis(port=7101).info("idgen")
            if info.get("peers_reachable") == 2:
                break
            time.sleep(0.2)
        assert info.get("peers_reachable") == 2, info
        with socket.create_connection(("127.0.0.1", 11311), timeout=10) as cache:
            cache.sendall(b"set k 0 0 1\r\nv\r\nget k\r\n")
            reply = b""
            while not reply.endswith(b"END\r\n"):
                reply += cache.recv(4096)
        assert reply == b"STORED\r\nVALUE k 0 1\r\nv\r\nEND\r\n"
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=30)
        reader.join(timeout=5)
    output = "".join(lines)
    assert code == 0, output
    # One SIGTERM each (Ctrl-C reaches the launcher alone): every daemon stops cleanly.
    assert output.count("exited with 0\n") == len(declared), output
    assert "exited with -" not in output and "killed by" not in output, output
    assert (tmp_path / "var" / "idgen-1" / "idgen.json").exists()


def assert_aligned(status: list[str], declared: list[Process]) -> None:
    """Each status line has its name, address and state at the same columns, and a
    process without a port shows `-` as its address, never `:0`."""
    assert len(status) == len(declared), status
    for line, spec in zip(status, declared, strict=True):
        assert line.index(spec.name) == status[0].index(declared[0].name), status
        where = f"{spec.host}:{spec.port}" if spec.port else launcher.NO_PORT
        assert line.index(f" {where} ") == status[0].index(
            f" {declared[0].host}:{declared[0].port} "), status
        assert ":0 " not in line, line


# -- the declarations ---------------------------------------------------------------------------


def test_discovery_finds_every_declaration_in_name_order() -> None:
    declared = sorted(p.parent.name for p in ROOT.glob("*/launch.py")
                      if (p.parent / "__init__.py").exists())
    found = [name for name, _ in launcher.discover()]
    assert found == declared
    assert {"idgen", "kvcache", "scheduler"} <= set(found)
    processes = [p for c in launcher.local_clusters(Path("var")) for p in c.processes]
    names = [p.name for p in processes]
    assert len(names) == len(set(names))
    assert {"idgen-1", "kvproxy", "scheduler-3", "sched-worker"} <= set(names)
    ports = [(p.host, p.port) for p in processes if p.port]
    assert len(ports) == len(set(ports))


FAKE_DECLARATION = '''
import sys
from pathlib import Path

from core.launch_spec import LocalCluster, Process

PORT = {port}
# Listens a moment, then exits by itself: the launcher then stops the rest.
CODE = ("import socket, time; s = socket.socket(); s.bind(('127.0.0.1', PORT)); "
        "s.listen(); time.sleep(1)").replace("PORT", str(PORT))


def local_cluster(var: Path) -> LocalCluster:
    return LocalCluster(
        [Process("fake-1", [sys.executable, "-c", CODE], "127.0.0.1", PORT),
         Process("fake-2", [sys.executable, "-c", "import time; time.sleep(30)"])],
        ["  fake-cli ping    # a line of the fake daemon"],
    )
'''


def test_a_declaration_in_a_new_package_joins_without_editing_the_launcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "project"
    package = root / "fakedaemon_for_launcher_test"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "launch.py").write_text(FAKE_DECLARATION.format(port=find_free_port()))
    (root / "notapackage").mkdir()
    (root / "notapackage" / "launch.py").write_text("raise AssertionError('imported')\n")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.chdir(tmp_path)

    assert [name for name, _ in launcher.discover(root)] == ["fakedaemon_for_launcher_test"]
    previous = signal.getsignal(signal.SIGTERM)
    try:
        code = launcher.main(root)
    finally:
        signal.signal(signal.SIGTERM, previous)
    output = capsys.readouterr().out
    assert code == 1, output  # fake-1 exited by itself
    assert re.search(r"\[1/2\] fake-1  127\.0\.0\.1:\d+  up\n", output), output
    assert re.search(r"\[2/2\] fake-2  - {14}  up\n", output), output
    assert "Try:\n  fake-cli ping    # a line of the fake daemon\n" in output, output
    assert "a daemon exited; stopping the rest" in output, output
    # fake-2 does not handle SIGTERM: the stop line names the signal, not a negative status.
    assert "fake-1  exited with 0\n" in output, output
    assert "fake-2  killed by SIGTERM\n" in output, output
    assert (tmp_path / "var" / "fake-1.log").exists()


def test_a_launch_module_without_the_declaration_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "fakedaemon_without_declaration"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "launch.py").write_text("PORTS = [1]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TypeError, match=r"fakedaemon_without_declaration\.launch defines no "
                                        r"local_cluster\(var\) function"):
        launcher.discover(tmp_path)


ORPHAN_DECLARATION = """
import sys
from pathlib import Path

from core.launch_spec import LocalCluster, Process

PIDS = {pids!r}
CODE = ("import os, time; open(PIDS, 'a').write(str(os.getpid()) + ' '); time.sleep(60)"
        ).replace("PIDS", repr(PIDS))


def local_cluster(var: Path) -> LocalCluster:
    return LocalCluster([Process("orphan-1", [sys.executable, "-c", CODE]),
                         Process("orphan-2", [sys.executable, "-c", CODE])])
"""


def test_a_killed_launcher_takes_its_daemons_with_it(tmp_path: Path) -> None:
    """The daemons die with the launcher (PR_SET_PDEATHSIG), even one killed by SIGKILL."""
    root = tmp_path / "project"
    package = root / "fakedaemon_orphans"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    pids_file = tmp_path / "pids"
    (package / "launch.py").write_text(ORPHAN_DECLARATION.format(pids=str(pids_file)))
    code = ("import sys; from pathlib import Path; from core import launcher; "
            f"sys.exit(launcher.main(Path({str(root)!r})))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path,
                            env={"PYTHONPATH": f"{ROOT}:{root}", "PATH": "/usr/bin:/bin"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # both are up once the "Try:" block is printed
        if launcher.FOOTER in line:
            break
    pids = [int(pid) for pid in pids_file.read_text().split()] if pids_file.exists() else []
    assert len(pids) == 2, proc.stdout.read() if proc.poll() is not None else pids
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30  # hang detection only
    while any(Path(f"/proc/{pid}").exists() and not zombie(pid) for pid in pids):
        assert time.monotonic() < deadline, f"daemons {pids} outlived their launcher"
        time.sleep(0.1)


def zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True
