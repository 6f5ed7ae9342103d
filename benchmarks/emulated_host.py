"""Emulate a slower, noisier 2-core VM on this one, for the precision and recipe checks (issue #27).

What the second VM of the issue was: a Zen 3 without AVX-512, 2.4x slower on ResNet-50, whose Δs moved between runs
minutes apart. What a guest sees of such a host: other tenants take its vCPUs away for milliseconds at a time
(hypervisor steal: wall time passes, but the guest's scheduler never saw the thread wait, so run-queue accounting
cannot flag it) and leave its caches cold, and how much they do drifts. What this emulates, each part optional:
- kernels of a CPU without AVX-512: ``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN: convolutions, linears) and
  ``ATEN_CPU_CAPABILITY=avx2`` (ATen's own vectorised kernels: pooling, element-wise, softmax) in the child's
  environment. This changes which kernels run, not the clock, the caches or the memory system;
- steal by a co-tenant whose load drifts: a process that stops the timed process (SIGSTOP) for 2-10 ms at random
  times and meanwhile streams over a 64 MiB array on the freed cores (last-level cache and memory traffic), then
  resumes it (SIGCONT); its duty cycle takes a slow random walk between 3% and 25%, a new level every 10 s, from a
  fixed seed. A stopped process is not runnable, so, as with real steal, no call is flagged as having waited.
It does not emulate another microarchitecture's clock, cache sizes or a per-vCPU steal (both threads stop together;
with OpenMP's spinning barriers one stalled thread stalls the other anyway). Numbers under it are "this machine,
emulated", never the other VM's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from typing import Dict, Iterator, List

AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
STEAL = r'''
import os, random, signal, sys, time
import numpy as np
pid, rng = int(sys.argv[1]), random.Random(int(sys.argv[2]))
a = np.ones(64 * 2**20 // 8)
chunk = len(a) // 16
duty, change, i = 0.10, time.monotonic() + 10, 0
while True:
    now = time.monotonic()
    if now >= change:
        duty = min(0.25, max(0.03, duty + rng.uniform(-0.06, 0.06)))
        change = now + 10
    stall = rng.uniform(0.002, 0.010)
    time.sleep(stall * (1 - duty) / duty * rng.expovariate(1.0))  # a Poisson stream of stalls with this duty cycle
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        break
    try:
        end = time.monotonic() + stall
        while time.monotonic() < end:  # the other tenant on the freed cores: cache and memory traffic
            a[i * chunk:(i + 1) * chunk] += 1.0
            i = (i + 1) % 16
    finally:
        os.kill(pid, signal.SIGCONT)
'''


@contextlib.contextmanager
def emulated_host(steal: bool = True, avx2: bool = True, seed: int = 0) -> Iterator[Dict]:
    """Yields {"env": environment for the timed child, "describe": what is emulated, "join": fn(pid)}: start the
    timed child with ``env`` and call ``join(proc.pid)`` right after Popen; it then runs under the emulated host.
    Everything is undone on exit (every joined process is left running, never stopped)."""
    env = dict(os.environ, **(AVX2_ENV if avx2 else {}))
    parts = (["AVX2 kernels (ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2)"] if avx2 else []) + (
        [
            "steal: SIGSTOP/SIGCONT stalls of 2-10 ms at a 3-25% duty cycle drifting every 10 s, a 64 MiB memory "
            "stream on the freed cores during each"
        ]
        if steal
        else []
    )
    injectors: Dict[int, subprocess.Popen] = {}
    joined: List[int] = []

    def join(pid: int) -> None:
        joined.append(pid)
        if steal:
            injectors[pid] = subprocess.Popen([sys.executable, "-c", STEAL, str(pid), str(seed + len(joined))])

    def leave(pid: int) -> None:
        """Stop stealing from ``pid`` (call it once the process has ended, before its pid can be reused)."""
        p = injectors.pop(pid, None)
        if p is not None:
            p.kill()
            p.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGCONT)

    try:
        yield {"env": env, "describe": "; ".join(parts) or "nothing", "join": join, "leave": leave}
    finally:
        for pid in list(injectors):
            leave(pid)
