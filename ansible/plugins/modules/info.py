#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: bloom-agent developers
# MIT License (see LICENSE in the bloom-agent source)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: info
short_description: What bloom-agent knows about an app on the host
description:
  - Returns the app's status (current and last good release, state, probation), its installed
    releases and its deployment history, from C(bloomctl status), C(releases) and C(history) with
    C(--json). Changes nothing; for C(when:) conditions and reports.
version_added: 0.1.0
author: bloom-agent developers (@bloom-agent)
options:
  app:
    description: The app's name. Without it, the agent's status with every app.
    type: str
  history:
    description: How many history records to return (newest first); 0 for none.
    type: int
    default: 10
notes:
  - Supports check mode (it changes nothing either way).
seealso:
  - module: bloom.agent.release
"""

EXAMPLES = r"""
- name: What serves web
  bloom.agent.info:
    app: web
  register: web

- ansible.builtin.debug:
    msg: "{{ inventory_hostname }} serves {{ web.status.current }} ({{ web.status.state }})"
"""

RETURN = r"""
status:
  description: C(bloomctl status APP --json), or the agent's whole status without I(app).
  returned: always
  type: dict
releases:
  description: C(bloomctl releases APP --json).
  returned: with I(app)
  type: list
  elements: dict
history:
  description: C(bloomctl history APP --json), newest first.
  returned: with I(app)
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.bloom.agent.plugins.module_utils.bloomctl import BloomctlError, bloomctl


def main():
    module = AnsibleModule(
        argument_spec=dict(app=dict(type="str"), history=dict(type="int", default=10)),
        supports_check_mode=True,
    )
    app = module.params["app"]
    try:
        if not app:
            module.exit_json(changed=False, status=bloomctl(module, "status", ok_codes=(0, 1, 3))[1])
        result = dict(changed=False, status=bloomctl(module, "status", app, ok_codes=(0, 3))[1],
                      releases=bloomctl(module, "releases", app)[1], history=[])
        if module.params["history"] > 0:
            result["history"] = bloomctl(module, "history", app, "--limit", str(module.params["history"]))[1]
    except BloomctlError as err:
        module.fail_json(msg=err.message, rc=err.rc)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
