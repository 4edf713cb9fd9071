#!/usr/bin/python3
"""Stands in for ssh in unit tests of bloomctl -H: runs the remote command here, with bloomctl being
this source tree's (ssh's own options, up to '--', are ignored)."""

import os
import shlex
import sys

# ssh hands the far side one command line, made of the words after '--'
argv = shlex.split(" ".join(sys.argv[sys.argv.index("--") + 1:]))
if argv[0] == "bloomctl":
    argv = [sys.executable, "-m", "bloom_agent.cli", *argv[1:]]
os.execv(argv[0], argv)
