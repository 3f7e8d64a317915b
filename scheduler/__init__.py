"""scheduler: a leader-elected distributed cron on Raft (see /DESIGN.md).

The sans-I/O core: `scheduler.schedule` (schedule text, fire times, the DST rule) and
`scheduler.jobs` (the job model, JOB.ADD parsing, run states, misfire, overlap, retries).
"""
