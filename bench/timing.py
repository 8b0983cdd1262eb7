"""Interleaved timing: every implementation runs in the same process, alternating A B A B ...,
so machine noise (other processes, frequency changes) hits all of them alike; the result is the
median of the per-round times. Every sample waits for MXNet's asynchronous engine to finish
(``wait_to_read`` on every output), so it measures the work, not the queueing."""
import statistics
import time

import mxnet as mx

__all__ = ['sync', 'interleaved', 'summary', 'ratio']


def sync(out):
    """Block until every NDArray in ``out`` (nested lists/tuples/dicts allowed) is computed."""
    if isinstance(out, mx.nd.NDArray):
        out.wait_to_read()
    elif isinstance(out, dict):
        for v in out.values():
            sync(v)
    elif isinstance(out, (list, tuple)):
        for v in out:
            sync(v)


def interleaved(fns, repeat, warmup=1, number=1):
    """Time several callables alternately.

    Parameters
    ----------
    fns : dict name -> callable() returning NDArrays (or nothing)
    repeat : int
        Rounds; in each round every callable is timed once (the order rotates between rounds so
        no implementation always runs right after the same other one).
    warmup : int
        Untimed calls of each callable first (graph building, allocations).
    number : int
        Calls per sample (for very short functions); the sample is their mean.

    Returns dict name -> list of seconds per call (length ``repeat``).
    """
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            sync(fns[name]())
    mx.nd.waitall()
    times = {name: [] for name in names}
    for r in range(repeat):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            fn = fns[name]
            start = time.perf_counter()
            for _ in range(number):
                out = fn()
            sync(out)
            mx.nd.waitall()
            times[name].append((time.perf_counter() - start) / number)
    return times


def summary(samples):
    """dict with median / min / max (seconds) and n of a list of samples."""
    return {'median': statistics.median(samples), 'min': min(samples), 'max': max(samples),
            'n': len(samples)}


def ratio(reference, ours):
    """Speed-up of ``ours`` over ``reference`` from their median times (> 1: ours faster)."""
    return statistics.median(reference) / statistics.median(ours)
