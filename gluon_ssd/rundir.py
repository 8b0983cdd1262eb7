"""The files of a training run directory (everything but the checkpoint format itself).

``config.json`` (every setting, the class list and the history of resumptions), ``model.json``
(the model's meta file: see :mod:`gluon_ssd.model.io`), ``train.log``, ``metrics.jsonl`` (one JSON
object per epoch), ``last.{params,states,json}`` (:mod:`gluon_ssd.checkpoint`), ``best.params``,
``epoch_XXXX.params``, ``curves.png``, ``detections.png``.
"""
import json
import logging
import os

from gluon_ssd import checkpoint as ckpt
from gluon_ssd.errors import UserError
from gluon_ssd.model.io import read_json

__all__ = ['LOG', 'CONFIG_NAME', 'setup_logging', 'close_logging', 'read_metrics',
           'write_metrics', 'write_config', 'read_config', 'resume_source', 'load_resume_state']

LOG = logging.getLogger('gluon_ssd.train')
CONFIG_NAME = 'config.json'


def setup_logging(run_dir, rank):
    """Log to the console and, for rank 0, to ``<run_dir>/train.log``. Returns the handlers."""
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    handlers = [logging.StreamHandler()]
    if rank == 0:
        handlers.append(logging.FileHandler(os.path.join(run_dir, 'train.log')))
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
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if r.get('epoch', 0) < before_epoch]


def write_metrics(path, records):
    """Rewrite ``metrics.jsonl`` atomically with ``records``."""
    def write(tmp):
        with open(tmp, 'w') as f:
            for r in records:
                f.write(json.dumps(r) + '\n')
    ckpt.atomic_write(path, write)


def write_config(run_dir, config, classes):
    """Write ``config.json``: the settings dict, the class list (and the settings' history)."""
    def write(tmp):
        with open(tmp, 'w') as f:
            json.dump(dict(config, classes=list(classes)), f, indent=1)
    ckpt.atomic_write(os.path.join(run_dir, CONFIG_NAME), write)


def read_config(run_dir):
    """The saved ``config.json`` of a run as a dict, or ``None`` if the directory has none.
    Raises :class:`UserError` naming the file when it is unreadable."""
    path = os.path.join(run_dir, CONFIG_NAME)
    return read_json(path, 'run configuration') if os.path.isfile(path) else None


def resume_source(resume):
    """``(run_dir, name, is_full_checkpoint)`` for ``--resume`` (a run dir or a .params file)."""
    if os.path.isdir(resume):
        return resume, 'last', True
    run_dir, fname = os.path.split(os.path.abspath(resume))
    name = fname[:-len('.params')] if fname.endswith('.params') else fname
    return run_dir, name, os.path.isfile(os.path.join(run_dir, name + '.json'))


def load_resume_state(cfg, classes):
    """Checkpoint state for ``--resume`` (or ``None``): ``{'epoch', 'params', 'states',
    'best_map', 'rng', ...}``; checks that it matches this run (classes, network, size)."""
    if not cfg.resume:
        return None
    run_dir, name, full = resume_source(cfg.resume)
    if not full:
        return {'epoch': cfg.start_epoch, 'params': cfg.resume, 'states': None, 'best_map': None}
    state, paths = ckpt.load_checkpoint_state(run_dir, name)   # CheckpointError names the file
    if list(state.get('classes', [])) != list(classes):
        raise UserError(f"--resume: checkpoint classes {state.get('classes')} differ from the "
                        f"dataset's {classes}")
    for key in ('network', 'data_shape'):
        if state.get(key) != getattr(cfg, key):
            raise UserError(f"--resume: checkpoint {key} {state.get(key)!r} differs from "
                            f"--{key.replace('_', '-')} {getattr(cfg, key)!r}")
    state['params'] = paths['params']
    state['states'] = paths['states'] if os.path.isfile(paths['states']) else None
    return state
