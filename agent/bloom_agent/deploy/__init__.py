"""Deployments: the per-app locks and operations, the switch's state machine and the runner that does
its I/O, hooks."""
