"""Tiny deterministic Gluon training used by tests/test_launch.py.

Run under the launcher (``--kvstore dist_sync``) each worker trains a small Dense net on its shard
of a synthetic regression set and writes ``OUT/params_rank{R}.npz``. ``train(...,
emulate_workers=W)`` in a single process (no kvstore) concatenates the W workers' local batches at
every step: the reference the distributed run must match. ``--crash-at-step K`` makes rank 1 raise
at step K; ``--stop-at-step K`` makes rank 1 freeze itself (SIGSTOP) at step K.
"""
import argparse
import os
import signal
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from gluon_ssd import distributed  # noqa: E402  pylint: disable=wrong-import-position

N_SAMPLES, N_FEATURES = 60, 5


def make_data(seed=0):
    rng = np.random.RandomState(seed)
    x = rng.normal(size=(N_SAMPLES, N_FEATURES)).astype(np.float32)
    w = rng.normal(size=(N_FEATURES, 1)).astype(np.float32)
    y = (np.tanh(x @ w) + 0.1 * rng.normal(size=(N_SAMPLES, 1))).astype(np.float32)
    return x, y


def make_net():
    import mxnet as mx
    from mxnet import gluon
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(8, activation='tanh', in_units=N_FEATURES),
            gluon.nn.Dense(1, in_units=8))
    mx.random.seed(42)
    net.initialize(mx.init.Xavier())
    return net


def params_dict(net):
    params = net._collect_params_with_prefix()  # pylint: disable=protected-access
    return {k: v.data().asnumpy() for k, v in params.items()}


def train(kvstore=None, local_batch=6, epochs=2, seed=0, emulate_workers=1, crash_at_step=None,
          step_scale=None, stop_at_step=None):
    """Train; returns ``(params dict, rank, num_workers, steps)``. ``step_scale`` overrides the
    value given to ``trainer.step`` (to show what a wrong normalisation gives)."""
    import mxnet as mx
    from mxnet import autograd, gluon
    kv = distributed.create_kvstore(kvstore)
    rank, num_workers = distributed.worker_info(kv)
    ranks = [rank] if emulate_workers == 1 else list(range(emulate_workers))
    shard_workers = num_workers if emulate_workers == 1 else emulate_workers
    x, y = make_data(seed)
    net = make_net()
    net.hybridize()
    trainer = gluon.Trainer(net.collect_params(), 'sgd',
                            {'learning_rate': 0.1, 'momentum': 0.9, 'wd': 1e-3},
                            kvstore=kv if kv is not None else 'device')
    loss_fn = gluon.loss.L2Loss()
    step = 0
    for epoch in range(epochs):
        shards = [distributed.shard_indices(len(x), r, shard_workers, seed, epoch) for r in ranks]
        for start in range(0, len(shards[0]) - local_batch + 1, local_batch):
            idx = np.concatenate([s[start:start + local_batch] for s in shards])
            if crash_at_step is not None and step == crash_at_step and rank == 1:
                raise RuntimeError('toy crash on rank %d at step %d' % (rank, step))
            if stop_at_step is not None and step == stop_at_step and rank == 1:
                print('toy freeze (SIGSTOP) on rank %d at step %d, pid %d'
                      % (rank, step, os.getpid()), flush=True)
                os.kill(os.getpid(), signal.SIGSTOP)
            distributed.heartbeat()
            data, label = mx.nd.array(x[idx]), mx.nd.array(y[idx])
            with autograd.record():
                loss = loss_fn(net(data), label)
            loss.backward()
            # the local scale a single process would use is its batch size; the emulation's
            # "local" batch already is the global one
            trainer.step(step_scale or distributed.global_batch_size(len(idx), kv))
            step += 1
    mx.nd.waitall()
    return params_dict(net), rank, num_workers, step


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument('--kvstore', default='dist_sync')
    parser.add_argument('--out', required=True)
    parser.add_argument('--local-batch', type=int, default=6)
    parser.add_argument('--epochs', type=int, default=2)
    parser.add_argument('--crash-at-step', type=int, default=None)
    parser.add_argument('--stop-at-step', type=int, default=None)
    args = parser.parse_args(argv)
    with distributed.exit_guard():
        params, rank, num_workers, steps = train(args.kvstore, args.local_batch, args.epochs,
                                                 crash_at_step=args.crash_at_step,
                                                 stop_at_step=args.stop_at_step)
        os.makedirs(args.out, exist_ok=True)
        np.savez(os.path.join(args.out, 'params_rank%d.npz' % rank), **params)
        print('rank %d/%d done after %d steps, pid %d' % (rank, num_workers, steps, os.getpid()))


if __name__ == '__main__':
    main()
