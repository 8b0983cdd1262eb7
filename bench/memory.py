"""Peak memory: each (workload, implementation) runs in a fresh Python process, which reports
its peak resident set size (``VmHWM`` of ``/proc/self/status``: unlike ``ru_maxrss``, which Linux
carries over from the parent across ``exec``, it belongs to the new process only) and the RSS
right before the workload started (after imports and model construction). Loader workers are off
(``num_workers=0``) so the whole pipeline is in the measured process."""
import json
import os
import resource
import sys

__all__ = ['WORKLOADS', 'measure', 'child_main']

#: name -> (implementations, quick variant allowed)
WORKLOADS = {
    'target_b32': ('ours', 'gluoncv'),
    'infer_b8': ('ours', 'ours_bf16', 'gluoncv'),
    'train_ssd300_b8': ('ours', 'ours_bf16', 'gluoncv'),
    'train_tiny_b32': ('ours', 'ours_bf16', 'd2l'),
}
QUICK_WORKLOADS = ('target_b32',)


def _rss_mb():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20


def _peak_rss_mb():
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _workload(name, impl, quick):
    """Returns (setup -> callable run) for the child."""
    import mxnet as mx
    if name == 'target_b32':
        from bench.common import ssd300_anchors, voc_like_labels
        batch = 8 if quick else 32
        anchors = ssd300_anchors()
        gt_boxes, gt_ids = voc_like_labels(batch, seed=batch)
        cls_preds = mx.nd.zeros((batch, anchors.shape[1], 21))
        if impl == 'ours':
            from gluon_ssd.target import SSDTargetGenerator
            gen = SSDTargetGenerator()
            gen.hybridize(static_alloc=True, static_shape=True)
        else:
            from gluoncv.model_zoo.ssd.target import SSDTargetGenerator as G
            gen = G(negative_mining_ratio=-1)
        return lambda: gen(anchors, cls_preds, gt_boxes, gt_ids)
    if name == 'infer_b8':
        from bench.model import inference_net
        batch = 1 if quick else 8
        net = inference_net(impl)
        x = mx.nd.zeros((batch, 3, 300, 300))
        return lambda: net(x)
    from bench.train import training_workload
    network = 'ssd300' if name == 'train_ssd300_b8' else 'tiny'
    make_iter, step = training_workload(network, impl, quick)
    state = {'it': make_iter()}

    def run():
        try:
            batch_ = next(state['it'])
        except StopIteration:  # small dataset: start another pass
            state['it'] = make_iter()
            batch_ = next(state['it'])
        return step(batch_)
    return run


def child_main(name, impl, quick, calls=2):
    """Run in the child process: print one JSON line with the peak RSS."""
    import mxnet as mx
    run = _workload(name, impl, quick)
    before = _rss_mb()
    for _ in range(calls):
        run()
        mx.nd.waitall()
    peak = _peak_rss_mb()
    print(json.dumps({'peak_rss_mb': peak, 'rss_before_mb': before}))


def measure(quick=False):
    """Run every workload/implementation in a fresh process; returns the memory entry."""
    from bench.common import run_json_child
    results = {}
    for name, impls in WORKLOADS.items():
        if quick and name not in QUICK_WORKLOADS:
            continue
        results[name] = {impl: run_json_child('bench.memory', [name, impl], quick)
                         for impl in impls}
    return {'name': 'memory', 'title': 'Peak memory (RSS, fresh process per measurement)',
            'workloads': results, 'quick': quick}


if __name__ == '__main__':
    child_main(sys.argv[1], sys.argv[2], '--quick' in sys.argv)
