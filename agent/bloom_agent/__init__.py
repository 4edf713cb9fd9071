"""bloom-agent: zero-downtime release switching with automatic rollback on systemd hosts."""

__version__ = "0.1.0"
