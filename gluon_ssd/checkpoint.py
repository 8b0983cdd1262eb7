"""Atomic checkpoints of a training run.

A checkpoint named ``last`` in a run directory is three files:

* ``last.params``: the network's parameters (``net.save_parameters``);
* ``last.states``: the trainer's optimizer states (``trainer.save_states``, momentum etc.);
* ``last.json``: everything else as plain data: the number of completed epochs, the seed, the
  class list, the best mAP so far, the Python/NumPy RNG states and the MD5 of the two binary
  files.

Every file is written to a temporary name in the same directory and moved into place with
``os.replace`` (atomic on POSIX), the JSON last: it is the commit record. A process killed at any
moment leaves either the previous checkpoint or the new one, and a mismatch between the JSON and
the binary files (a kill between two ``os.replace`` calls) is detected by the MD5s at load time.
"""
import hashlib
import json
import os
import random

import numpy as np

from gluon_ssd.errors import UserError

__all__ = ['atomic_write', 'save_checkpoint', 'load_checkpoint_state', 'checkpoint_paths',
           'rng_state', 'set_rng_state', 'CheckpointError']


class CheckpointError(UserError):
    """A checkpoint is missing, inconsistent or does not match the run's configuration."""


def checkpoint_paths(run_dir, name='last'):
    """``{'params', 'states', 'json'}`` paths of checkpoint ``name`` in ``run_dir``."""
    base = os.path.join(run_dir, name)
    return {'params': base + '.params', 'states': base + '.states', 'json': base + '.json'}


def _tmp_path(path):
    return f"{path}.tmp{os.getpid()}"


def atomic_write(path, write_fn):
    """Call ``write_fn(tmp_path)`` then ``os.replace(tmp_path, path)``; the temp file is removed
    if ``write_fn`` fails."""
    tmp = _tmp_path(path)
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _md5(path):
    h = hashlib.md5()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


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


def save_checkpoint(run_dir, net, trainer, state, name='last'):
    """Write checkpoint ``name`` atomically.

    Parameters
    ----------
    net : gluon.Block whose parameters are saved.
    trainer : gluon.Trainer or None (then no ``.states`` file).
    state : dict of JSON-able values (e.g. ``epoch`` = completed epochs, ``classes``,
        ``best_map``); the RNG states and file checksums are added.
    """
    paths = checkpoint_paths(run_dir, name)
    atomic_write(paths['params'], net.save_parameters)
    files = {'params': _md5(paths['params'])}
    if trainer is not None:
        atomic_write(paths['states'], trainer.save_states)
        files['states'] = _md5(paths['states'])
    record = dict(state, rng=rng_state(), md5=files)

    def write_json(tmp):
        with open(tmp, 'w') as f:
            json.dump(record, f)
    atomic_write(paths['json'], write_json)
    return paths


def load_checkpoint_state(run_dir, name='last'):
    """Read and verify checkpoint ``name``: returns ``(state dict, paths)``.

    Raises :class:`CheckpointError` if the JSON is missing or a binary file does not match its
    recorded MD5.
    """
    paths = checkpoint_paths(run_dir, name)
    if not os.path.isfile(paths['json']):
        raise CheckpointError(f"{paths['json']}: checkpoint record not found")
    with open(paths['json']) as f:
        state = json.load(f)
    for key, digest in state.get('md5', {}).items():
        if not os.path.isfile(paths[key]) or _md5(paths[key]) != digest:
            raise CheckpointError(f"{paths[key]}: does not match {paths['json']} (interrupted "
                                  "while saving?); resume from an epoch_XXXX snapshot instead")
    return state, paths
