"""Checkpoints of a training run, switched from one to the next in one atomic step.

Layout in a run directory::

    checkpoints/ckpt-0004/model.params    the network's parameters (``net.save_parameters``)
    checkpoints/ckpt-0004/trainer.states  the optimizer states (``trainer.save_states``), if any
    checkpoints/ckpt-0004/record.json     the rest as plain data: completed epochs (4), seed,
                                          classes, best mAP, Python/NumPy RNG states, and the
                                          size and MD5 of the two binary files
    last.json                             the commit pointer: {"checkpoint": "checkpoints/
                                          ckpt-0004", "epoch": 4}
    last.params                           a hard link to (or copy of) the committed checkpoint's
                                          model.params, for tools that read a run directory

Saving (:func:`save_checkpoint`): the three files go into ``checkpoints/ckpt-000E.partial-<pid>/``
and are fsynced, the directory is renamed to ``ckpt-000E`` and read back (sizes and MD5s), then
``last.json`` is replaced with one ``os.replace``: **that is the switch**. Only after it is
``last.params`` refreshed and the older checkpoint directories removed. A kill, Ctrl-C, SIGTERM or
full disk at any moment therefore leaves ``last.json`` naming a complete checkpoint, the previous
or the new one; SIGINT/SIGTERM are held back while a checkpoint is written
(:func:`signals_deferred`), so an interrupted run keeps the epoch it just finished.

Loading (:func:`load_checkpoint_state`): the checkpoint ``last.json`` names, verified; if the
pointer is unreadable or its checkpoint fails verification, the newest other checkpoint directory
that verifies, with a note of what was skipped (``state['skipped']``). Run directories of older
versions (``last.{params,states,json}``, MD5s in ``last.json``) are still read.
"""
import contextlib
import errno
import hashlib
import json
import os
import random
import re
import shutil
import signal
import threading
import time

import numpy as np

from gluon_ssd.errors import UserError

__all__ = ['atomic_write', 'write_params', 'save_checkpoint', 'load_checkpoint_state',
           'committed_checkpoint', 'repair_last_params', 'checkpoint_paths', 'signals_deferred',
           'rng_state', 'set_rng_state', 'CheckpointError', 'CHECKPOINTS', 'POINTER',
           'LAST_PARAMS']


class CheckpointError(UserError):
    """A checkpoint is missing, inconsistent, could not be written, or does not match the run."""


CHECKPOINTS = 'checkpoints'          # folder of the checkpoint directories
POINTER = 'last.json'                # names the committed checkpoint
LAST_PARAMS = 'last.params'          # the committed checkpoint's weights (hard link or copy)
_PARAMS, _STATES, _RECORD = 'model.params', 'trainer.states', 'record.json'
_FORMAT = 'gluon-ssd-checkpoint/2'
_NAME = re.compile(r'^ckpt-(\d+)(?:-(\d+))?$')
_PARTIAL = '.partial-'


# ----------------------------------------------------------------------------------------------
# small durable-write helpers
# ----------------------------------------------------------------------------------------------
def _fsync_path(path):
    """fsync a file or a directory (directories: where the OS allows it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if not os.path.isdir(path) or exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def atomic_write(path, write_fn, fsync=True):
    """Call ``write_fn(tmp_path)``, fsync it, then ``os.replace(tmp_path, path)``; the temp file
    (same directory) is removed if anything fails, so ``path`` is always the old or the new file."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write_fn(tmp)
        if fsync:
            _fsync_path(tmp)
        os.replace(tmp, path)
        if fsync:
            _fsync_path(os.path.dirname(os.path.abspath(path)))
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def write_params(path, net, what='weights'):
    """``net.save_parameters`` to ``path`` atomically; a failure (full disk...) is a
    :class:`CheckpointError` naming the file."""
    try:
        atomic_write(path, net.save_parameters)
    except OSError as exc:
        raise CheckpointError(f"{path}: {what} not written ({_reason(exc)})") from exc


def _reason(exc):
    return exc.strerror or str(exc) or type(exc).__name__


def _file_info(path):
    h = hashlib.md5()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return {'size': os.path.getsize(path), 'md5': h.hexdigest()}


def _write_file(path, write_fn):
    """Write one checkpoint file and fsync it; returns its size and MD5."""
    write_fn(path)
    _fsync_path(path)
    return _file_info(path)


def _remove_tree(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        with contextlib.suppress(OSError):
            os.remove(path)


# ----------------------------------------------------------------------------------------------
# signals
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def signals_deferred(signums=(signal.SIGINT, signal.SIGTERM)):
    """Hold SIGINT/SIGTERM back for the duration of the block, then deliver them (once each) to
    the handlers that were installed before: Ctrl-C while a checkpoint is written lets it finish.
    A no-op outside the main thread (Python handles signals there only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    old = {}
    for signum in signums:
        handler = signal.getsignal(signum)
        if handler in (signal.SIG_IGN, None):      # ignored, or not ours to touch
            continue
        old[signum] = signal.signal(signum, lambda s, _f: pending.append(s))
    try:
        yield
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(pending):
            signal.raise_signal(signum)


# ----------------------------------------------------------------------------------------------
# RNG states
# ----------------------------------------------------------------------------------------------
def rng_state():
    """Python and NumPy global RNG states as JSON-able lists."""
    py = random.getstate()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {'python': [py[0], list(py[1]), py[2]],
            'numpy': [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)]}


def set_rng_state(state):
    """Inverse of :func:`rng_state`."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


# ----------------------------------------------------------------------------------------------
# layout
# ----------------------------------------------------------------------------------------------
def checkpoint_paths(ckpt_dir):
    """``{'params', 'states', 'record'}`` paths of the checkpoint directory ``ckpt_dir``."""
    return {'params': os.path.join(ckpt_dir, _PARAMS), 'states': os.path.join(ckpt_dir, _STATES),
            'record': os.path.join(ckpt_dir, _RECORD)}


def _epoch_of(name):
    m = _NAME.match(name)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


def _checkpoint_dirs(run_dir):
    """Complete-named checkpoint directories, newest first."""
    root = os.path.join(run_dir, CHECKPOINTS)
    if not os.path.isdir(root):
        return []
    named = [(_epoch_of(n), n) for n in os.listdir(root)]
    return [os.path.join(root, n) for key, n in sorted((k, n) for k, n in named if k)[::-1]
            if os.path.isdir(os.path.join(root, n))]


def _partial_dirs(run_dir):
    root = os.path.join(run_dir, CHECKPOINTS)
    if not os.path.isdir(root):
        return []
    return sorted(os.path.join(root, n) for n in os.listdir(root) if _PARTIAL in n)


def _read_json(path, what):
    try:
        with open(path) as f:
            value = json.load(f)
    except OSError as exc:
        raise CheckpointError(f"{path}: unreadable {what} ({_reason(exc)})") from None
    except ValueError as exc:
        raise CheckpointError(f"{path}: unreadable {what} ({exc})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: not a {what} (expected a JSON object)")
    return value


def _read_pointer(run_dir):
    """The pointer as a dict, or ``None`` if there is none; :class:`CheckpointError` if it is
    unreadable."""
    path = os.path.join(run_dir, POINTER)
    return _read_json(path, 'checkpoint pointer') if os.path.lexists(path) else None


def _pointer_target(pointer, run_dir):
    """The checkpoint directory a (new-format) pointer names, or ``None``."""
    name = pointer.get('checkpoint') if pointer else None
    if not isinstance(name, str) or not _epoch_of(os.path.basename(name)):
        return None
    return os.path.join(run_dir, CHECKPOINTS, os.path.basename(name))


def committed_checkpoint(run_dir):
    """``(checkpoint dir or None, completed epochs)`` that ``last.json`` commits, read without
    verification; ``(None, None)`` when there is no readable pointer."""
    try:
        pointer = _read_pointer(run_dir)
    except CheckpointError:
        return None, None
    if not pointer:
        return None, None
    epoch = pointer.get('epoch')
    return _pointer_target(pointer, run_dir), epoch if isinstance(epoch, int) else None


# ----------------------------------------------------------------------------------------------
# saving
# ----------------------------------------------------------------------------------------------
def save_checkpoint(run_dir, net, trainer, state):
    """Write the checkpoint of ``state['epoch']`` completed epochs and switch ``last.json`` to
    it (see the module docstring).

    Parameters
    ----------
    net : gluon.Block whose parameters are saved.
    trainer : gluon.Trainer or None (then no ``trainer.states`` file).
    state : dict of JSON-able values (``epoch`` = completed epochs, ``classes``, ``best_map``...);
        the RNG states and the files' sizes and MD5s are added.

    Returns ``{'dir', 'params', 'states', 'record'}`` paths of the new checkpoint. Raises
    :class:`CheckpointError` (the previous checkpoint kept) if it cannot be written.
    """
    with signals_deferred():
        root = os.path.join(run_dir, CHECKPOINTS)
        epoch = int(state['epoch'])
        committed = _committed_name(run_dir)
        name = f'ckpt-{epoch:04d}'
        k = 0
        while name == committed:            # re-saving the committed epoch (--start-epoch)
            k += 1
            name = f'ckpt-{epoch:04d}-{k}'
        final = os.path.join(root, name)
        partial = final + f'{_PARTIAL}{os.getpid()}'
        try:
            os.makedirs(root, exist_ok=True)
            _remove_tree(partial)
            os.mkdir(partial)
            paths = checkpoint_paths(partial)
            files = {'params': _write_file(paths['params'], net.save_parameters)}
            if trainer is not None:
                files['states'] = _write_file(paths['states'], trainer.save_states)
            record = dict(state, format=_FORMAT, rng=rng_state(), files=files,
                          time=time.strftime('%Y-%m-%d %H:%M:%S'))
            _write_file(paths['record'], lambda p: _dump_json(record, p))
            _fsync_path(partial)
            _remove_tree(final)             # an uncommitted leftover of this epoch
            os.rename(partial, final)
            _fsync_path(root)
            _verify(final)
            _switch(run_dir, name, epoch)
        except BaseException as exc:
            _remove_tree(partial)
            if _committed_name(run_dir) != name:    # never leave an uncommitted checkpoint
                _remove_tree(final)
            if isinstance(exc, OSError):
                raise CheckpointError(_failure(run_dir, epoch, exc)) from exc
            raise
        try:
            _refresh_last_params(run_dir, final)
            _remove_old(run_dir, keep=name)
        except OSError as exc:
            where = exc.filename or 'tidying up'
            raise CheckpointError(f"{run_dir}: checkpoint of epoch {epoch} saved, but {where} "
                                  f"failed ({_reason(exc)})") from exc
        out = dict(checkpoint_paths(final), dir=final)
        if trainer is None:
            out['states'] = None
        return out


def _committed_name(run_dir):
    target, _ = committed_checkpoint(run_dir)
    return os.path.basename(target) if target else None


def _dump_json(value, path):
    with open(path, 'w') as f:
        json.dump(value, f)


def _failure(run_dir, epoch, exc):
    where = exc.filename or run_dir
    _, kept = committed_checkpoint(run_dir)
    keep = (f"the checkpoint of epoch {kept} is kept: free space or fix the folder, then "
            f"--resume {run_dir}") if kept is not None else "no earlier checkpoint"
    return f"{where}: checkpoint of epoch {epoch} not written ({_reason(exc)}); {keep}"


def _switch(run_dir, name, epoch):
    """The atomic step: ``last.json`` names checkpoint ``name`` from now on."""
    pointer = {'format': _FORMAT, 'checkpoint': f'{CHECKPOINTS}/{name}', 'epoch': epoch,
               'time': time.strftime('%Y-%m-%d %H:%M:%S')}
    atomic_write(os.path.join(run_dir, POINTER), lambda p: _dump_json(pointer, p))


def _refresh_last_params(run_dir, ckpt_dir):
    """``last.params`` = the committed checkpoint's weights (hard link, else a copy)."""
    path = os.path.join(run_dir, LAST_PARAMS)
    src = checkpoint_paths(ckpt_dir)['params']

    def link(tmp):
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    atomic_write(path, link)


def repair_last_params(run_dir, state):
    """After a resume: make ``last.params`` the weights of the checkpoint resumed from (it is
    stale if the previous run stopped between the switch and the refresh)."""
    ckpt_dir = state.get('checkpoint')
    if not ckpt_dir or os.path.basename(os.path.dirname(os.path.abspath(ckpt_dir))) != CHECKPOINTS:
        return
    path = os.path.join(run_dir, LAST_PARAMS)
    with contextlib.suppress(OSError):
        if os.path.samefile(path, checkpoint_paths(ckpt_dir)['params']):
            return
    try:
        _refresh_last_params(run_dir, ckpt_dir)
    except OSError as exc:
        raise CheckpointError(f"{path}: not written ({_reason(exc)})") from exc


def _remove_old(run_dir, keep):
    """Remove every checkpoint directory but ``keep`` (and a previous version's
    ``last.states``)."""
    root = os.path.join(run_dir, CHECKPOINTS)
    for n in os.listdir(root):
        if n != keep and (_epoch_of(n) or _PARTIAL in n):
            _remove_tree(os.path.join(root, n))
    _remove_tree(os.path.join(run_dir, 'last.states'))


# ----------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------
def _verify(ckpt_dir):
    """The record of a checkpoint directory whose files match it; else :class:`CheckpointError`
    naming the file."""
    paths = checkpoint_paths(ckpt_dir)
    if not os.path.isfile(paths['record']):
        raise CheckpointError(f"{paths['record']}: checkpoint record not found")
    record = _read_json(paths['record'], 'checkpoint record')
    files = record.get('files')
    if not isinstance(record.get('epoch'), int) or record['epoch'] < 0 or \
            not isinstance(files, dict) or 'params' not in files:
        raise CheckpointError(f"{paths['record']}: not a gluon-ssd checkpoint record")
    for key, info in files.items():
        path = paths.get(key)
        if path is None or not isinstance(info, dict):
            raise CheckpointError(f"{paths['record']}: not a gluon-ssd checkpoint record")
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: missing from its checkpoint")
        try:
            found = _file_info(path)
        except OSError as exc:
            raise CheckpointError(f"{path}: unreadable ({_reason(exc)})") from None
        if found != {'size': info.get('size'), 'md5': info.get('md5')}:
            raise CheckpointError(f"{path}: does not match {paths['record']} (damaged)")
    state = {k: v for k, v in record.items() if k not in ('files', 'format', 'time')}
    state['states'] = paths['states'] if 'states' in files else None
    state['params'] = paths['params']
    state['checkpoint'] = ckpt_dir
    return state


def _load_legacy(run_dir, pointer):
    """A run directory of the previous layout: ``last.{params,states,json}``."""
    path = os.path.join(run_dir, POINTER)
    if not isinstance(pointer.get('epoch'), int):
        raise CheckpointError(f"{path}: not a gluon-ssd checkpoint record")
    paths = {'params': os.path.join(run_dir, 'last.params'),
             'states': os.path.join(run_dir, 'last.states')}
    for key, digest in (pointer.get('md5') or {}).items():
        if key not in paths or not os.path.isfile(paths[key]) or \
                _file_info(paths[key])['md5'] != digest:
            raise CheckpointError(f"{paths.get(key, key)}: does not match {path} (interrupted "
                                  "while saving?); resume from an epoch_XXXX snapshot instead")
    state = {k: v for k, v in pointer.items() if k != 'md5'}
    state['params'] = paths['params']
    state['states'] = paths['states'] if 'states' in (pointer.get('md5') or {}) else None
    state['checkpoint'] = run_dir
    return state


def load_checkpoint_state(run_dir, checkpoint=None):
    """The newest usable checkpoint of ``run_dir`` (or the checkpoint directory ``checkpoint``).

    Returns the state dict saved by :func:`save_checkpoint` (``epoch``, ``classes``, ``rng``...)
    plus ``params``/``states`` (file paths; ``states`` may be ``None``), ``checkpoint`` (its
    directory) and ``skipped`` (one line per damaged or incomplete checkpoint passed over).
    Raises :class:`CheckpointError` (one line) if there is none.
    """
    if checkpoint is not None:
        return dict(_verify(checkpoint), skipped=[])
    skipped, target = [], None
    try:
        pointer = _read_pointer(run_dir)
    except CheckpointError as exc:
        pointer = None
        skipped.append(str(exc))
    if pointer is not None:
        target = _pointer_target(pointer, run_dir)
        if target is None:
            if pointer.get('format') != _FORMAT and 'md5' in pointer:
                return dict(_load_legacy(run_dir, pointer), skipped=[])
            skipped.append(f"{os.path.join(run_dir, POINTER)}: not a checkpoint pointer")
    candidates = [target] if target else []
    candidates += [d for d in _checkpoint_dirs(run_dir) if d != target]
    for partial in _partial_dirs(run_dir):
        skipped.append(f"{partial}: incomplete (the run stopped while writing it)")
    for ckpt_dir in candidates:
        try:
            state = _verify(ckpt_dir)
        except CheckpointError as exc:
            skipped.append(str(exc))
            continue
        return dict(state, skipped=skipped)
    if skipped:
        raise CheckpointError(f"{run_dir}: no usable checkpoint ({'; '.join(skipped)})")
    raise CheckpointError(f"{run_dir}: no checkpoint (the run stopped before its first epoch "
                          "ended)")
