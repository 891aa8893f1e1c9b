"""The one way the benchmarks time things (`alternate`: sides called in turn, so a ratio of
two sides compares calls made under the same machine load), and the one peak-RSS probe
(`peak_rss`: a snippet run in a fresh process, its VmHWM read).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import torch

from satpipe.core.errors import SatpipeError
from satpipe.core.modules import frozen, input_leaf
from satpipe.pipeline.methods.base import target_logit_sum


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to `n` inside the block (None: left as they are), restored
    after. On a CPU shared with other jobs, small ops on 2 threads can run tens of times slower
    than on 1 (a thread waits for its descheduled partner); one thread keeps a quick run quick
    and a CPU clock exact."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def forward_backward(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d sum_b logit[b, y[b]] / d x (same shape as x) from one forward and one backward pass of
    `model` in eval mode with no parameter gradients: the floor the benchmarks time saliency
    methods against, and the machine yardstick's unit of work."""
    with frozen(model):
        leaf = input_leaf(x)
        return torch.autograd.grad(target_logit_sum(model(leaf), y), leaf)[0]


def synchronize(device: torch.device | str | None) -> None:
    """Wait for the queued work of `device` (a no-op on a CPU)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timings:
    """Seconds of every timed call per side, in call order, and what each call returned."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    results: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def rounds(self) -> int:
        return min((len(s) for s in self.seconds.values()), default=0)

    def min(self, side: str) -> float:
        return min(self.seconds[side])

    def median(self, side: str) -> float:
        return statistics.median(self.seconds[side])

    def best(self, side: str) -> Any:
        """What the fastest call of `side` returned (its own counts, e.g. attacked batches)."""
        times = self.seconds[side]
        return self.results[side][times.index(min(times))]

    def summary(self) -> dict[str, Any]:
        """JSON-ready: rounds, and min / median / all seconds per side (rounded to 0.1 ms)."""
        return {
            "rounds": self.rounds,
            "min_s": {k: round(self.min(k), 4) for k in self.seconds},
            "median_s": {k: round(self.median(k), 4) for k in self.seconds},
            "seconds": {k: [round(t, 4) for t in v] for k, v in self.seconds.items()},
        }


def alternate(
    sides: Mapping[str, Callable[[int], Any]], *, device: torch.device | str | None = None,
    rounds: int = 1, warmup: int = 0, floor_seconds: float = 0.0, max_rounds: int = 50,
    prepare: Mapping[str, Callable[[int], Any]] | None = None, mirror: bool = False,
    clock: Callable[[], float] | None = None,
) -> Timings:  # fmt: skip
    """Time `sides` (name -> fn(call_index)) in alternation and return their Timings: round r
    calls every side once, in order, each call ending with a device synchronisation (queued
    CUDA kernels are timed where they ran). Each side must do the same work on every call.

    warmup: untimed calls of each side first (indices 0 .. warmup-1; timed calls go on from
    there, so a side can use the index as its epoch). rounds: at least this many timed rounds;
    floor_seconds: keep adding rounds until this much time has passed (or `max_rounds`), so
    fast sides are timed over more calls, which gives a min over short calls more chances to
    catch a quiet moment. prepare: name -> fn(call_index), untimed set-up run before each of
    that side's calls (a fresh data pipeline, say). mirror: odd rounds call the sides in
    reverse order, so rounds 2k and 2k+1 are an ABBA pair (a load that drifts linearly weighs
    on both sides alike). clock: what a call's seconds are read from (default perf_counter,
    wall time; e.g. time.process_time, the process's CPU time, which other processes' load
    barely moves on a CPU). The time floor is always wall time.
    """
    prepare = prepare or {}
    clock = clock or perf_counter
    for i in range(warmup):
        for name, fn in sides.items():
            if name in prepare:
                prepare[name](i)
            fn(i)
    synchronize(device)
    out = Timings({name: [] for name in sides}, {name: [] for name in sides})
    start, done = perf_counter(), 0
    while done < max(1, rounds) or (perf_counter() - start < floor_seconds and done < max_rounds):
        index = warmup + done
        order = list(sides.items())
        for name, fn in reversed(order) if mirror and done % 2 else order:
            if name in prepare:
                prepare[name](index)
                synchronize(device)
            t0 = clock()
            result = fn(index)
            synchronize(device)
            out.seconds[name].append(clock() - t0)
            out.results[name].append(result)
        done += 1
    return out


def time_once(fn: Callable[[], Any], device: torch.device | str | None = None,
              rounds: int = 1) -> float:  # fmt: skip
    """Best seconds of `rounds` calls of `fn` (device synchronised): a side timed alone, e.g. a
    run tens of times slower than what it is compared with, so drift barely moves its ratio."""
    return alternate({"run": lambda _i: fn()}, device=device, rounds=rounds).min("run")


RSS_FLAT = "<= 1.1 (flat)"  # peak RSS at the larger size / at the smaller: bounded memory

# Runs before the probed snippet: `args` (the JSON argument) and `vm_hwm_mb()`.
_PROBE_HEAD = '''
import json, sys
args = json.loads(sys.argv[1])

def vm_hwm_mb():
    """VmHWM, the peak RSS of this process image. ru_maxrss would not do on Linux: it survives
    fork+exec, so it would report the (larger) parent's peak."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

result = {}
'''
_PROBE_TAIL = '\nprint(json.dumps({**result, "peak_rss_mb": vm_hwm_mb()}))\n'


def peak_rss(code: str, args: Mapping[str, Any], what: str) -> dict[str, Any]:
    """Run `code` in a fresh Python process (no progress bars) and return the dict it left in
    `result`, plus "peak_rss_mb" (MiB): the process's peak RSS. `code` sees `args` (this
    mapping, through JSON) and `vm_hwm_mb()`. A failed run is a SatpipeError naming `what`
    with the last line of its stderr."""
    env = {**os.environ, "SATPIPE_NO_PROGRESS": "1"}
    script = _PROBE_HEAD + code + _PROBE_TAIL
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(dict(args))],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise SatpipeError(f"bench: {what} failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
