"""bloom-agent, the daemon: its loop, signals, sd_notify, logging and the command table."""
