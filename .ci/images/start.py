"""Starts the process an unpacked OCI bundle describes, as a runtime would:
its root filesystem as `/`, its user, working directory, environment and
arguments (from the bundle's config.json, written by `umoci unpack`), plus
extra VAR=value pairs given after the bundle, and the device nodes every
OCI runtime provides in /dev (the runtime specification's default devices:
null, zero, full, random, urandom, tty; the hub's random numbers come from
/dev/urandom in a static binary). Run as root; replaces itself with the
entrypoint, so the caller's PID and signals reach it.

    python3 .ci/images/start.py BUNDLE [VAR=value ...]
"""

import json
import os
import stat
import sys

# The OCI runtime specification's default devices: (name, major, minor).
DEFAULT_DEVICES = [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7),
                   ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)]

bundle, extra = sys.argv[1], sys.argv[2:]
with open(os.path.join(bundle, "config.json")) as f:
    spec = json.load(f)
process = spec["process"]
env = dict(e.split("=", 1) for e in process.get("env", []))
env.update(e.split("=", 1) for e in extra)
root = os.path.join(bundle, spec["root"]["path"])
os.makedirs(os.path.join(root, "dev"), exist_ok=True)
for name, major, minor in DEFAULT_DEVICES:
    node = os.path.join(root, "dev", name)
    if not os.path.exists(node):
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(node, 0o666)
os.chroot(root)
os.chdir(process.get("cwd", "/"))
os.setgroups([])
os.setgid(process["user"]["gid"])
os.setuid(process["user"]["uid"])
os.execve(process["args"][0], process["args"], env)
