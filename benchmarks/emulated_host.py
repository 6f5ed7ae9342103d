"""Emulate a slower, noisier 2-core VM on this one, for the precision and recipe checks (issue #27).

What the second VM of the issue was: a Zen 3 without AVX-512, 2.4x slower on ResNet-50, whose Δs moved between
runs minutes apart (host state: other tenants' CPU and memory traffic). What this emulates, each part optional:
- kernels of a CPU without AVX-512: ``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN: convolutions, linears) and
  ``ATEN_CPU_CAPABILITY=avx2`` (ATen's own vectorised kernels: pooling, element-wise, softmax) in the child's
  environment. This changes which kernels run, not the clock, the caches or the memory system;
- fewer cycles and steal-like stalls: the timed process runs in a cgroup with a CPU quota (default 1.5 CPUs per
  100 ms period: when its threads have used 150 ms in a period they are stopped until the next one, like a vCPU the
  hypervisor deschedules);
- a co-tenant whose load drifts: a process in its own cgroup (so the timed process's nice -20 does not silence it)
  that streams over a 64 MiB array (memory bandwidth, last-level cache) for a duty cycle that takes a slow random
  walk between 5% and 30% of one core, a new level every 10 s, with a fixed seed.
It does not emulate another microarchitecture's clock or cache sizes; numbers under it are "this machine, emulated",
never the other VM's. Needs root for the cgroups (cgroup v1 ``cpu`` or v2); without them only the kernel part applies
and the emulation says so.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, Optional

AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
NEIGHBOUR = r'''
import random, sys, time
import numpy as np
rng = random.Random(int(sys.argv[1]))
a = np.ones(64 * 2**20 // 8)
duty, change = 0.10, time.monotonic() + 10
while True:
    now = time.monotonic()
    if now >= change:
        duty = min(0.30, max(0.05, duty + rng.uniform(-0.08, 0.08)))
        change = now + 10
    end = now + 0.1 * duty
    while time.monotonic() < end:
        a += 1.0  # streams 64 MiB: memory bandwidth and the last-level cache
    time.sleep(max(0.0, 0.1 * (1 - duty)))
'''


def _cgroup_root() -> Optional[Path]:
    v1 = Path("/sys/fs/cgroup/cpu")
    if (v1 / "cgroup.procs").exists() and os.access(v1, os.W_OK):
        return v1
    v2 = Path("/sys/fs/cgroup")
    if (v2 / "cgroup.controllers").exists() and "cpu" in (v2 / "cgroup.controllers").read_text() and os.access(v2, os.W_OK):
        return v2
    return None


class _Group:
    """A cpu cgroup (v1 or v2) with an optional quota; processes join it by pid."""

    def __init__(self, root: Path, name: str, cpus: Optional[float]):
        self.root, self.path = root, root / name
        self.path.mkdir(exist_ok=True)
        self.v2 = not (root / "cpu.cfs_quota_us").exists() and (root / "cgroup.controllers").exists()
        if cpus is not None:
            if self.v2:
                (self.path / "cpu.max").write_text(f"{int(cpus * 100_000)} 100000")
            else:
                (self.path / "cpu.cfs_period_us").write_text("100000")
                (self.path / "cpu.cfs_quota_us").write_text(str(int(cpus * 100_000)))

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def remove(self) -> None:
        for pid in (self.path / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (self.root / "cgroup.procs").write_text(pid)
        with contextlib.suppress(OSError):
            self.path.rmdir()


@contextlib.contextmanager
def emulated_host(cpus: Optional[float] = 1.5, neighbour: bool = True, avx2: bool = True, seed: int = 0) -> Iterator[Dict]:
    """Yields {"env": environment for the timed child, "describe": what is emulated, "join": fn(pid)}; a child
    started with that env and joined (``join(proc.pid)`` right after Popen, or run via ``preexec``) is timed under
    the emulated host. Everything is undone on exit."""
    root = _cgroup_root()
    parts, groups, procs = [], [], []
    env = dict(os.environ, **(AVX2_ENV if avx2 else {}))
    if avx2:
        parts.append("AVX2 kernels (ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2)")
    timed = None
    try:
        if root is not None and cpus is not None:
            timed = _Group(root, f"attnbench-timed-{os.getpid()}", cpus)
            groups.append(timed)
            parts.append(f"CPU quota {cpus:g} CPUs per 100 ms ({root.name} cgroup)")
        if neighbour:
            p = subprocess.Popen([sys.executable, "-c", NEIGHBOUR, str(seed)])
            procs.append(p)
            if root is not None:
                g = _Group(root, f"attnbench-neighbour-{os.getpid()}", None)
                groups.append(g)
                g.add(p.pid)
            parts.append("a co-tenant streaming 64 MiB at a 5-30% duty cycle drifting every 10 s"
                         + ("" if root is not None else " (no cgroup: our nice -20 mutes it)"))
        if root is None and cpus is not None:
            parts.append("no writable cpu cgroup: no quota")

        def join(pid: int) -> None:
            if timed is not None:
                timed.add(pid)

        yield {"env": env, "describe": "; ".join(parts) or "nothing", "join": join}
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for g in groups:
            g.remove()
