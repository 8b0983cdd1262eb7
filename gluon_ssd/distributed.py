"""Helpers for multi-process training on MXNet's parameter server (``--kvstore dist_*``).

The engine uses these four pieces; the processes themselves are started by
:mod:`gluon_ssd.launch` (or by hand across hosts, see its docstring).

``create_kvstore(name)``
    ``None``/``''`` -> ``None``; ``'local'``/``'device'``/``'nccl'`` -> the string itself (the
    ``gluon.Trainer`` creates them lazily and skips them for a single device); ``'dist_*'`` ->
    installs :func:`install_crash_guard` and returns ``mx.kv.create(name)``; ``'horovod'`` ->
    ``mx.kv.create('horovod')`` (optional, needs Horovod built with MXNet support).

``worker_info(kv) -> (rank, num_workers)``
    ``(0, 1)`` for anything that is not a distributed ``KVStore``. Ranks are assigned by the
    ps-lite scheduler in connection order, so use this (not the launcher's process index) to pick
    the data shard and to decide who writes checkpoints/logs (rank 0).

``shard_indices(n, rank, num_workers, seed=0, epoch=0, remainder='pad')`` and ``ShardSampler``
    One shuffled permutation per epoch, the same on every worker (seeded with ``seed`` and
    ``epoch``), split into ``num_workers`` contiguous shards of identical length, so all workers
    run the same number of steps (a worker with one step more would block ``dist_sync`` forever).
    ``remainder='pad'`` (default) repeats the first ``(-n) % num_workers`` indices of the
    permutation, so every sample is seen each epoch and at most ``num_workers - 1`` are seen twice;
    ``remainder='drop'`` drops the last ``n % num_workers`` of the permutation (shards are then
    disjoint). ``ShardSampler(n, rank, num_workers, seed)`` is the same as a
    ``gluon.data.Sampler`` for ``DataLoader(dataset, batch_size=local_bs, sampler=...,
    last_batch='discard')``; it moves to the next epoch's permutation at every ``iter()``
    (or ``set_epoch(e)``).

Gradient averaging (what MXNet 1.9.1 does, worked out from ``gluon/trainer.py``):
``Trainer.step(s)`` sets ``optimizer.rescale_grad = 1 / s``. With a
``dist_sync``/``dist_device_sync`` kvstore the Trainer defaults to ``update_on_kvstore=True``: that
optimizer (with its ``rescale_grad``) is pickled to the servers at the first ``step``; every worker
pushes its *summed* local gradient and the server adds the pushes of **all** workers before
applying one update. With ``update_on_kvstore=False`` the workers pull the same cross-worker sum
and update locally. Either way the gradient that reaches the optimizer is the sum over the *global*
batch, so to average it each worker must call ``trainer.step(global_batch_size(local_scale, kv))``
= ``local_scale * num_workers``, where ``local_scale`` is what a single process would pass (its
local batch size for a loss summed over samples, or ``1`` for a loss that is already normalised,
e.g. SSD's loss divided by the number of positives, which then becomes the mean of the per-worker
normalised losses). ``dist_async`` applies each push separately, so there the scale stays local.
Because the optimizer is sent once, the scale must not change between steps (MXNet raises
``UserWarning`` otherwise): use a constant batch size (``last_batch='discard'`` or ``'rollover'``)
in distributed runs. Horovod's ``DistributedTrainer`` already divides by the number of workers, so
with ``'horovod'`` pass the local scale.

Crash safety: ps-lite keeps a process alive after an uncaught exception (the kvstore's destructor
waits in a barrier for the other workers, which wait for this one). :func:`install_crash_guard`
makes uncaught exceptions and SIGTERM/SIGINT/SIGHUP end the process at once with ``os._exit``;
wrap the training ``main`` in :func:`exit_guard` so that ``sys.exit(nonzero)`` does the same.
The guard acts only in the process that installed it: processes forked later (``DataLoader``
workers with ``-j N``) get the default SIGTERM/SIGHUP actions at fork (``os.register_at_fork``).
Before, they inherited the guard's wake-up pipe and a Python-level SIGTERM handler: the SIGTERM
that ``Pool.terminate()`` sends at a loader's shutdown could be lost in a worker (Python handlers
run only between bytecodes of the main thread, which was blocking on the queue lock the parent
holds), leaving ``terminate()`` waiting forever, while the C-level handler wrote the signal number
into the shared pipe, so the training process itself ``os._exit(143)``-ed and left that worker
orphaned (see :func:`_at_fork`).

Stall detection: :func:`heartbeat` touches the file named by ``$GLUON_SSD_HEARTBEAT`` (set per
worker by :mod:`gluon_ssd.launch`) and records the kvstore rank there, so that the launcher can
name a stuck rank.
"""
import contextlib
import os
import signal
import sys
import threading
import time
import traceback

import numpy as np

__all__ = ['create_kvstore', 'install_crash_guard', 'exit_guard', 'hard_exit',
           'die_with_parent_hook', 'heartbeat', 'worker_info', 'is_distributed', 'shard_indices',
           'ShardSampler', 'global_batch_size']

_LOCAL_KVSTORES = ('local', 'device', 'nccl')
# pid: the process that installed the guard (its handlers act only there); rfd/wfd: the wake-up
# pipe; previous: signal -> handler before the guard (the guarded signals); signums: their numbers
_GUARD = {'installed': False, 'pid': None, 'rfd': -1, 'wfd': -1, 'previous': {},
          'signums': frozenset(), 'excepthook': None, 'at_fork': False}
HEARTBEAT_ENV = 'GLUON_SSD_HEARTBEAT'
_HEARTBEAT = {'last': 0.0, 'rank': None}


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # pylint: disable=broad-except
            pass


def hard_exit(code):
    """Flush stdout/stderr and end the process at once with ``code`` (``os._exit``: no
    finalizers, no exit handlers, no joins)."""
    _flush()
    os._exit(code)  # pylint: disable=protected-access


def die_with_parent_hook():
    """A function to run in a child process (a ``preexec_fn``, or an at-fork hook) that makes the
    child get SIGKILL when the thread of this process that started it ends (Linux
    ``prctl(PR_SET_PDEATHSIG)``); ``None`` where that does not exist. Call it in the parent: it
    records the parent's pid, and a child whose parent is already gone kills itself at once."""
    if not sys.platform.startswith('linux'):
        return None
    try:
        import ctypes  # pylint: disable=import-outside-toplevel
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def hook():
        prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)
    return hook


def _excepthook(exc_type, exc, tb):
    code = 130 if exc_type is KeyboardInterrupt else 1
    try:
        sys.stderr.write('[gluon_ssd.distributed] uncaught %s, exiting at once (os._exit) so that '
                         'ps-lite cannot keep this process alive:\n' % exc_type.__name__)
        traceback.print_exception(exc_type, exc, tb)
    finally:
        hard_exit(code)


def _die_by_default(signum):
    """What the signal would have done without the guard: the default action."""
    try:
        signal.signal(signum, signal.SIG_DFL)
    except (ValueError, OSError):
        pass
    os.kill(os.getpid(), signum)


def _signal_handler(signum, _frame):
    if os.getpid() != _GUARD['pid']:  # a forked child that missed the at-fork reset
        _die_by_default(signum)
        return
    hard_exit(128 + signum)


def _wakeup_reader(fd, pid):
    """Exit on a signal even while the main thread is blocked in C++ (e.g. a kvstore wait).

    Python runs signal handlers only in the main thread between bytecodes; ``signal.set_wakeup_fd``
    makes the C-level handler write the signal number to ``fd`` right away, and this thread (which
    can run because ctypes releases the GIL during MXNet calls) ends the process. Only the guarded
    signals count (the C handler also writes the numbers of other signals that have a Python
    handler).
    """
    while True:
        try:
            data = os.read(fd, 1)
        except InterruptedError:
            continue
        except OSError:
            return
        if not data:
            return
        if data[0] in _GUARD['signums'] and os.getpid() == pid:
            hard_exit(128 + data[0])


def _reset_in_forked_child():
    """Drop the guard in a forked child (e.g. a ``DataLoader`` worker); see :func:`_at_fork`.

    SIGTERM and SIGHUP get the *default action* whatever Python handler the child inherited
    (SIGINT: Python's ``default_int_handler`` if it was the guard's), the inherited wake-up pipe is
    closed and ``sys.excepthook`` restored."""
    if not _GUARD['installed'] or os.getpid() == _GUARD['pid']:
        return
    if _GUARD['wfd'] >= 0:   # the wake-up fd is ours (not e.g. asyncio's)
        try:
            signal.set_wakeup_fd(-1)
        except (ValueError, OSError):
            pass
    for fd in (_GUARD['rfd'], _GUARD['wfd']):
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
    for sig in _GUARD['previous']:
        try:
            handler = signal.getsignal(sig)
            if sig == signal.SIGINT:
                if handler is _signal_handler:
                    signal.signal(sig, signal.default_int_handler)
            elif callable(handler):  # ours, or one the parent's code set (e.g. train_ssd.py's)
                signal.signal(sig, signal.SIG_DFL)
        except (ValueError, OSError):
            pass
    if sys.excepthook is _excepthook:
        sys.excepthook = _GUARD['excepthook'] or sys.__excepthook__
    _GUARD.update(installed=False, pid=None, rfd=-1, wfd=-1, previous={}, signums=frozenset())


_FORK_MASKS = {}   # thread ident -> that thread's signal mask before os.fork (guarded process only)


def _before_fork():
    if _GUARD['installed'] and os.getpid() == _GUARD['pid'] and _GUARD['signums']:
        try:
            _FORK_MASKS[threading.get_ident()] = signal.pthread_sigmask(signal.SIG_BLOCK,
                                                                        _GUARD['signums'])
        except (ValueError, OSError):
            pass


def _restore_fork_mask():
    old = _FORK_MASKS.pop(threading.get_ident(), None)
    if old is not None:
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        except (ValueError, OSError):
            pass


def _after_fork_in_child():
    try:
        _reset_in_forked_child()
    finally:
        _restore_fork_mask()   # a SIGTERM that came meanwhile now kills the child by default
        _FORK_MASKS.clear()


def _at_fork():
    """Register the fork hooks (once). Why a forked child must not keep the guard:

    * the child's C-level signal handler writes the signal number into the wake-up pipe it shares
      with the parent, whose reader thread then ends the *parent* with ``os._exit(128 + signum)``:
      the SIGTERM that ``Pool.terminate()`` sends to a loader's workers at shutdown ended the
      training process with 143 (and left the worker that had not died orphaned);
    * a Python-level SIGTERM handler only sets a flag in C and runs when the child's main thread
      next executes bytecode; the signal can land on another thread (MXNet restarts its engine
      threads in the child) while the main thread blocks on the task-queue lock that the parent
      keeps during ``Pool.terminate()`` (``Pool._help_stuff_finish``), so the worker never dies
      and the parent waits for it in ``join()`` forever;
    * a child that has not yet run its after-fork hooks (a loader worker the busy machine has not
      scheduled yet) still has both: so the guarded signals are blocked in the forking thread
      around ``fork`` and unblocked in the child only after the reset.
    """
    if not _GUARD['at_fork'] and hasattr(os, 'register_at_fork'):
        os.register_at_fork(before=_before_fork, after_in_parent=_restore_fork_mask,
                            after_in_child=_after_fork_in_child)
        _GUARD['at_fork'] = True


def install_crash_guard(signals=(signal.SIGTERM, signal.SIGINT, signal.SIGHUP)):
    """Make this process exit at once (``os._exit``) on an uncaught exception or on ``signals``.

    Installs ``sys.excepthook`` (prints the traceback, flushes stdout/stderr, ``os._exit(1)``;
    ``KeyboardInterrupt`` -> 130) and, when called from the main thread, handlers for ``signals``
    that exit with ``128 + signum`` even if the main thread is blocked inside MXNet. Idempotent.
    Needed for ``dist_*`` kvstores: without it a crashed worker stays alive in ps-lite's barrier
    and every other process waits forever. Returns ``True`` if signal handlers were installed.

    The guard belongs to the installing process only: forked children (``DataLoader`` workers,
    ``multiprocessing``) get the default actions of these signals at fork, so ``Pool.terminate()``
    kills them (whatever thread the signal lands on) and cannot end the parent.
    """
    if sys.excepthook is not _excepthook:
        _GUARD['excepthook'] = sys.excepthook
    sys.excepthook = _excepthook
    if _GUARD['installed'] and _GUARD['pid'] == os.getpid():
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    _at_fork()
    _GUARD.update(pid=os.getpid(), signums=frozenset(int(s) for s in signals), previous={})
    for sig in signals:
        _GUARD['previous'][sig] = signal.signal(sig, _signal_handler)
    try:
        rfd, wfd = os.pipe()
        os.set_blocking(wfd, False)
        old = signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        if old != -1:  # somebody else (e.g. asyncio) owns it: give it back, keep Python handlers
            signal.set_wakeup_fd(old)
            os.close(rfd)
            os.close(wfd)
        else:
            _GUARD.update(rfd=rfd, wfd=wfd)
            threading.Thread(target=_wakeup_reader, args=(rfd, os.getpid()), daemon=True,
                             name='gluon_ssd-crash-guard').start()
    except (ValueError, OSError):
        pass
    _GUARD['installed'] = True
    return True


def heartbeat(rank=None, min_interval=1.0):
    """Tell :mod:`gluon_ssd.launch` that this worker is alive (and, once known, its kvstore rank).

    A no-op unless the launcher set ``$GLUON_SSD_HEARTBEAT`` (a file path). Touches that file at
    most every ``min_interval`` seconds; with ``rank`` it writes ``rank N`` into it (the launcher
    names the stuck rank with it). :func:`create_kvstore` calls it with the rank. The launcher also
    counts CPU time and output as progress, so calling it in a training loop is optional.
    """
    path = os.environ.get(HEARTBEAT_ENV)
    if not path:
        return
    now = time.monotonic()
    try:
        if rank is not None and rank != _HEARTBEAT['rank']:
            tmp = '%s.%d.tmp' % (path, os.getpid())
            with open(tmp, 'w') as fh:
                fh.write('rank %d\n' % int(rank))
            os.replace(tmp, path)
            _HEARTBEAT['rank'] = rank
        elif now - _HEARTBEAT['last'] >= min_interval:
            try:
                os.utime(path)
            except FileNotFoundError:
                with open(path, 'a'):
                    pass
        else:
            return
        _HEARTBEAT['last'] = now
    except OSError:
        pass


@contextlib.contextmanager
def exit_guard():
    """Context manager for a distributed ``main``: any exception, and ``sys.exit`` with a non-zero
    code, print/flush and ``os._exit`` instead of unwinding into ps-lite's exit barrier.
    A normal exit (or ``sys.exit(0)``) leaves the block normally so the kvstore shuts down cleanly.
    """
    try:
        yield
    except SystemExit as exc:
        code = exc.code
        if code is None or code == 0:
            raise
        if not isinstance(code, int):
            sys.stderr.write('%s\n' % (code,))
            code = 1
        hard_exit(code)
    except BaseException:  # pylint: disable=broad-except
        _excepthook(*sys.exc_info())


def is_distributed(kv):
    """``True`` if ``kv`` is a KVStore object (or name) of a multi-process kind (``dist_*``,
    ``horovod``, ``byteps``)."""
    kind = kv if isinstance(kv, str) else getattr(kv, 'type', None)
    if not kind:
        return False
    kind = kind.lower()
    return kind.startswith('dist') or kind in ('horovod', 'byteps')


def create_kvstore(name):
    """Create the kvstore for ``--kvstore name``.

    Returns ``None`` for ``None``/``''``/``'none'``, the name itself for single-machine kinds
    (``'local'``, ``'device'``, ``'nccl'``: let ``gluon.Trainer`` create them), otherwise a
    ``mx.kv.KVStore`` (``'dist_sync'``, ``'dist_device_sync'``, ``'dist_async'``, ``'horovod'``...).
    For ``dist_*`` it first checks that the ps-lite environment is present (raises
    ``RuntimeError`` pointing to :mod:`gluon_ssd.launch` instead of hanging) and installs
    :func:`install_crash_guard`. Blocks until all workers and servers have connected.
    """
    if name is None or name == '' or str(name).lower() == 'none':
        return None
    if not isinstance(name, str):
        return name  # already a KVStore
    lname = name.lower()
    if lname in _LOCAL_KVSTORES:
        return lname
    if lname.startswith('dist'):
        missing = [k for k in ('DMLC_ROLE', 'DMLC_PS_ROOT_URI', 'DMLC_PS_ROOT_PORT',
                               'DMLC_NUM_SERVER', 'DMLC_NUM_WORKER') if not os.environ.get(k)]
        if missing:
            raise RuntimeError(
                'kvstore %r needs the ps-lite environment (%s not set): start the job with '
                '`python -m gluon_ssd.launch -n WORKERS -s SERVERS -- python train_ssd.py ...` '
                '(see gluon_ssd/launch.py for runs across hosts)' % (name, ', '.join(missing)))
        install_crash_guard()
    import mxnet as mx
    if lname == 'horovod':
        try:
            # pylint: disable=unused-import,import-outside-toplevel
            import horovod.mxnet  # noqa: F401
        except ImportError as exc:
            raise ImportError("kvstore 'horovod' needs Horovod built with MXNet support "
                              "(HOROVOD_WITH_MXNET=1 HOROVOD_WITH_GLOO=1 pip install horovod); "
                              "use --kvstore dist_sync otherwise") from exc
        install_crash_guard()
    kv = mx.kv.create(lname)
    if lname.startswith('dist'):
        heartbeat(rank=int(kv.rank))
    return kv


def worker_info(kv):
    """``(rank, num_workers)`` of this process from a distributed KVStore, else ``(0, 1)``."""
    if kv is None or isinstance(kv, str) or not is_distributed(kv):
        return 0, 1
    return int(kv.rank), int(kv.num_workers)


def global_batch_size(local_scale, kv):
    """The value to pass to ``trainer.step`` so gradients are averaged over the global batch.

    ``local_scale``: what a single process would pass (local batch size, or 1 for an already
    normalised loss). Returns ``local_scale * num_workers`` for synchronous multi-worker
    parameter-server kvstores (``dist_sync``, ``dist_device_sync``: the server sums the workers'
    gradients), else ``local_scale`` (single process, ``dist_async``, and ``horovod`` whose
    ``DistributedTrainer`` already averages).
    """
    rank, num_workers = worker_info(kv)
    del rank
    kind = kv if isinstance(kv, str) else getattr(kv, 'type', '') or ''
    if kind.startswith('dist') and 'async' not in kind:
        return local_scale * num_workers
    return local_scale


def shard_indices(n, rank, num_workers, seed=0, epoch=0, remainder='pad', shuffle=True):
    """This worker's sample indices for one epoch.

    Parameters: ``n`` dataset length; ``rank`` in ``[0, num_workers)``; ``seed``/``epoch`` select
    the permutation (identical on all workers, different each epoch); ``remainder`` ``'pad'``
    (repeat the first ``(-n) % num_workers`` permuted indices, so the union covers all ``n``) or
    ``'drop'`` (drop the last ``n % num_workers``, shards disjoint); ``shuffle=False`` keeps
    ``arange(n)``. Returns an int64 ``np.ndarray`` of length ``ceil(n / W)`` (pad) or ``n // W``
    (drop), the same on every worker. Shards are contiguous slices of the permutation.
    """
    n, rank, num_workers = int(n), int(rank), int(num_workers)
    if num_workers < 1:
        raise ValueError('num_workers must be >= 1, got %d' % num_workers)
    if not 0 <= rank < num_workers:
        raise ValueError('rank must be in [0, %d), got %d' % (num_workers, rank))
    if n < 0:
        raise ValueError('n must be >= 0, got %d' % n)
    if remainder not in ('pad', 'drop'):
        raise ValueError("remainder must be 'pad' or 'drop', got %r" % (remainder,))
    if shuffle:
        rng = np.random.RandomState((int(seed) * 1000003 + int(epoch)) % (2 ** 32))
        perm = rng.permutation(n).astype(np.int64)
    else:
        perm = np.arange(n, dtype=np.int64)
    if remainder == 'pad':
        extra = (-n) % num_workers
        if extra and n:
            perm = np.concatenate([perm, np.resize(perm, extra)])
    per = len(perm) // num_workers if n else 0
    return perm[rank * per:(rank + 1) * per].copy()


class ShardSampler:
    """``gluon.data.Sampler``-compatible sampler over this worker's shard (:func:`shard_indices`).

    ``ShardSampler(n, rank, num_workers, seed=0, remainder='pad', shuffle=True)``. Every ``iter()``
    yields the shard of the current epoch (python ints) and then advances the epoch, so a
    ``DataLoader`` built once reshuffles each epoch; ``set_epoch(e)`` sets it explicitly (e.g. when
    resuming). ``len()`` is the shard length, identical on every worker.
    """

    def __init__(self, n, rank, num_workers, seed=0, remainder='pad', shuffle=True):
        self._args = dict(n=n, rank=rank, num_workers=num_workers, seed=seed, remainder=remainder,
                          shuffle=shuffle)
        self.epoch = 0
        self._len = len(shard_indices(epoch=0, **self._args))

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __iter__(self):
        indices = shard_indices(epoch=self.epoch, **self._args)
        self.epoch += 1
        return iter(indices.tolist())

    def __len__(self):
        return self._len
