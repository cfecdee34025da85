"""Operator view of the job queue: depth, age, running, workers, stuck jobs, failures."""
