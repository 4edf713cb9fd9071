"""Metrics for Prometheus, the Debian way: a file node_exporter's textfile collector reads, so the
agent opens no port."""
