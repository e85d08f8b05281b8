"""Starts the process an unpacked OCI bundle describes, as a runtime would:
its root filesystem as `/`, its user, working directory, environment and
arguments (from the bundle's config.json, written by `umoci unpack`), plus
extra VAR=value pairs given after the bundle. Run as root; replaces itself
with the entrypoint, so the caller's PID and signals reach it.

    python3 .ci/images/start.py BUNDLE [VAR=value ...]
"""

import json
import os
import sys

bundle, extra = sys.argv[1], sys.argv[2:]
with open(os.path.join(bundle, "config.json")) as f:
    spec = json.load(f)
process = spec["process"]
env = dict(e.split("=", 1) for e in process.get("env", []))
env.update(e.split("=", 1) for e in extra)
root = os.path.join(bundle, spec["root"]["path"])
os.chroot(root)
os.chdir(process.get("cwd", "/"))
os.setgroups([])
os.setgid(process["user"]["gid"])
os.setuid(process["user"]["uid"])
os.execve(process["args"][0], process["args"], env)
