"""Where the time goes: MXNet's profiler (aggregate operator statistics) on one pipeline step,
in a fresh process with engine bulking off so every operator is timed separately. Used as the
evidence for targets that are not met (see BENCHMARKS.md)."""
import json
import os
import shutil
import sys
import tempfile
import time

__all__ = ['profile_all', 'KINDS']

KINDS = {
    'train_ssd300': ('ours', 'ours_bf16', 'gluoncv'),
    'train_tiny': ('ours', 'ours_bf16', 'd2l'),
    'infer_b1': ('ours', 'ours_bf16', 'gluoncv'),
}


def _setup(kind, impl, quick):
    import mxnet as mx
    if kind == 'infer_b1':
        from bench.model import inference_net
        net = inference_net(impl)
        x = mx.nd.zeros((1, 3, 300, 300))
        return lambda: net(x), None
    from bench.train import training_workload
    network = 'ssd300' if kind == 'train_ssd300' else 'tiny'
    make_iter, step = training_workload(network, impl, quick)
    it = make_iter()
    fixed = next(it)
    # time the loader separately: the step is profiled on a fixed batch
    start = time.perf_counter()
    for _ in range(2):
        next(it)
    load_ms = (time.perf_counter() - start) / 2 * 1e3
    return (lambda: step(fixed)), load_ms


def child_main(kind, impl, quick, calls=2, top=12):
    import mxnet as mx
    run, load_ms = _setup(kind, impl, quick)
    run()
    mx.nd.waitall()
    # a real scratch file: MXNet's profiler replaces its output file, and given os.devnull it
    # turns /dev/null into a regular file for the whole machine
    scratch = tempfile.mkdtemp(prefix='gluon_ssd_profile_')
    mx.profiler.set_config(profile_all=True, aggregate_stats=True,
                           filename=os.path.join(scratch, 'profile.json'))
    mx.profiler.set_state('run')
    start = time.perf_counter()
    for _ in range(calls):
        run()
    mx.nd.waitall()
    wall = (time.perf_counter() - start) / calls * 1e3
    mx.profiler.set_state('stop')
    stats = json.loads(mx.profiler.dumps(format='json'))['Time'].get('operator', {})
    shutil.rmtree(scratch, ignore_errors=True)
    ops = sorted(((name, v['Total'] / calls) for name, v in stats.items()),
                 key=lambda x: -x[1])
    total = sum(ms for _, ms in ops)
    conv = sum(ms for name, ms in ops if 'Convolution' in name)
    print(json.dumps({'wall_ms_per_step': wall, 'operator_ms_per_step': total,
                      'convolution_ms_per_step': conv,
                      'loader_ms_per_batch_single_process': load_ms,
                      'top_ops': [[n, ms, ms / total if total else 0] for n, ms in ops[:top]]}))


def profile_all(quick=False, kinds=None):
    from bench.common import run_json_child
    no_bulk = {'MXNET_EXEC_BULK_EXEC_TRAIN': '0', 'MXNET_EXEC_BULK_EXEC_INFERENCE': '0'}
    out = {}
    kinds = kinds or KINDS
    for kind in kinds:
        out[kind] = {impl: run_json_child('bench.profile', [kind, impl], quick, no_bulk)
                     for impl in (kinds[kind] if isinstance(kinds, dict) else KINDS[kind])}
    return {'name': 'profile', 'title': 'MXNet profiler, one step (engine bulking off)',
            'kinds': out, 'quick': quick}


if __name__ == '__main__':
    child_main(sys.argv[1], sys.argv[2], '--quick' in sys.argv)
