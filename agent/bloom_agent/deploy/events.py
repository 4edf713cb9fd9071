"""What an operator alerts on: each event has a stable MESSAGE_ID (explained by
/usr/lib/systemd/catalog/bloom-agent.catalog, so `journalctl -x` says what to do) and carries
BLOOM_APP, BLOOM_VERSION and BLOOM_DEPLOYMENT, so `journalctl BLOOM_APP=web` tells an app's story."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("bloom_agent.events")

# Never change one: alerts and the catalog match on them.
STARTED = "7d3f1b9a2c6e4f0a8b5d1c3e9f7a2b64"
SWITCHED = "2e9c4a7f1b3d4e6a9c0b8d7f5e3a1c92"
BLESSED = "5a1e8c3f7b2d4a9e8f6c0b1d3e5a7c48"
ROLLED_BACK = "c4b2e9a7f1d3486e9a0c2b4d6f8e1a73"
ROLLBACK_FAILED = "4b8a0c3e9d2f4e6b9a71c5d0e2f3a8b1"
INSTALLED = "9f2d6b1a4c8e4b7a3d5f0e9c1b2a6d85"
REMOVED = "1c7e5a3b9d2f4c8a6e0b3d9f7a1c5e26"
APP_REMOVED = "e8a3c6f1b5d94e2a8c7b0f3d6a1e9c54"


def fields(app: str, version: str | None = None, deployment: int | None = None, **more: Any) -> dict[str, Any]:
    """The journal fields of a line about an app (pass as ``extra=`` to a logging call)."""
    extra: dict[str, Any] = {"BLOOM_APP": app}
    if version is not None:
        extra["BLOOM_VERSION"] = version
    if deployment is not None:
        extra["BLOOM_DEPLOYMENT"] = deployment
    extra.update(more)
    return extra


def emit(level: int, message_id: str, message: str, app: str, version: str | None = None,
         deployment: int | None = None, **more: Any) -> None:
    log.log(level, "%s", message, extra=fields(app, version, deployment, MESSAGE_ID=message_id, **more))
