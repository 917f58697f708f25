"""Run a command as a child process and print its wall time and peak RSS as one JSON line (Linux wait4 rusage)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def main() -> int:
    cmd = sys.argv[1:]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    print(json.dumps({"wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
                      "returncode": os.waitstatus_to_exitcode(status)}))
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
