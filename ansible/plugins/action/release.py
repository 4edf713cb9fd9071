# -*- coding: utf-8 -*-
# Copyright: bloom-agent developers
# MIT License (see LICENSE in the bloom-agent source)
"""bloom.agent.release with ``src``: the tarball goes from the controller to a temporary directory on
the host, keeping its file name (the agent reads the version from it), then the module runs there."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    TRANSFERS_FILES = True

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        args = dict(self._task.args)
        src = args.pop("src", None)
        if src is None:
            result.update(self._execute_module(module_name="bloom.agent.release", module_args=args,
                                               task_vars=task_vars))
            return result
        try:
            local = self._find_needle("files", src)
        except Exception as exc:
            raise AnsibleActionFail("src %s: %s" % (src, exc))
        remote_dir = self._make_tmp_path()
        try:
            remote = self._connection._shell.join_path(remote_dir, os.path.basename(local))
            self._transfer_file(local, remote)
            self._fixup_perms2((remote_dir, remote))
            args["tarball"] = remote
            result.update(self._execute_module(module_name="bloom.agent.release", module_args=args,
                                               task_vars=task_vars))
        finally:
            self._remove_tmp_path(remote_dir)
        return result
