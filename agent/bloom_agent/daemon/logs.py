"""Logging: to the journal under systemd, to stderr by hand.

Under the journal each line goes through its native protocol, with its syslog priority and the
fields a call gives (``extra={"BLOOM_APP": ..., "MESSAGE_ID": ...}``: upper-case names only), so
``journalctl -p err`` finds the agent's errors and ``journalctl BLOOM_APP=web`` an app's story.
By hand, plain timestamped lines.
"""

from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFieldsHandler(logging.Handler):
    """One journal entry a record: its message, priority, and the record's upper-case attributes as
    fields. ``send`` is systemd.journal.send, handed in so a test can see what would be sent."""

    def __init__(self, send=None) -> None:
        super().__init__()
        if send is None:
            from systemd import journal

            send = journal.send
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {k: v for k, v in record.__dict__.items() if k.isupper() and k.replace("_", "").isalnum()}
            self._send(self.format(record), PRIORITY=str(_PRIORITY.get(record.levelno, 6)),
                       SYSLOG_IDENTIFIER="bloom-agent", LOGGER=record.name, **fields)
        except Exception:
            self.handleError(record)


def setup(level: str = "info", stream=None) -> None:
    if os.environ.get("JOURNAL_STREAM") and stream is None:
        handler: logging.Handler = JournalFieldsHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
