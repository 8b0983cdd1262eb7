"""The files of a training run directory (everything but the checkpoint format itself) and who
may write them.

``config.json`` (every setting, the class list and the history of resumptions), ``model.json``
(the model's meta file: see :mod:`gluon_ssd.model.io`), ``train.log``, ``metrics.jsonl`` (one JSON
object per epoch), ``checkpoints/`` + ``last.json`` + ``last.params`` (:mod:`gluon_ssd.checkpoint`),
``best.params``, ``epoch_XXXX.params``, ``curves.png``, ``detections.png`` and ``.lock``.

Ownership (:func:`claim_run_dir`): a run holds an exclusive ``flock`` on ``RUN/.lock`` while it
runs (the OS releases it when the process ends, even on ``kill -9``), so a second run in the same
directory stops at once; a new run refuses a non-empty directory unless it is ``--resume``-d or
started with ``--overwrite`` (which removes the previous run's files, and only those).
"""
import contextlib
import errno
import glob
import json
import logging
import os
import shutil

from gluon_ssd import checkpoint as ckpt
from gluon_ssd.errors import UserError
from gluon_ssd.model.io import read_json

try:
    import fcntl
except ImportError:          # not POSIX: no run-directory lock
    fcntl = None

__all__ = ['LOG', 'CONFIG_NAME', 'LOCK_NAME', 'RUN_FILES', 'setup_logging', 'close_logging',
           'read_metrics', 'write_metrics', 'write_config', 'read_config', 'resume_source',
           'load_resume_state', 'check_out_dir', 'check_run_dir', 'claim_run_dir',
           'release_run_dir']

LOG = logging.getLogger('gluon_ssd.train')
CONFIG_NAME = 'config.json'
LOCK_NAME = '.lock'
#: What a run writes at the top of its directory (``--overwrite`` removes these, nothing else).
RUN_FILES = ('config.json', 'model.json', 'train.log', 'metrics.jsonl', 'best.params',
             'last.params', 'last.states', 'last.json', 'curves.png', 'detections.png',
             ckpt.CHECKPOINTS, 'epoch_[0-9]*.params', '*.tmp[0-9]*')


class _FileHandler(logging.FileHandler):
    """``train.log``: a failed write (full disk) is dropped instead of printing a traceback."""

    def handleError(self, record):
        pass


def setup_logging(run_dir, rank):
    """Log to the console and, for rank 0, to ``<run_dir>/train.log``. Returns the handlers."""
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    handlers = [logging.StreamHandler()]
    if rank == 0:
        handlers.append(_FileHandler(os.path.join(run_dir, 'train.log')))
    fmt = logging.Formatter('%(asctime)s %(message)s' if rank == 0 else
                            f'%(asctime)s [worker {rank}] %(message)s')
    for h in handlers:
        h.setFormatter(fmt)
        LOG.addHandler(h)
    return handlers


def close_logging(handlers):
    """Detach and close the handlers of :func:`setup_logging`."""
    for h in handlers:
        LOG.removeHandler(h)
        h.close()


def read_metrics(path, before_epoch):
    """Records of ``metrics.jsonl`` before ``before_epoch`` (a resumed run redoes the rest)."""
    if not os.path.isfile(path):
        return []
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            try:
                record = json.loads(line) if line.strip() else None
            except ValueError:
                record = None
                LOG.warning('%s line %d: not a JSON record, left out', path, number)
            if isinstance(record, dict) and isinstance(record.get('epoch', 0), int):
                records.append(record)
    return [r for r in records if r.get('epoch', 0) < before_epoch]


def write_metrics(path, records):
    """Rewrite ``metrics.jsonl`` atomically with ``records``."""
    def write(tmp):
        with open(tmp, 'w') as f:
            for r in records:
                f.write(json.dumps(r) + '\n')
    _write(path, write, 'training metrics')


def write_config(run_dir, config, classes):
    """Write ``config.json``: the settings dict, the class list (and the settings' history)."""
    def write(tmp):
        with open(tmp, 'w') as f:
            json.dump(dict(config, classes=list(classes)), f, indent=1)
    _write(os.path.join(run_dir, CONFIG_NAME), write, 'run configuration')


def _write(path, write_fn, what):
    """:func:`~gluon_ssd.checkpoint.atomic_write`; a failure (full disk...) is one line naming
    the file."""
    try:
        ckpt.atomic_write(path, write_fn)
    except OSError as exc:
        raise ckpt.CheckpointError(f"{path}: {what} not written ({exc.strerror or exc})") from exc


def read_config(run_dir):
    """The saved ``config.json`` of a run as a dict, or ``None`` if the directory has none.
    Raises :class:`UserError` naming the file when it is unreadable."""
    path = os.path.join(run_dir, CONFIG_NAME)
    return read_json(path, 'run configuration') if os.path.isfile(path) else None


def resume_source(resume):
    """``(run_dir, checkpoint_dir or None, is_full_checkpoint)`` of ``--resume``.

    A run directory (or its ``last.params`` / ``last.json``) resumes from its newest usable
    checkpoint (``checkpoint_dir`` None); a directory ``RUN/checkpoints/ckpt-XXXX`` (or its
    ``model.params``) from that checkpoint; any other ``.params`` file is bare weights
    (``is_full_checkpoint`` False: ``--start-epoch`` says where to start).
    """
    def checkpoint_dir(path):
        parent = os.path.dirname(os.path.abspath(path))
        return os.path.basename(parent) == ckpt.CHECKPOINTS and \
            os.path.isfile(ckpt.checkpoint_paths(path)['record'])
    if os.path.isdir(resume):
        if checkpoint_dir(resume):
            return os.path.dirname(os.path.dirname(os.path.abspath(resume))), resume, True
        return resume, None, True
    run_dir, fname = os.path.split(os.path.abspath(resume))
    if fname in (ckpt.LAST_PARAMS, ckpt.POINTER) and \
            os.path.isfile(os.path.join(run_dir, ckpt.POINTER)):
        return run_dir, None, True
    if checkpoint_dir(run_dir):
        return os.path.dirname(os.path.dirname(run_dir)), run_dir, True
    return run_dir, None, False


def load_resume_state(cfg, classes):
    """Checkpoint state for ``--resume`` (or ``None``): ``{'epoch', 'params', 'states',
    'best_map', 'rng', 'skipped', ...}`` (see :func:`gluon_ssd.checkpoint.load_checkpoint_state`);
    checks that it matches this run (classes, network, size)."""
    if not cfg.resume:
        return None
    run_dir, checkpoint, full = resume_source(cfg.resume)
    if not full:
        return {'epoch': cfg.start_epoch, 'params': cfg.resume, 'states': None, 'best_map': None,
                'skipped': []}
    try:
        state = ckpt.load_checkpoint_state(run_dir, checkpoint)
    except ckpt.CheckpointError as exc:
        hint = '' if ckpt.committed_checkpoint(run_dir)[0] or os.path.isdir(
            os.path.join(run_dir, ckpt.CHECKPOINTS)) else '; start it again with --overwrite'
        raise ckpt.CheckpointError(f"--resume: {exc}{hint}") from None
    if list(state.get('classes', [])) != list(classes):
        raise UserError(f"--resume: checkpoint classes {state.get('classes')} differ from the "
                        f"dataset's {classes}")
    for key in ('network', 'data_shape'):
        if state.get(key) != getattr(cfg, key):
            raise UserError(f"--resume: checkpoint {key} {state.get(key)!r} differs from "
                            f"--{key.replace('_', '-')} {getattr(cfg, key)!r}")
    return state


# ----------------------------------------------------------------------------------------------
# who may write a run directory
# ----------------------------------------------------------------------------------------------
def check_out_dir(path, flag='--out-dir'):
    """Raise :class:`UserError` naming ``flag`` unless ``path`` is a writable folder or can be
    created as one (nothing is created)."""
    full = os.path.abspath(path)
    probe = full
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        what = 'it is a file' if probe == full else f'{probe} is a file'
        raise UserError(f"{flag} {path}: not a folder ({what}); give a folder path")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = 'it' if probe == full else probe
        raise UserError(f"{flag} {path}: not writable ({where} is read-only for this user)")


def _previous_run(run_dir):
    """Entries of ``run_dir`` other than the lock file."""
    try:
        return sorted(n for n in os.listdir(run_dir) if n != LOCK_NAME)
    except FileNotFoundError:
        return []


def _refuse_used(run_dir, entries):
    shown = ', '.join(entries[:3]) + (', ...' if len(entries) > 3 else '')
    raise UserError(f"--out-dir {run_dir}: not empty ({shown}); continue that run with --resume "
                    f"{run_dir}, or start a new run there with --overwrite (deletes the old run's "
                    "files)")


def check_run_dir(run_dir, resume=False, overwrite=False):
    """A cheap check before any heavy work: ``run_dir`` is usable for this run (writable; empty
    unless ``resume``/``overwrite``; not locked by another run). :func:`claim_run_dir` repeats
    it under the lock."""
    check_out_dir(run_dir)
    if not os.path.isdir(run_dir):
        return
    entries = _previous_run(run_dir)
    if entries and not (resume or overwrite):
        _refuse_used(run_dir, entries)
    if os.path.isfile(os.path.join(run_dir, LOCK_NAME)):
        release_run_dir(_lock(run_dir))


def _lock(run_dir):
    """The open, exclusively ``flock``-ed ``RUN/.lock`` (holding this process id)."""
    path = os.path.join(run_dir, LOCK_NAME)
    try:
        f = open(path, 'a+')   # pylint: disable=consider-using-with
    except OSError as exc:
        raise UserError(f"--out-dir {run_dir}: not writable ({exc.strerror or exc})") from None
    if fcntl is None:
        return f
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            return f          # no locks on this file system (e.g. some network mounts)
        f.seek(0)
        holder = f.read().strip()
        f.close()
        holder = f' (process {holder})' if holder.isdigit() else ''
        raise UserError(f"--out-dir {run_dir}: another training run is using this "
                        f"directory{holder}; wait for it to end or choose another "
                        "--out-dir") from None
    f.seek(0)
    f.truncate()
    f.write(f'{os.getpid()}\n')
    f.flush()
    return f


def release_run_dir(lock):
    """Release the lock of :func:`claim_run_dir` (``None``: nothing to do)."""
    if lock is None:
        return
    with contextlib.suppress(OSError, ValueError):
        if fcntl is not None:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    with contextlib.suppress(OSError):
        lock.close()


def _remove_previous_run(run_dir):
    for pattern in RUN_FILES:
        for path in glob.glob(os.path.join(glob.escape(run_dir), pattern)):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)


def claim_run_dir(run_dir, resume=False, overwrite=False, chief=True):
    """Create ``run_dir`` and make this run its only writer.

    The chief (rank 0) locks ``RUN/.lock`` (:class:`UserError` if another run holds it) and
    refuses a non-empty directory unless ``resume``, or ``overwrite`` (the previous run's files,
    :data:`RUN_FILES`, are removed first). Returns the lock for :func:`release_run_dir` (``None``
    for other ranks). Every problem is one line naming ``--out-dir``.
    """
    check_out_dir(run_dir)
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out-dir {run_dir}: cannot create it ({exc.strerror or exc})") from None
    if not chief:
        return None
    lock = _lock(run_dir)
    try:
        entries = _previous_run(run_dir)
        if entries and not resume:
            if not overwrite:
                _refuse_used(run_dir, entries)
            _remove_previous_run(run_dir)
    except OSError as exc:
        release_run_dir(lock)
        raise UserError(f"--out-dir {run_dir}: --overwrite could not remove "
                        f"{exc.filename or 'the old run'} ({exc.strerror or exc})") from None
    except BaseException:
        release_run_dir(lock)
        raise
    return lock
