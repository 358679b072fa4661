"""Is the machine busy while we time: load average and CPU steal around each round, judged by the busy policy.

A timing taken while other jobs run (or while the hypervisor lends our cores to another guest: steal) is slower by an
unknown amount and says nothing about the model. The bench reads the 1-minute load average (/proc/loadavg) and the
steal counter (/proc/stat) before and after each round. The machine counts as busy when the load average is above
the cores the bench itself keeps busy (its threads) plus `LOAD_MARGIN`, or when steal is above `MAX_STEAL` of the
elapsed CPU time. The policy (`BenchSpec.busy`) decides: `refuse` raises, `mark` (default) flags the result,
`ignore` only records.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from compress.core.errors import CompressError

LOAD_MARGIN = 0.5  # load average allowed above the bench's own threads (the parent, the kernel, a shell)
MAX_STEAL = 0.05  # share of elapsed CPU time the hypervisor may take before timings are suspect
POLICIES = ("refuse", "mark", "ignore")


def loadavg() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        try:
            return float(os.getloadavg()[0])
        except (OSError, AttributeError):
            return None


def cpu_times() -> tuple[float, float] | None:
    """(steal, total) CPU time since boot over all CPUs, in jiffies, from /proc/stat (None off Linux).

    The aggregate `cpu` line holds user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    already inside user/nice, so the total is the sum of the first eight."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    values = [float(v) for v in fields[1:9]]
    return values[7], sum(values)


@dataclass(frozen=True)
class Reading:
    """The machine at one moment: wall clock, 1-minute load average, cumulative (steal, total) CPU time."""

    when: float
    load: float | None
    cpu: tuple[float, float] | None


def read() -> Reading:
    return Reading(time.perf_counter(), loadavg(), cpu_times())


def steal_fraction(before: Reading, after: Reading) -> float | None:
    """Steal as a share of the CPU time elapsed between two readings (None when unknown or no time passed)."""
    if before.cpu is None or after.cpu is None:
        return None
    total = after.cpu[1] - before.cpu[1]
    if total <= 0:
        return None
    return max(0.0, (after.cpu[0] - before.cpu[0]) / total)


class Watch:
    """Load and steal around every round of one bench, judged against its threads under a policy.

    Args:
        threads: the cores the bench keeps busy (its intra-op threads); the load limit is this + `LOAD_MARGIN`.
        policy: refuse | mark | ignore (see the module docstring).
    """

    def __init__(self, threads: int, policy: str = "mark"):
        if policy not in POLICIES:
            raise ValueError(f"busy policy must be one of {POLICIES}, not {policy!r}")
        self.threads, self.policy = threads, policy
        self.limit = threads + LOAD_MARGIN
        self.records: list[dict] = []
        self.reasons: list[str] = []
        self.start = read()
        self._judge(self._load_reasons(self.start.load, None, "before the bench"))  # refuse before loading models

    def _load_reasons(self, load: float | None, steal: float | None, where: str) -> list[str]:
        reasons = []
        if load is not None and load > self.limit:
            threads = f"{self.threads} bench thread" + ("" if self.threads == 1 else "s")
            reasons.append(f"load average {load:.2f} > {self.limit:.1f} ({threads} + {LOAD_MARGIN}) {where}")
        if steal is not None and steal > MAX_STEAL:
            reasons.append(f"CPU steal {100 * steal:.1f}% > {100 * MAX_STEAL:.0f}% {where}")
        return reasons

    def _judge(self, reasons: list[str]) -> None:
        if not reasons:
            return
        if self.policy == "refuse":
            raise CompressError(f"the machine is busy: {reasons[0]}",
                                "stop the other jobs on it and bench again, or set busy: mark to time anyway and "
                                "flag the result")
        self.reasons.extend(reasons)

    @contextmanager
    def round(self, device: str, rnd: int):
        """Read the machine before and after one round (all shapes and models once) and judge the round: the load
        average after it (1-minute average: it lags, so it covers the round) and the steal during it."""
        before = read()
        yield
        after = read()
        steal = steal_fraction(before, after)
        # the load before a round is the load after the previous one (or before the bench): judged there already
        reasons = self._load_reasons(after.load, steal, f"in round {rnd + 1} on {device}")
        self.records.append({
            "device": device, "round": rnd, "seconds": round(after.when - before.when, 3),
            "load_before": before.load, "load_after": after.load,
            "steal_fraction": None if steal is None else round(steal, 4), "busy_reason": "; ".join(reasons) or None})
        self._judge(reasons)

    def summary(self) -> dict:
        """The record for the result: load before/after the bench, steal over it, per-round readings, verdict."""
        end = read()
        steal = steal_fraction(self.start, end)
        busy = self.policy == "mark" and bool(self.reasons)
        reason = None
        if busy:
            reason = self.reasons[0] + (f" (and {len(self.reasons) - 1} more)" if len(self.reasons) > 1 else "")
        return {"load_before": self.start.load, "load_after": end.load,
                "steal_fraction": None if steal is None else round(steal, 4), "load_limit": self.limit,
                "busy": busy, "busy_reason": reason, "busy_policy": self.policy, "per_round": self.records}
