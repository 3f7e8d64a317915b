"""scheduler: a leader-elected distributed cron on Raft (see /DESIGN.md).

The sans-I/O core: `scheduler.schedule` (schedule text, fire times, the DST rule),
`scheduler.jobs` (the job model, JOB.ADD parsing), `scheduler.runs` (run records, their
states, retries, timeouts), `scheduler.planning` (misfire and overlap) and
`scheduler.state` (the replicated state machine, with state_apply, state_queries and
state_snapshot).
"""
