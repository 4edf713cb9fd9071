"""Probation: the monitors that watch a new release, and the health checks they run. Each returns a
reason when it trips; the deployment decides what to do about it."""
