"""redis-py's own test suite, its string and hash tests, run against a shardstore node.

    python -m tests.redispy_suite [--node HOST:PORT]     (the whole selection, a table)

Strategy: the suite is not ours and is not copied into this tree. `fetch_suite` asks pip
for the sdist of the installed redis-py version (`pip download --no-binary :all:
--no-deps redis==V`) into .venv/cache/, unpacks only its `tests/` directory there and
writes a small pytest.ini of its markers beside it; later runs reuse the copy. `run` starts
pytest in a child process inside that directory (so `tests` is redis-py's package, not
ours) with `--redis-url` pointing at the node and our plugin tests/redispy_hooks/
shardstore_redispy_hooks.py loaded, which adapts the suite's set-up (see its header) and
writes every test's outcome as JSON; `read_outcomes` reads it back. Tests are selected by
name from redis-py's tests/test_commands.py (class TestRedisCommands), in two modes:

- cluster (SELECTED_CLUSTER): the suite's conftest sees INFO's `cluster_enabled:1` and
  talks through `RedisCluster` (`--redis-cluster-nodes 1`), with `-m "not onlynoncluster"`
  as redis-py's own cluster job runs it;
- standalone (SELECTED_STANDALONE): tests marked `onlynoncluster` whose commands are in
  the issue's list, through `redis.Redis` on the node as on a plain Redis (one node holds
  every slot, so no MOVED).

EXPECTED_FAILURES are selected tests that fail against shardstore, each with its reason;
the test suite (tests/test_shardstore_redispy_suite.py) requires them to fail and every
other selected test to pass. The selection covers redis-py's "BASIC KEY COMMANDS" and
"HASH COMMANDS" sections and the server tests of commands in the issue's list; every test
of those two sections is either selected or deselected below (a test checks it).

Deselected, with the reason (the issue's list is PING ECHO SET (EX PX NX XX GET KEEPTTL)
GET GETDEL DEL UNLINK EXISTS INCR INCRBY DECR DECRBY APPEND STRLEN MGET MSET EXPIRE PEXPIRE
TTL PTTL PERSIST TYPE DBSIZE FLUSHALL SCAN HSET HGET HMGET HDEL HGETALL HINCRBY HLEN INFO
CONFIG GET COMMAND HELLO AUTH CLIENT SETNAME/SETINFO/ID SELECT 0 WAIT):

- bit commands (BITCOUNT, BITOP, BITPOS, SETBIT, GETBIT), outside the list:
  test_bitcount test_bitcount_mode test_bitop_not_empty_string test_bitop_not
  test_bitop_not_in_place test_bitop_single_string test_bitop_string_operands
  test_bitop_diff test_bitop_diff1 test_bitop_andor test_bitop_one
  test_bitop_new_operations_with_empty_keys test_bitop_new_operations_return_values
  test_bitpos test_bitpos_mode test_get_set_bit; test_bitpos_wrong_arguments expects an
  error from BITPOS and would pass only because BITPOS is an unknown command.
- COPY, DUMP, RESTORE, KEYS, RANDOMKEY, RENAME, RENAMENX, outside the list:
  test_copy test_copy_and_replace test_copy_to_another_database test_dump_and_restore
  test_dump_and_restore_and_replace test_dump_and_restore_absttl test_keys test_randomkey
  test_rename test_renamenx.
- DELEX and DIGEST (Redis 8.4), outside the list: test_delex_nonexistent
  test_delex_unconditional_delete_string test_delex_unconditional_delete_nonstring_allowed
  test_delex_ifeq test_delex_ifne test_delex_with_conditionon_nonstring_values
  test_delex_ifdeq_and_ifdne test_delex_pipeline test_delex_mutual_exclusion_client_side
  test_digest_nonexistent_returns_none test_digest_wrong_type_raises
  test_digest_response_when_available test_local_digest_matches_server
  test_pipeline_digest.
- LCS and STRALGO, outside the list: test_lcs test_stralgo_lcs test_stralgo_negative.
- EXPIREAT, PEXPIREAT, EXPIRETIME, PEXPIRETIME (and TIME, which these tests read),
  outside the list: test_expireat_datetime test_expireat_no_key test_expireat_unixtime
  test_expiretime test_expireat_option_nx test_expireat_option_xx test_expireat_option_gt
  test_expireat_option_lt test_pexpireat_datetime test_pexpireat_no_key
  test_pexpireat_unixtime test_pexpireat_option_nx test_pexpireat_option_xx
  test_pexpireat_option_gt test_pexpireat_option_lt test_pexpiretime.
- other string commands outside the list (GETEX, GETRANGE, GETSET, SUBSTR, SETRANGE,
  SETEX, PSETEX, SETNX, MSETNX, MSETEX, INCRBYFLOAT, INCREX): test_getex test_getrange
  test_getset test_substr test_setrange test_setex test_psetex test_psetex_timedelta
  test_setnx test_msetnx test_incrbyfloat test_increx_default test_increx_byint
  test_increx_byfloat test_increx_saturating_bounds
  test_increx_overflow_rejected_keeps_value_and_ttl
  test_increx_integer_overflow_uses_type_limits test_increx_expiration_enx
  test_msetex_no_expiration_with_cluster_client
  test_msetex_expiration_ex_and_keepttl_with_cluster_client
  test_msetex_expiration_px_with_cluster_client
  test_msetex_expiration_pxat_and_nx_with_cluster_client
  test_msetex_expiration_exat_and_xx_with_cluster_client
  test_msetex_invalid_inputs_with_cluster_client test_msetex_no_expiration
  test_msetex_expiration_ex_and_keepttl test_msetex_expiration_px
  test_msetex_expiration_pxat_and_nx test_msetex_expiration_exat_and_xx
  test_msetex_invalid_inputs.
- client-side argument checks of commands outside the list (they never reach a server):
  test_getex_zero_expiry_options_are_mutually_exclusive test_increx_invalid_options
  test_increx_zero_expiry_options_are_mutually_exclusive
  test_msetex_zero_expiry_options_are_mutually_exclusive
  test_hgetex_zero_expiry_options_are_mutually_exclusive
  test_hsetex_zero_expiry_options_are_mutually_exclusive
  test_set_empty_condition_is_mutually_exclusive (SET IFEQ).
- SET's options outside the list (IFEQ, IFNE, IFDEQ, IFDNE of Redis 8.4; EXAT and PXAT):
  test_set_ifeq_true_sets_and_returns_true test_set_ifeq_false_does_not_set_returns_none
  test_set_ifne_true_sets test_set_ifne_false_does_not_set
  test_set_ifeq_when_key_missing_does_not_create test_set_ifne_when_key_missing_creates
  test_set_ifdeq_and_ifdne test_set_with_get_returns_previous_value
  test_set_mutual_exclusion_client_side test_set_exat_timedelta test_set_pxat_timedelta.
- lists, sets and sorted sets (RPUSH, LPUSH, LMOVE, BLMOVE, LMOVEM, BLMOVEM, SADD, ZADD),
  outside the list: test_lmove test_blmove test_lmovem test_blmovem test_type (TYPE is in
  the list, but the test makes a list, a set and a sorted set) test_scan_type.
- hash commands outside the list (HEXISTS, HINCRBYFLOAT, HKEYS, HMSET, HSETNX, HVALS,
  HSTRLEN, HRANDFIELD): test_hexists test_hincrbyfloat test_hkeys test_hmset test_hsetnx
  test_hvals test_hstrlen test_hrandfield; and the whole of redis-py's tests/test_hash.py,
  whose every test is about hash-field expiry (HEXPIRE, HPEXPIRE, HEXPIREAT, HTTL, HPTTL,
  HPERSIST, HGETDEL, HGETEX, HSETEX; Redis 7.4 and later).
- `onlynoncluster` tests that assume one standalone server holding keys of any slot:
  test_mget and test_mset (keys a, b, c in three slots: a Redis Cluster node answers
  CROSSSLOT, and so does shardstore); test_select (SELECT 5, 2 and 9: the list has SELECT
  0 only, and a Redis Cluster node refuses any other database too).
- test_client_setinfo: it also connects a client to localhost:6379 (redis-py's default
  address), not to the server under test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path

from tests.conftest import find_free_port
from tests.procs import Daemon

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / ".venv" / "cache"
HOOKS_DIR = Path(__file__).resolve().parent / "redispy_hooks"
HOOKS_PLUGIN = "shardstore_redispy_hooks"
SUITE_FILE = "tests/test_commands.py"
SUITE_CLASS = "TestRedisCommands"
MODE_CLUSTER = "cluster"
MODE_STANDALONE = "standalone"
COMPAT_VERSION = "7.2.0"  # CLIENT SETINFO, in the list, is a Redis 7.2 command
PIP_TIMEOUT_S = 300
RUN_TIMEOUT_S = 600
TEST_TIMEOUT_S = 60  # pytest-timeout's limit per test in the child
SECTIONS = (("# BASIC KEY COMMANDS", "# LIST COMMANDS"), ("# HASH COMMANDS", "# SORT"))
MARKERS = ("onlycluster", "onlynoncluster", "redismod", "fixed_client", "pipeline", "ssl",
           "asyncio", "replica", "experimental", "cp_integration", "no_mock_connections",
           "multidb_integration")
NETWORK_SIGNS = ("Could not fetch URL", "Failed to establish a new connection",
                 "Temporary failure in name resolution", "Network is unreachable",
                 "Max retries exceeded", "Connection refused", "timed out")
OUTCOMES = ("passed", "failed", "error", "skipped")

ERR_PIP = "pip could not download redis=={version}'s sdist: {detail}"
ERR_NO_TESTS = "the sdist {path} has no {file}"
ERR_OUTCOMES = "the suite's outcome file is not what the plugin writes: {detail}"
ERR_NO_OUTCOMES = "the suite wrote no outcomes (exit status {code}); its output:\n{output}"

SELECTED_CLUSTER = (
    # strings and keys
    "test_append", "test_decr", "test_decrby", "test_delete", "test_delete_with_multiple_keys",
    "test_delitem", "test_exists", "test_exists_contains", "test_expire",
    "test_expire_option_nx", "test_expire_option_xx", "test_expire_option_gt",
    "test_expire_option_lt", "test_get_and_set", "test_getdel", "test_getitem_and_setitem",
    "test_getitem_raises_keyerror_for_missing_key",
    "test_getitem_does_not_raise_keyerror_for_empty_string", "test_incr", "test_incrby",
    "test_mset_on_cluster", "test_mset_on_cluster_multiple_slots", "test_pexpire",
    "test_pexpire_option_nx", "test_pexpire_option_xx", "test_pexpire_option_gt",
    "test_pexpire_option_lt", "test_pttl", "test_pttl_no_key", "test_set_nx", "test_set_xx",
    "test_set_px", "test_set_px_timedelta", "test_set_ex",
    "test_set_zero_expiry_options_are_mutually_exclusive", "test_set_ex_str",
    "test_set_ex_timedelta", "test_set_multipleoptions", "test_set_keepttl", "test_set_get",
    "test_strlen", "test_ttl", "test_ttl_nokey", "test_unlink",
    "test_unlink_with_multiple_keys",
    # hashes
    "test_hget_and_hset", "test_hget_and_hset_with_encodable_fields_and_values",
    "test_hset_with_multi_key_values", "test_hset_with_key_values_passed_as_list",
    "test_hset_without_data", "test_hdel", "test_hgetall", "test_hincrby", "test_hlen",
    "test_hmget",
    # server
    "test_ping", "test_config_get", "test_command_count", "test_command",
)
SELECTED_STANDALONE = (
    "test_client_id", "test_client_setname", "test_dbsize", "test_echo", "test_info",
    "test_scan", "test_scan_iter",
)
EXPECTED_FAILURES = {
    "test_command": "asks for at least 100 commands; shardstore's table has the issue's list "
                    "and its own cluster, table and admin commands, fewer than that",
    "test_command_count": "the same count as test_command, through COMMAND COUNT",
    "test_config_get": "asks CONFIG GET * for more than 10 parameters; shardstore has the 8 "
                       "it uses or that redis-benchmark asks for",
    "test_info": "asks INFO for redis_version and arch_bits; shardstore's Server section "
                 "says server_name and server_version (its own)",
}


class SuiteUnavailable(Exception):
    """redis-py's suite could not be had; `unreachable` when the package registry was not
    reachable (the one case a test may skip), otherwise a real failure."""

    def __init__(self, message: str, unreachable: bool) -> None:
        super().__init__(message)
        self.unreachable = unreachable


@dataclass(frozen=True)
class Outcome:
    """One test's result in the child: `outcome` is one of OUTCOMES; `reason` one line."""

    outcome: str
    reason: str = ""


# -- the suite, from the registry -----------------------------------------------------------

def redispy_version() -> str:
    """The installed redis-py's version: the suite must be the same version's."""
    return installed_version("redis")


def registry_unreachable(pip_output: str) -> bool:
    """Whether pip's output says it could not reach the package index at all."""
    return any(sign in pip_output for sign in NETWORK_SIGNS)


def fetch_suite(cache_dir: Path = CACHE_DIR, version: str | None = None,
                say: Callable[[str], None] = print) -> Path:
    """The directory holding redis-py `version`'s tests/ (and our pytest.ini); downloads
    and unpacks the sdist on first use. Raises SuiteUnavailable if pip cannot get it."""
    version = version or redispy_version()
    suite = cache_dir / f"redis-py-{version}"
    if (suite / SUITE_FILE).exists() and (suite / "pytest.ini").exists():
        return suite
    downloads = cache_dir / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    say(f"downloading redis-py {version}'s sdist with pip into {downloads} ...")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
         "--disable-pip-version-check", f"redis=={version}", "-d", str(downloads)],
        capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    if done.returncode != 0:
        output = done.stdout + done.stderr
        detail = output.strip().splitlines()[-1] if output.strip() else f"exit {done.returncode}"
        raise SuiteUnavailable(ERR_PIP.format(version=version, detail=detail),
                               registry_unreachable(output))
    _unpack_tests(downloads / f"redis-{version}.tar.gz", suite)
    say(f"redis-py {version}'s tests unpacked into {suite}")
    return suite


def _unpack_tests(sdist: Path, suite: Path) -> None:
    with tarfile.open(sdist) as archive:
        members = []
        for member in archive.getmembers():
            parts = member.name.split("/", 1)
            if len(parts) == 2 and parts[1].startswith("tests/"):
                member.name = parts[1]
                members.append(member)
        if not any(m.name == SUITE_FILE for m in members):
            raise SuiteUnavailable(ERR_NO_TESTS.format(path=sdist, file=SUITE_FILE), False)
        archive.extractall(suite, members=members, filter="data")
    lines = ["[pytest]", "markers ="] + [f"    {name}: redis-py's marker" for name in MARKERS]
    (suite / "pytest.ini").write_text("\n".join(lines) + "\n")


# -- running it --------------------------------------------------------------------------------

def suite_argv(suite: Path, address: str, mode: str, names: tuple[str, ...]) -> list[str]:
    """The child's command line for `names` in `mode` against `address`."""
    url = f"redis://{address}/0"
    argv = [sys.executable, "-m", "pytest", "-c", str(suite / "pytest.ini"),
            "--rootdir", str(suite), "-p", "no:cacheprovider", "-p", HOOKS_PLUGIN,
            "--redis-url", url, "--redis-mod-url", url, "--timeout", str(TEST_TIMEOUT_S),
            "-q", "-rfE"]
    if mode == MODE_CLUSTER:
        argv += ["--redis-cluster-nodes", "1", "-m", "not onlynoncluster"]
    return argv + [f"{SUITE_FILE}::{SUITE_CLASS}::{name}" for name in names]


def run(suite: Path, address: str, mode: str, names: tuple[str, ...], workdir: Path,
        stream: bool = False) -> dict[str, Outcome]:
    """Run `names` of the suite in a child pytest against the node at `address`; each
    test's Outcome. With `stream`, the child's output shows as it runs (progress)."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / f"outcomes-{mode}.json"
    out.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
    # Bytecode caching stays on: the child's assertion rewriting is cached next to the suite.
    env.update({"PYTHONPATH": str(HOOKS_DIR), "SHARDSTORE_REDISPY_OUT": str(out),
                "SHARDSTORE_REDISPY_MODE": mode, "SHARDSTORE_REDISPY_VERSION": COMPAT_VERSION})
    done = subprocess.run(suite_argv(suite, address, mode, names), cwd=suite, env=env,
                          capture_output=not stream, text=True, timeout=RUN_TIMEOUT_S,
                          check=False)
    (workdir / f"output-{mode}.txt").write_text((done.stdout or "") + (done.stderr or ""))
    if not out.exists():
        raise RuntimeError(ERR_NO_OUTCOMES.format(code=done.returncode,
                                                  output=(done.stdout or "")[-3000:]))
    return read_outcomes(out.read_text())


def read_outcomes(text: str) -> dict[str, Outcome]:
    """The plugin's JSON (test name -> {"outcome", "reason"}) as Outcomes; ValueError with a
    clear message on anything else."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(ERR_OUTCOMES.format(detail=f"not JSON ({exc})")) from None
    if not isinstance(data, dict):
        raise ValueError(ERR_OUTCOMES.format(detail="not an object"))
    outcomes = {}
    for name, entry in data.items():
        if not (isinstance(entry, dict) and entry.get("outcome") in OUTCOMES
                and isinstance(entry.get("reason", ""), str)):
            raise ValueError(ERR_OUTCOMES.format(detail=f"bad entry for {name!r}"))
        outcomes[name] = Outcome(entry["outcome"], entry.get("reason", ""))
    return outcomes


# -- what is selected ----------------------------------------------------------------------------

def section_tests(source: str) -> list[str]:
    """The test names defined in redis-py's test_commands.py between each pair of SECTIONS
    comment lines, in order (an empty list when the markers are not there)."""
    names: list[str] = []
    lines = source.splitlines()
    for start, end in SECTIONS:
        inside = False
        for line in lines:
            stripped = line.strip()
            if stripped == start:
                inside = True
            elif stripped == end:
                inside = False
            elif inside and (found := re.match(r"\s*def (test_\w+)\(", line)):
                names.append(found.group(1))
    return names


def deselected() -> set[str]:
    """Every test named in this module's list of deselections (its docstring)."""
    text = (__doc__ or "").split("Deselected, with the reason", 1)[-1]
    return set(re.findall(r"\btest_\w+", text))


def expectations() -> dict[str, str]:
    """Selected test -> the outcome it must have: 'failed' for EXPECTED_FAILURES, else
    'passed'."""
    return {name: "failed" if name in EXPECTED_FAILURES else "passed"
            for name in SELECTED_CLUSTER + SELECTED_STANDALONE}


# -- a node to run against -----------------------------------------------------------------------

@contextmanager
def single_node(tmp: Path, host: str = "127.0.0.1") -> Iterator[Daemon]:
    """A one-node shardstore (one shard, one replica, default keyspace) under `tmp`."""
    port, raft = find_free_port(host), find_free_port(host)
    argv = ["shardstore", "serve", "--id", "1", "--listen", f"{host}:{port}",
            "--peer-listen", f"{host}:{raft}", "--peers", f"1={host}:{raft}",
            "--shards", "1", "--replicas", "1", "--data-dir", str(tmp / "node")]
    node = Daemon(argv, host, port, tmp / "node.log").start()
    try:
        yield node
    finally:
        node.stop()


def run_all(suite: Path, address: str, workdir: Path,
            stream: bool = False) -> dict[str, Outcome]:
    """Both modes' selections against `address`: every selected test's Outcome."""
    outcomes = run(suite, address, MODE_CLUSTER, SELECTED_CLUSTER, workdir, stream)
    outcomes.update(run(suite, address, MODE_STANDALONE, SELECTED_STANDALONE, workdir, stream))
    return outcomes


def run_side_by_side(suite: Path, cluster_address: str, standalone_address: str,
                     workdir: Path) -> dict[str, Outcome]:
    """`run_all`'s outcomes, the two modes run at the same time, each against its own node
    (the suite flushes the database between tests, so they cannot share one)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        cluster = pool.submit(run, suite, cluster_address, MODE_CLUSTER, SELECTED_CLUSTER,
                              workdir)
        standalone = pool.submit(run, suite, standalone_address, MODE_STANDALONE,
                                 SELECTED_STANDALONE, workdir)
        return {**cluster.result(), **standalone.result()}


def table(outcomes: dict[str, Outcome]) -> str:
    """One line per selected test: name, outcome, whether expected, and the reason."""
    lines = []
    for name, want in expectations().items():
        got = outcomes.get(name, Outcome("missing"))
        verdict = "as expected" if got.outcome == want else f"UNEXPECTED (want {want})"
        lines.append(f"{name:58} {got.outcome:8} {verdict}  {got.reason[:80]}".rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module header); 0 when every test did as expected."""
    parser = argparse.ArgumentParser(prog="python -m tests.redispy_suite",
                                     description="redis-py's string and hash tests "
                                                 "against a shardstore node")
    parser.add_argument("--node", metavar="HOST:PORT",
                        help="a running node (default: start a one-node shardstore)")
    args = parser.parse_args(argv)
    suite = fetch_suite()
    with tempfile.TemporaryDirectory(prefix="redispy-") as tmp:
        if args.node:
            outcomes = run_all(suite, args.node, Path(tmp), stream=True)
        else:
            with single_node(Path(tmp)) as node:
                outcomes = run_all(suite, node.address, Path(tmp), stream=True)
    print(table(outcomes))
    wrong = [n for n, want in expectations().items()
             if outcomes.get(n, Outcome("missing")).outcome != want]
    print(f"{len(outcomes)} tests run, {len(wrong)} not as expected")
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
