"""Peak resident memory of this process (shared by the benchmark scripts)."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """This process's own peak RSS in MB.

    ``/proc/self/status`` ``VmHWM`` belongs to the process's current address space, so it starts
    afresh at ``exec``; ``getrusage``'s ``ru_maxrss`` is carried across ``exec`` on Linux, so a
    subprocess started by a driver that already holds a model would report the driver's RSS as
    its own floor. ``ru_maxrss`` is the fallback off Linux.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
