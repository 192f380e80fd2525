"""The job runner: job files, the job driver, the worker pool, shard processing, completion markers, verify."""
