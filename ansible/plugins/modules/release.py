#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: bloom-agent developers
# MIT License (see LICENSE in the bloom-agent source)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: release
short_description: Install and switch to a release of an app with bloom-agent, roll it back, or remove it
description:
  - Drives C(bloomctl) on the managed host, through its C(--json) output and documented exit codes.
  - With I(state=present), installs the release from a tarball (on the controller with I(src), or
    already on the host with I(tarball)) and switches the app to it without downtime; the agent
    watches it through probation and rolls it back on its own if it misbehaves.
  - C(changed) only when the serving release changed. Deploying the version that is already current
    and blessed is C(ok).
  - In check mode the tarball is sent to the agent, unpacked and validated against the app file, then
    discarded (C(bloomctl install --check)); nothing changes.
version_added: 0.1.0
author: bloom-agent developers (@bloom-agent)
options:
  app:
    description: The app's name (its file is C(/etc/bloom/apps/APP.toml) on the host).
    type: str
    required: true
  state:
    description:
      - C(present) the release serves, after a switch if needed.
      - C(rolled_back) the app goes back to its previous good release; with I(version), only if
        I(version) is the one serving (so that a fleet-wide revert touches only the hosts that switched,
        and running it again changes nothing). Without I(version) every run rolls back one release further.
      - C(absent) the release is removed from the host (refused by the agent if it is in use).
    type: str
    choices: [present, rolled_back, absent]
    default: present
  version:
    description:
      - The release's version. Without it, the agent reads it from the tarball's file name
        (C(APP-VERSION.tar.gz)). Required for I(state=absent).
    type: str
  src:
    description:
      - A release tarball on the controller; copied to the host (a temporary file, removed after).
      - Handled by the action plugin of the same name.
    type: path
  tarball:
    description: A release tarball already on the host. One of I(src) or I(tarball) with I(state=present).
    type: path
  sha256:
    description: The tarball's expected SHA-256; the agent refuses a tarball that does not match.
    type: str
  wait:
    description: Wait for the switch's outcome, through probation. With C(false), return once it has started.
    type: bool
    default: true
notes:
  - Needs bloom-agent on the host, and become (root, or a member of the agent's control group).
  - Supports check mode and diff mode.
seealso:
  - module: bloom.agent.info
"""

EXAMPLES = r"""
- name: Deploy web 1.4.2 from the controller
  bloom.agent.release:
    app: web
    src: dist/web-1.4.2.tar.gz

- name: Go back where 1.4.2 serves
  bloom.agent.release:
    app: web
    state: rolled_back
    version: 1.4.2

- name: Remove an old release
  bloom.agent.release:
    app: web
    version: 1.3.0
    state: absent
"""

RETURN = r"""
outcome:
  description: C(done), C(unchanged), C(failed), C(rolled-back), C(degraded), C(started) (with I(wait=false)), or C(removed).
  returned: always
  type: str
  sample: done
previous:
  description: The release that served before.
  returned: always
  type: str
  sample: 1.4.1
current:
  description: The release that serves now.
  returned: always
  type: str
  sample: 1.4.2
version:
  description: The release this task was about.
  returned: always
  type: str
reason:
  description: Why a switch did not end on the new release, in the agent's words.
  returned: always
  type: str
deployment:
  description: The agent's id of the switch or rollback (C(bloomctl show APP ID)).
  returned: when a switch or rollback ran
  type: int
exit_code:
  description: bloomctl's exit code (0 done, 3 failed or rolled back, 4 degraded).
  returned: when a switch or rollback ran
  type: int
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.bloom.agent.plugins.module_utils.bloomctl import (EXIT_DEGRADED, EXIT_ROLLED_BACK,
                                                                           BloomctlError, app_state, bloomctl)


def blessed(status, version):
    return (status.get("current") == version and status.get("last_good") == version
            and status.get("state") == "serving" and not status.get("degraded"))


def present(module, result, status):
    p = module.params
    path = p["tarball"]
    if not path:
        module.fail_json(msg="state=present needs src (on the controller) or tarball (on the host)", **result)
    if not os.path.isfile(path):
        module.fail_json(msg="%s: no such file on the host" % path, **result)
    args = [path] + (["--version", p["version"]] if p["version"] else []) + (["--sha256", p["sha256"]] if p["sha256"] else [])
    checked = bloomctl(module, "install", p["app"], "--check", *args)[1]
    version = checked["version"]
    result["version"] = version
    if blessed(status, version):
        result.update(outcome="unchanged", current=version)
        return
    result["diff"] = {"before": "version: %s\n" % (status.get("current") or "none"), "after": "version: %s\n" % version}
    if module.check_mode:
        result.update(changed=True, outcome="would switch", current=status.get("current"))
        return
    rc, out, err = bloomctl(module, "deploy", p["app"], "-q", *(args + ([] if p["wait"] else ["--no-wait"])),
                            ok_codes=(0, EXIT_ROLLED_BACK, EXIT_DEGRADED))
    result.update(outcome=out["outcome"], deployment=out.get("deployment"), exit_code=out.get("exit_code", rc),
                  reason=out.get("reason", ""), current=out.get("serving", status.get("current")))
    result["changed"] = result["current"] != status.get("current") or out["outcome"] in ("started", "degraded")
    if rc == EXIT_ROLLED_BACK:
        module.fail_json(msg="%s %s: %s: %s; %s serves" % (p["app"], version, out["outcome"], out.get("reason", ""),
                                                           out.get("serving") or "nothing"), **result)
    if rc == EXIT_DEGRADED:
        module.fail_json(msg="%s %s: degraded, the way back failed too: %s" % (p["app"], version, out.get("reason", "")),
                         **result)


def rolled_back(module, result, status):
    p = module.params
    if p["version"] and status.get("current") != p["version"]:
        result.update(outcome="unchanged", current=status.get("current"))
        return
    result["diff"] = {"before": "version: %s\n" % (status.get("current") or "none"), "after": "version: previous\n"}
    if module.check_mode:
        result.update(changed=True, outcome="would roll back", current=status.get("current"))
        return
    rc, out, err = bloomctl(module, "rollback", p["app"], "-q", ok_codes=(0, EXIT_ROLLED_BACK, EXIT_DEGRADED))
    result.update(outcome=out["outcome"], deployment=out.get("deployment"), exit_code=out.get("exit_code", rc),
                  reason=out.get("reason", ""), current=out.get("serving"))
    result["changed"] = result["current"] != status.get("current")
    if rc:
        module.fail_json(msg="%s: rollback %s: %s" % (p["app"], out["outcome"], out.get("reason", "")), **result)


def absent(module, result, status):
    p = module.params
    if not p["version"]:
        module.fail_json(msg="state=absent needs version", **result)
    installed = [r["version"] for r in bloomctl(module, "releases", p["app"])[1]]
    result["current"] = status.get("current")
    if p["version"] not in installed:
        result["outcome"] = "unchanged"
        return
    result.update(changed=True, outcome="removed")
    if not module.check_mode:
        # `remove` prints no JSON; its refusal (in use) comes back as the agent's message.
        rc, out, err = module.run_command([module.get_bin_path("bloomctl", required=True), "remove", p["app"],
                                           p["version"]])
        if rc:
            module.fail_json(msg=(err or out).strip().replace("bloomctl: ", "", 1), **result)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            app=dict(type="str", required=True),
            state=dict(type="str", default="present", choices=["present", "rolled_back", "absent"]),
            version=dict(type="str"),
            src=dict(type="path"),
            tarball=dict(type="path"),
            sha256=dict(type="str"),
            wait=dict(type="bool", default=True),
        ),
        mutually_exclusive=[("src", "tarball")],
        supports_check_mode=True,
    )
    result = dict(changed=False, outcome="", previous=None, current=None, version=module.params["version"], reason="")
    try:
        status = app_state(module, module.params["app"])
        result["previous"] = status.get("current")
        {"present": present, "rolled_back": rolled_back, "absent": absent}[module.params["state"]](module, result, status)
    except BloomctlError as err:
        module.fail_json(msg=err.message, rc=err.rc, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
