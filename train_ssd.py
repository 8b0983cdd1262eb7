"""Train an SSD detector (flags compatible with GluonCV's scripts/detection/ssd/train_ssd.py).

    python train_ssd.py                       # scratch_ssd (192 px) on the built-in synthetic data
    python train_ssd.py --network tiny_ssd --data-shape 256   # d2l's TinySSD (5444 anchors)
    python train_ssd.py --dataset voc --dataset-root ../shared/data/raccoon \
        --train-split train --val-split test
    python train_ssd.py --network vgg16_atrous --data-shape 300 --dataset voc \
        --dataset-root ~/VOCdevkit --gpus 0,1,2,3 --batch-size 32
    python train_ssd.py --resume runs/X --epochs 40   # continue run X with its own settings

The headline result is the final epoch's VOC07 mAP (the best epoch's is printed beside it:
picking the best epoch on the validation split flatters it).

Exit codes: 0 success; 2 a problem to fix (bad flags or data, an --out-dir that is not writable,
already used by another run or not empty without --resume/--overwrite, a checkpoint that cannot be
written or read): one line naming the flag or file; 3 the loss became NaN/inf (the last good
checkpoint is kept); 130 Ctrl-C, 143 SIGTERM: one line, and the checkpoint of the last completed
epoch is kept (``--resume RUN`` continues it, bit-identically).
"""
import os
import signal
import sys
import threading

PROG = 'train_ssd.py'


class _Terminated(KeyboardInterrupt):
    """SIGTERM in the training process: unwinds like Ctrl-C (the checkpoint being written is
    finished first: :func:`gluon_ssd.checkpoint.signals_deferred`)."""
    signum = signal.SIGTERM


_SIGTERM = {'handler': None, 'at_fork': False, 'die_with_parent': None}

# The interrupted run's exception, kept until the process ends: its traceback holds the run's data
# loaders, and collecting a loader terminates its worker pool, which blocks forever on the pool's
# queue lock when the same signal killed a worker holding it (SIGTERM to the whole process group,
# as `kill -- -PGID`, systemd and batch schedulers send it). The script then kills the loader
# workers still alive and leaves with os._exit (_exit): the checkpoint is already committed and
# the run directory released.
_INTERRUPTED = []


def _child_default_sigterm():
    """In a process forked while our SIGTERM handler is installed (a data-loader worker): the
    default action, so that the pool's ``terminate()`` ends it at once and without a traceback,
    even while it is blocked inside C code. A process forked after an interrupt (a pool
    replacing the workers the signal killed) has nothing to do: it ends at once."""
    if _INTERRUPTED:
        os._exit(0)
    if _SIGTERM['handler'] is not None and signal.getsignal(signal.SIGTERM) is _SIGTERM['handler']:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        # ... and it dies with the training process: a pool can fork a replacement worker in the
        # instant the interrupted script leaves with os._exit, and that orphan waited forever on
        # its task queue holding the run's stderr open (CI saw it once)
        if _SIGTERM['die_with_parent'] is not None:
            _SIGTERM['die_with_parent']()


def _install_sigterm():
    """Turn SIGTERM into :class:`_Terminated` in this process (forked children keep the default
    action). Returns a function restoring the old handler."""
    def handler(_signum, _frame):
        raise _Terminated()
    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:                       # not the main thread: leave signals alone
        return lambda: None
    from gluon_ssd.distributed import die_with_parent_hook
    _SIGTERM['handler'], _SIGTERM['die_with_parent'] = handler, die_with_parent_hook()
    if not _SIGTERM['at_fork'] and hasattr(os, 'register_at_fork'):
        os.register_at_fork(after_in_child=_child_default_sigterm)
        _SIGTERM['at_fork'] = True

    def restore():
        _SIGTERM['handler'] = None
        signal.signal(signal.SIGTERM, old)
    return restore


def _close_progress_bars():
    tqdm = sys.modules.get('tqdm')
    for bar in list(getattr(getattr(tqdm, 'tqdm', None), '_instances', None) or ()):
        try:
            bar.close()
        except Exception:  # pylint: disable=broad-except
            pass


def _interrupted(exc, cfg):
    """One line for Ctrl-C / SIGTERM: what is kept and how to continue. Returns 128 + signal."""
    signum = getattr(exc, 'signum', signal.SIGINT)
    name = 'SIGTERM' if signum == signal.SIGTERM else 'Ctrl-C (SIGINT)'
    _close_progress_bars()
    sys.stdout.flush()
    run_dir = getattr(cfg, 'out_dir', None)
    message = f"interrupted by {name}"
    if run_dir and os.path.isdir(run_dir):
        from gluon_ssd.checkpoint import committed_checkpoint
        _, done = committed_checkpoint(run_dir)
        if done is not None:
            message += (f"; {run_dir} keeps its checkpoint after {done} of {cfg.epochs} epochs: "
                        f"continue with {PROG} --resume {run_dir}")
        else:
            message += (f" before the first epoch ended: nothing to resume in {run_dir} (start "
                        "again with --overwrite)")
    sys.stderr.write(f"{PROG}: {message}\n")
    sys.stderr.flush()
    return 128 + int(signum)


def _fmt(value):
    return 'n/a' if value is None else f'{value:.4f}'


def main(argv=None):
    """Parse flags, train, print the run directory and mAP. Returns the exit code."""
    use_every_core(sys.argv[1:] if argv is None else list(argv))   # before mxnet is imported
    restore_sigterm = _install_sigterm()     # first: even the imports can be interrupted
    old_sigint = signal.getsignal(signal.SIGINT) \
        if threading.current_thread() is threading.main_thread() else None
    run = {'cfg': None}
    try:
        return _main(argv, run)
    except KeyboardInterrupt as exc:        # Ctrl-C, or SIGTERM (_Terminated)
        _INTERRUPTED.append(exc)
        if old_sigint is not None:          # a second one: no traceback either
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, signal.SIG_IGN)
        return _interrupted(exc, run['cfg'])
    finally:
        restore_sigterm()
        if old_sigint is not None:
            signal.signal(signal.SIGINT, old_sigint)


def _flag_value(args, flag):
    """The text given to ``flag`` in ``args`` (``--flag V`` or ``--flag=V``), else ``None``."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + '='):
            return arg[len(flag) + 1:]
    return None


def use_every_core(args, environ=None, modules=None):
    """A CPU training run on one machine computes with one OpenMP thread per core it may use,
    unless ``OMP_NUM_THREADS`` says otherwise. MXNet's own default keeps a core for its engine,
    right beside GPUs but on a 2-core CPU it trains on one thread (the training step alone: 56
    images/s, 96 with two). GPU, Horovod and parameter-server runs keep MXNet's default (several
    processes may share the machine). Only effective before ``mxnet`` is imported.
    ``environ``/``modules``: ``os.environ``/``sys.modules`` (tests pass their own)."""
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    if 'OMP_NUM_THREADS' in environ or 'mxnet' in modules or environ.get('DMLC_ROLE'):
        return
    if (_flag_value(args, '--gpus') or '').strip() or '--horovod' in args or \
            (_flag_value(args, '--kvstore') or '').startswith('dist'):
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    environ['OMP_NUM_THREADS'] = str(max(1, cores or 1))


def _main(argv, run):
    from gluon_ssd.errors import UserError, fail, one_line_warnings
    one_line_warnings(PROG)
    try:
        from gluon_ssd.config import parse_config
        cfg = run['cfg'] = parse_config(argv)
        if cfg.out_dir and not cfg.horovod and not cfg.kvstore.startswith('dist'):
            from gluon_ssd.rundir import check_run_dir   # before the heavy imports and data
            check_run_dir(cfg.out_dir, resume=bool(cfg.resume), overwrite=cfg.overwrite)
        from gluon_ssd.engine import train  # heavy imports after flag checks
        result = train(cfg)
    except UserError as exc:
        return fail(PROG, exc)
    line = f"run directory: {result['run_dir']}  final VOC07 mAP: {_fmt(result['final_map'])}"
    if result.get('final_coco_ap') is not None:
        line += f"  final COCO AP: {_fmt(result['final_coco_ap'])}"
    line += f"  (best {_fmt(result['best_map'])} at epoch {result['best_epoch']})"
    print(line)
    return 0


def _exit(code):
    """``sys.exit(code)``; after an interrupt ``os._exit`` (see :data:`_INTERRUPTED`)."""
    if _INTERRUPTED:
        import multiprocessing
        import time
        # the loader workers, and the replacements a pool forks for the ones the signal killed:
        # one may have been forked just before the interrupt was recorded and be added to the
        # children a moment later, so kill for a little while, until none is left
        deadline = time.monotonic() + 1.0
        while True:
            children = multiprocessing.active_children()
            for child in children:
                child.kill()
            if not children or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        from gluon_ssd.distributed import hard_exit
        hard_exit(code)
    sys.exit(code)


if __name__ == '__main__':
    if any('dist_' in arg for arg in sys.argv[1:]):   # ps-lite: exit at once on errors
        from gluon_ssd.distributed import exit_guard
        with exit_guard():
            _exit(main())
    _exit(main())
