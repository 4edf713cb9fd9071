"""The one door to systemd: D-Bus calls and signals, the units the agent writes, why a unit failed.
No policy: it does what it is asked and reports what systemd says."""
