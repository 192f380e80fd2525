"""The job runner: shards, executors (local, Ray), completion markers, job files."""
