# -*- coding: utf-8 -*-
# Copyright: bloom-agent developers
# MIT License (see LICENSE in the bloom-agent source)
"""Calling bloomctl on the managed host: the agent's documented JSON and exit codes are the interface."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

# bloomctl's exit codes (docs/cli.md): 0 done; 3 the new release failed and the previous one serves;
# 4 the way back failed too (degraded); 1 an error, with the agent's message and hint on stderr.
EXIT_DONE, EXIT_ROLLED_BACK, EXIT_DEGRADED = 0, 3, 4


class BloomctlError(Exception):
    def __init__(self, rc, message):
        super(BloomctlError, self).__init__(message)
        self.rc = rc
        self.message = message


def bloomctl(module, *args, **kwargs):
    """Run ``bloomctl ARGS --json``; returns (rc, parsed stdout or None, stderr). Exit codes listed in
    ``ok_codes`` (default: 0) are answers; any other raises BloomctlError with the agent's message."""
    ok_codes = kwargs.get("ok_codes", (0,))
    executable = module.get_bin_path("bloomctl", required=True)
    rc, out, err = module.run_command([executable] + list(args) + ["--json"], environ_update={"LANG": "C.UTF-8"})
    if rc not in ok_codes:
        message = err.strip() or out.strip() or "bloomctl exited with status %d" % rc
        if message.startswith("bloomctl: "):
            message = message[len("bloomctl: "):]
        raise BloomctlError(rc, message)
    try:
        data = json.loads(out) if out.strip() else None
    except ValueError:
        raise BloomctlError(rc, "bloomctl printed no JSON: %s" % out.strip()[:200])
    return rc, data, err


def app_state(module, app):
    """The app's status, or BloomctlError (an unknown app, an app file that did not load)."""
    return bloomctl(module, "status", app, ok_codes=(0, 3))[1]
