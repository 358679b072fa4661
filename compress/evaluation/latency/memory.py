"""Peak resident memory of one bench worker, not inherited from the process that started it.

`getrusage(RUSAGE_SELF).ru_maxrss` of a child started by fork/exec keeps the high-water mark of the forked copy of
its parent (Linux folds the old address space's peak into it at exec), so every worker of a big parent read the
parent's peak. `VmHWM` in /proc/self/status is the peak of the current address space only, and writing "5" to
/proc/self/clear_refs resets it to the current resident size. A worker resets it when it starts (`reset_peak`),
then reads it after loading its model and after its timed runs. Where the reset is not allowed, a freshly started
interpreter reading its own VmHWM is still clean (an isolated worker is one; the bench starts one for in-process
timings).
"""

from __future__ import annotations

from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak() -> bool:
    """Reset this process's VmHWM to its current resident size; False where the kernel does not allow it."""
    try:
        with CLEAR_REFS.open("w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def status_mb(field: str = "VmHWM") -> float | None:
    """A memory line of /proc/self/status (VmHWM: peak resident, VmRSS: resident now) in MB; None off Linux."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)  # the kernel writes kB
    except (OSError, ValueError, IndexError):
        return None
    return None
