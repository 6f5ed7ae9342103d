"""What else the machine did while we timed, and keeping it from disturbing the timing.

Why: on a shared machine another process preempts our threads in the middle of a call, and with
OpenMP's spinning barriers one preempted thread stalls the other (measured here: a ResNet-18 forward
went from 14 ms to 950 ms median with two busy processes on the two cores). Such a call times the
other process, not the model. So every call is tagged with how long this process's threads sat in
the run queue during it (Linux schedstat: runnable but not running); a call whose threads waited for
more than ``clean_wait`` of their time is *disturbed*, and Δ estimates use undisturbed calls only.
Per timing group the machine's state is stored beside the numbers: other processes' share of the
CPU, hypervisor steal, load average, CPU pressure (PSI), involuntary context switches, frequency.

Priority: while timing, attnbench asks the OS for ``latency.nice`` (default -20) for all of its
threads, which the OS grants to root or with CAP_SYS_NICE; others then barely preempt the timing.
Where it is not granted nothing changes, and the record says so. The old niceness is restored after.
Everything here degrades to "unknown" (None) where /proc is missing (macOS, Windows).
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


class ThreadWait:
    """Run-queue wait (seconds) summed over this process's threads, from /proc/self/task/*/schedstat."""

    def __init__(self) -> None:
        self.paths: List[str] = []
        self.refresh()

    def refresh(self) -> None:
        """Re-list the threads (a runtime may have started its pool since)."""
        try:
            tids = os.listdir("/proc/self/task")
        except OSError:
            tids = []
        self.paths = [f"/proc/self/task/{t}/schedstat" for t in tids]
        if self.paths and self.read() is None:
            self.paths = []

    @property
    def available(self) -> bool:
        return bool(self.paths)

    def read(self) -> Optional[float]:
        if not self.paths:
            return None
        total, seen = 0, 0
        for p in self.paths:
            try:
                with open(p) as f:
                    fields = f.read().split()
                total += int(fields[1])
                seen += 1
            except (OSError, ValueError, IndexError):
                continue  # a thread that ended
        return total / 1e9 if seen else None


@dataclass(frozen=True)
class MachineSample:
    """One reading of the machine's counters; two of them give the state between them."""

    t: float
    cpu_total: Optional[int]  # jiffies, all CPUs
    cpu_busy: Optional[int]
    cpu_steal: Optional[int]
    own_ticks: Optional[int]  # this process's utime + stime
    psi_cpu_us: Optional[int]  # /proc/pressure/cpu "some" total
    nivcsw: int
    loadavg: Optional[float]


def sample() -> MachineSample:
    total = busy = steal = own = psi = None
    stat = _read("/proc/stat")
    if stat:
        try:
            f = [int(v) for v in stat.splitlines()[0].split()[1:]]
            f += [0] * (8 - len(f))
            total = sum(f[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
            busy = total - f[3] - f[4]
            steal = f[7]
        except (ValueError, IndexError):
            pass
    own_stat = _read("/proc/self/stat")
    if own_stat:
        try:
            fields = own_stat.rsplit(")", 1)[1].split()
            own = int(fields[11]) + int(fields[12])
        except (ValueError, IndexError):
            pass
    pressure = _read("/proc/pressure/cpu")
    if pressure:
        try:
            psi = int(pressure.splitlines()[0].rsplit("total=", 1)[1])
        except (ValueError, IndexError):
            pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return MachineSample(
        time.perf_counter(), total, busy, steal, own, psi, resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw, load
    )


def cpu_mhz() -> Optional[float]:
    """Mean current frequency over the CPUs where the kernel exposes it (cpufreq, else /proc/cpuinfo)."""
    values = []
    for i in range(os.cpu_count() or 0):
        v = _read(f"/sys/devices/system/cpu/cpu{i}/cpufreq/scaling_cur_freq")
        if v and v.strip().isdigit():
            values.append(int(v) / 1000)
    if not values:
        info = _read("/proc/cpuinfo") or ""
        for line in info.splitlines():
            if line.startswith("cpu MHz"):
                try:
                    values.append(float(line.split(":", 1)[1]))
                except ValueError:
                    pass
    return round(sum(values) / len(values), 1) if values else None


def machine_state(a: MachineSample, b: MachineSample) -> Dict[str, Optional[float]]:
    """What the machine did between two samples: shares of all CPUs' time, and per-second rates."""
    out: Dict[str, Optional[float]] = {
        "others_cpu": None,
        "steal": None,
        "psi_cpu_some": None,
        "loadavg": b.loadavg,
        "nivcsw_per_s": None,
        "cpu_mhz": cpu_mhz(),
    }
    dt = b.t - a.t
    if None not in (a.cpu_total, b.cpu_total) and b.cpu_total > a.cpu_total:
        span = b.cpu_total - a.cpu_total
        if None not in (a.own_ticks, b.own_ticks):
            others = (b.cpu_busy - a.cpu_busy) - (b.own_ticks - a.own_ticks)
            out["others_cpu"] = round(min(1.0, max(0.0, others / span)), 4)
        out["steal"] = round((b.cpu_steal - a.cpu_steal) / span, 4)
    if None not in (a.psi_cpu_us, b.psi_cpu_us) and dt > 0:
        out["psi_cpu_some"] = round((b.psi_cpu_us - a.psi_cpu_us) / 1e6 / dt, 4)
    if dt > 0:
        out["nivcsw_per_s"] = round((b.nivcsw - a.nivcsw) / dt, 1)
    return out


def _tids() -> List[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]  # 0: the calling thread


@contextlib.contextmanager
def raised_priority(nice: Optional[int]) -> Iterator[Dict[str, object]]:
    """Ask for niceness ``nice`` for every thread of this process (Linux's setpriority is per thread);
    yields what was obtained, and puts every thread back as it was on exit."""
    info: Dict[str, object] = {"requested": nice, "obtained": None, "granted": False}
    if nice is None or not hasattr(os, "setpriority"):
        yield info
        return
    old: Dict[int, int] = {}
    for tid in _tids():
        try:
            old[tid] = os.getpriority(os.PRIO_PROCESS, tid)
            if old[tid] != nice:  # raising needs root / CAP_SYS_NICE; lowering (nice: 5) is always allowed
                os.setpriority(os.PRIO_PROCESS, tid, nice)
        except (PermissionError, ProcessLookupError, OSError):
            continue
    try:
        main = os.getpriority(os.PRIO_PROCESS, 0)
    except OSError:
        main = None
    info["obtained"] = main
    info["granted"] = main is not None and main == nice
    if not info["granted"]:
        info["note"] = "not permitted to raise priority (needs root or CAP_SYS_NICE)"
    try:
        yield info
    finally:
        fallback = old.get(os.getpid(), max(old.values(), default=0))
        for tid in _tids():
            try:
                os.setpriority(os.PRIO_PROCESS, tid, old.get(tid, fallback))
            except (PermissionError, ProcessLookupError, OSError):
                continue
