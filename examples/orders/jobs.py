"""The service's two scheduler jobs and the embedded worker that runs them.

Strategy: the jobs' commands are handler names (`orders-cancel-unpaid`, every
`cancel_every_s`, CONCURRENCY FORBID so two runs never overlap; `orders-daily-report`,
`@daily`). The service process runs a `scheduler.embedded.EmbeddedWorker` that registers
both handlers and so advertises them: the cluster hands it only those runs, and no other
worker (a shell worker beside it) is offered them. Adding a job that exists already (a
retried JOB.ADD whose first reply was lost, or a second start of the service) is fine.
"""

from __future__ import annotations

from collections.abc import Callable

from examples.orders.service import OrderService
from scheduler.client import SchedulerClient, SchedulerError
from scheduler.embedded import EmbeddedWorker, Run

__all__ = ["CANCEL_JOB", "REPORT_JOB", "add_jobs", "run_now", "start_worker"]

CANCEL_JOB = "orders-cancel-unpaid"
REPORT_JOB = "orders-daily-report"
REPORT_SCHEDULE = "@daily"
ERR_EXISTS = "already exists"
DEADLINE_S = 120.0  # a cluster just started (or a node just killed) elects its leader first


def _node(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def add_jobs(scheduler: list[str], cancel_every_s: float) -> None:
    """JOB.ADD both jobs (an existing one is left as it is)."""
    every = f"@every {max(1, round(cancel_every_s * 1000))}ms"
    with SchedulerClient([_node(a) for a in scheduler], deadline_s=DEADLINE_S) as client:
        for name, schedule, options in ((CANCEL_JOB, every, {"concurrency": "FORBID"}),
                                        (REPORT_JOB, REPORT_SCHEDULE, {})):
            try:
                client.add(name, schedule, name, **options)
            except SchedulerError as exc:
                if ERR_EXISTS not in str(exc):
                    raise


def start_worker(service: OrderService, scheduler: list[str]) -> Callable[[], None]:
    """Start the embedded worker with both handlers in a thread; returns its `stop()`."""
    worker = EmbeddedWorker([_node(a) for a in scheduler], slots=4)

    @worker.handler(CANCEL_JOB)
    def cancel_unpaid(run: Run) -> None:
        service.cancel_expired()

    @worker.handler(REPORT_JOB)
    def daily_report(run: Run) -> None:
        service.daily_report()

    return worker.run_in_thread()


def run_now(scheduler: list[str], job: str) -> None:
    """JOB.RUN: the cluster fires the job now (its embedded worker runs it soon after)."""
    with SchedulerClient([_node(a) for a in scheduler], deadline_s=DEADLINE_S) as client:
        client.run(job)
