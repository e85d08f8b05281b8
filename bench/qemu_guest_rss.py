#!/usr/bin/env python3
"""The guest program's own resident memory inside a qemu-user process.

qemu-user (64-bit host, guest_base 0) maps the guest's binary, heap, stacks
and mmaps at guest addresses, below the host's own PIE, heap and libraries
(0x5555... and 0x7f...); the emulator's code, its heap and its translation
cache live above. Summing the Rss of the mappings below 0x5000_0000_0000
gives the guest's footprint as an ARM device would see it (within the page
granularity of the host). Usage:

    qemu_guest_rss.py PATTERN [SECONDS]

samples every qemu process whose command line contains PATTERN every 100 ms
for SECONDS (default: until none is left) and prints the last and the peak
guest RSS and the whole process's RSS, in KiB.
"""
import os
import sys
import time

GUEST_LIMIT = 0x5000_0000_0000


def qemu_pids(pattern):
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "qemu-" in cmd and pattern in cmd:
            yield int(pid)


def rss_kib(pid):
    guest = total = 0
    start = 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split(" ", 1)[0]
            if "-" in first and not line.startswith(("Rss", "Pss")) and ":" not in first:
                start = int(first.split("-")[0], 16)
            elif line.startswith("Rss:"):
                kib = int(line.split()[1])
                total += kib
                if start < GUEST_LIMIT:
                    guest += kib
    return guest, total


def main():
    pattern = sys.argv[1]
    until = time.monotonic() + float(sys.argv[2]) if len(sys.argv) > 2 else None
    last = peak = (0, 0)
    seen = False
    while until is None or time.monotonic() < until:
        pids = list(qemu_pids(pattern))
        if not pids:
            if seen and until is None:
                break
            time.sleep(0.1)
            continue
        seen = True
        for pid in pids:
            try:
                last = rss_kib(pid)
            except OSError:
                continue
            peak = (max(peak[0], last[0]), max(peak[1], last[1]))
        time.sleep(0.1)
    print(f"guest RSS {last[0]} KiB (peak {peak[0]} KiB); qemu process RSS {last[1]} KiB (peak {peak[1]} KiB)")


if __name__ == "__main__":
    main()
