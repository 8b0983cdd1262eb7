"""The benchmark suite runs end to end in quick mode and reports every entry (not the ratios:
those need the full run, see BENCHMARKS.md)."""
import json
import os
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXPECTED = {
    'target_b8': ('ours', 'gluoncv', 'mx_multibox_target'),
    'loss_b8': ('ours', 'gluoncv'),
    'decode_b1': ('ours_per_class', 'ours_argmax', 'gluoncv'),
    'infer_b1': ('ours', 'gluoncv', 'ours_bf16', 'gluoncv_bf16'),
    'train_ssd300_b1': ('ours', 'ours_bf16', 'gluoncv', 'gluoncv_bf16'),
    'train_tiny_b4': ('ours', 'ours_bf16', 'd2l'),
    'augment_256': ('ours', 'gluoncv'),
    'deploy_mobilenet512_b1': ('gluoncv_fp32', 'ours_mxnet_fp32', 'ours_mxnet_bf16',
                               'ours_mxnet_int8', 'gluoncv_int8', 'ours_ort_fp32', 'ours_ort_int8',
                               'ours_ov_fp32', 'ours_ov_int8', 'ours_ov_int8_ir'),
}


@pytest.mark.slow
def test_quick_suite_writes_every_entry(tmp_path):
    out, md = tmp_path / 'results.json', tmp_path / 'BENCHMARKS.md'
    env = dict(os.environ, GLUON_SSD_HOME=str(tmp_path / 'home'))
    env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
    proc = subprocess.run([sys.executable, '-m', 'bench.run', '--quick', '--out', str(out),
                           '--md', str(md)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    assert results['quick'] is True and results['machine']['cpu_count'] >= 1
    entries = {e['name']: e for e in results['entries']}
    for name, impls in EXPECTED.items():
        assert name in entries, f'missing benchmark {name}'
        for impl in impls:
            t = entries[name]['times'][impl]
            assert t['median'] > 0 and t['min'] > 0 and t['n'] >= 1, (name, impl)
        assert entries[name]['ratios'] and all(r > 0 for r in entries[name]['ratios'].values())
    flops = entries['flops']
    assert flops['attainable_gflops'] > 0 and all(v > 0 for v in flops['gflops'].values())
    for impl, m in entries['memory']['workloads']['target_b32'].items():
        assert m['peak_rss_mb'] >= m['rss_before_mb'] > 0, impl
    for row in entries['objects']['points'].values():   # training vs objects per image
        assert row['ours']['images_per_s'] > 0 and row['ours']['peak_rss_mb'] > 0
    prof = entries['profile']['kinds']['train_tiny']['ours']
    assert prof['wall_ms_per_step'] > 0 and prof['top_ops']
    text = md.read_text()
    assert 'python -m bench.run --quick' in text and '## Summary' in text
    # MXNet's profiler replaces its output file: it must never be given os.devnull
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode), '/dev/null is no longer a device'


def test_interleaved_timer_alternates_and_syncs():
    import mxnet as mx

    from bench.timing import interleaved, ratio, summary
    calls = []

    def make(name):
        def fn():
            calls.append(name)
            return [mx.nd.ones((4, 4)) * 2]
        return fn
    times = interleaved({'a': make('a'), 'b': make('b')}, repeat=4, warmup=1)
    assert calls[:2] == ['a', 'b']                    # warm-up once each
    assert calls[2:] == ['a', 'b', 'b', 'a', 'a', 'b', 'b', 'a']  # rotating order
    assert len(times['a']) == len(times['b']) == 4 and min(times['a']) > 0
    assert summary(times['a'])['n'] == 4 and ratio(times['a'], times['a']) == 1.0


def test_benchmark_inputs_give_gluoncv_results():
    """The fast paths timed by the suite (candidate-reduced bipartite matching, top-k before
    NMS) give GluonCV's outputs on the suite's own inputs and on tie-heavy ones."""
    import mxnet as mx
    import numpy as np
    from gluoncv.model_zoo.ssd.target import SSDTargetGenerator as GluonCVTargetGenerator

    from bench.blocks import GluonCVInferenceTail
    from bench.common import ssd300_anchors, voc_like_labels
    from gluon_ssd.coder import DetectionHead
    from gluon_ssd.target import SSDTargetGenerator
    anchors = ssd300_anchors()
    gt_boxes, gt_ids = voc_like_labels(4, seed=3)
    # duplicated boxes with another class and a box snapped to the anchor grid: IoU ties
    gt_boxes[1, 1] = gt_boxes[1, 0]
    gt_ids[1, 1] = (gt_ids[1, 0] + 1) % 20
    gt_boxes[2, 0] = mx.nd.array([100, 100, 200, 200])
    cls_preds = mx.nd.zeros((4, anchors.shape[1], 21))
    ours = SSDTargetGenerator()
    ours.hybridize(static_alloc=True, static_shape=True)
    a = ours(anchors, cls_preds, gt_boxes, gt_ids)
    b = GluonCVTargetGenerator(negative_mining_ratio=-1)(anchors, cls_preds, gt_boxes, gt_ids)
    np.testing.assert_array_equal(a[0].asnumpy(), b[0].asnumpy())
    np.testing.assert_array_equal(a[2].asnumpy(), b[2].asnumpy())
    assert np.abs(a[1].asnumpy() - b[1].asnumpy()).max() <= 1e-6

    rng = np.random.RandomState(0)
    logits = np.round(rng.normal(0, 2, (2, 300, 6))).astype(np.float32)  # many equal scores
    logits[:, 150:] = logits[:, :150]
    box_preds = rng.normal(0, 0.3, (2, 300, 4)).astype(np.float32)
    box_preds[:, 150:] = box_preds[:, :150]
    small_anchors = mx.nd.array(np.concatenate(
        [np.round(rng.uniform(20, 200, (1, 300, 2)) / 20) * 20,
         rng.uniform(20, 80, (1, 300, 2))], axis=-1))
    inputs = (mx.nd.array(logits), mx.nd.array(box_preds), small_anchors)
    for nms in [(0.45, 400, 100), (0.3, 50, 20), (0.6, 1000, 1000)]:
        head = DetectionHead(5, nms_thresh=nms[0], nms_topk=nms[1], post_nms=nms[2])
        ref = GluonCVInferenceTail(5, *nms)
        for x, y in zip(head(*inputs), ref(*inputs)):
            np.testing.assert_array_equal(x.asnumpy(), y.asnumpy())
