"""SSD300-VGG16 inference, network + decode + NMS: ours vs GluonCV with identical weights, in
float32 and in bfloat16 mixed precision (ours: ``set_precision('bfloat16')``, what ``--amp`` uses
on CPU; GluonCV's net: converted by MXNet's ``amp.convert_hybrid_block``, which GluonCV's own
scripts do not do on CPU)."""
import mxnet as mx
import numpy as np

from bench.common import SSD300_GMAC, copy_params
from bench.timing import interleaved, ratio, summary

__all__ = ['build_pair', 'build_bf16', 'inference_net', 'bench_inference']


def build_pair(name='ssd_300_vgg16_atrous_voc', size=300):
    """(ours, gluoncv) SSD nets, initialised, GluonCV's weights copied from ours, hybridized
    with static_alloc/static_shape."""
    import gluoncv

    from gluon_ssd.model.zoo import get_model
    ours = get_model(name)
    ours.initialize(mx.init.Xavier())
    ref = gluoncv.model_zoo.get_model(name, pretrained=False, pretrained_base=False)
    ref.initialize()
    x = mx.nd.zeros((1, 3, size, size))
    ours(x)
    ref(x)  # materialise deferred shapes before copying
    copy_params(ours, ref)
    for net in (ours, ref):
        net.hybridize(static_alloc=True, static_shape=True)
    return ours, ref


def build_bf16(pair, name='ssd_300_vgg16_atrous_voc', size=300):
    """(ours_bf16, gluoncv_bf16): a second ``ours`` with the same weights in bfloat16 mixed
    precision, and GluonCV's net converted with ``amp.convert_hybrid_block``."""
    from mxnet.contrib import amp

    from gluon_ssd.model.zoo import get_model
    ours, ref = pair
    ours_bf16 = get_model(name)
    ours_bf16.initialize()
    x = mx.nd.zeros((1, 3, size, size))
    ours_bf16(x)
    for p, q in zip(ours.collect_params().values(), ours_bf16.collect_params().values()):
        q.set_data(p.data())
    ours_bf16.set_precision('bfloat16')
    ours_bf16.hybridize(static_alloc=True, static_shape=True)
    ref(x)  # convert_hybrid_block needs the traced inference graph
    ref_bf16 = amp.convert_hybrid_block(ref, target_dtype='bfloat16', ctx=mx.cpu())
    ref_bf16.hybridize(static_alloc=True, static_shape=True)
    return ours_bf16, ref_bf16


def inference_net(impl):
    """One hybridized SSD300 inference net: ``impl`` in ours, gluoncv, ours_bf16, gluoncv_bf16."""
    pair = build_pair()
    nets = dict(zip(('ours', 'gluoncv'), pair))
    if impl.endswith('_bf16'):
        nets = dict(zip(('ours_bf16', 'gluoncv_bf16'), build_bf16(pair)))
    return nets[impl]


def _logit_difference(net_bf16, net, x):
    """Largest |bfloat16 - float32| class logit, relative to the largest float32 logit (the
    training-mode outputs of the two nets on ``x``)."""
    from mxnet import autograd
    with autograd.train_mode():
        a, b = net_bf16(x)[0].asnumpy(), net(x)[0].asnumpy()
    return float(np.abs(a - b).max() / np.abs(b).max())


def bench_inference(batch, repeat, warmup=1, pair=None, bf16=None):
    """Latency (batch 1) / throughput (batch > 1) of the whole inference path."""
    ours, ref = pair or build_pair()
    ours_bf16, ref_bf16 = bf16 or build_bf16((ours, ref))
    x = mx.nd.array(np.random.RandomState(batch).normal(0, 1, (batch, 3, 300, 300)))
    a, b = ours(x), ref(x)
    np.testing.assert_allclose(a[1].asnumpy(), b[1].asnumpy(), rtol=1e-3, atol=1e-4)
    logit_diff = _logit_difference(ours_bf16, ours, x)
    times = interleaved({'ours': lambda: ours(x), 'gluoncv': lambda: ref(x),
                         'ours_bf16': lambda: ours_bf16(x), 'gluoncv_bf16': lambda: ref_bf16(x)},
                        repeat=repeat, warmup=warmup)
    med = {k: summary(v)['median'] for k, v in times.items()}
    gflops = {k: 2 * SSD300_GMAC * batch / t for k, t in med.items()}
    if batch == 1:
        name, title, unit, scale = 'infer_b1', 'SSD300-VGG16 inference incl. NMS, batch 1 ' \
            '(latency)', 'ms/batch', 1e3
    else:
        name, title, unit, scale = f'infer_b{batch}', f'SSD300-VGG16 inference incl. NMS, ' \
            f'batch {batch} (throughput)', 'ms/batch', 1e3
    return {'name': name, 'title': title, 'unit': unit,
            'params': {'batch': batch, 'weights': 'identical (copied)',
                       'hybridize': 'static_alloc, static_shape',
                       'bf16_max_rel_logit_diff_vs_fp32': round(logit_diff, 4)},
            'times': {k: {s: (v * scale if s != 'n' else v) for s, v in summary(t).items()}
                      for k, t in times.items()},
            'images_per_s': {k: batch / t for k, t in med.items()},
            'gflops': gflops,
            'ratios': {'vs gluoncv': ratio(times['gluoncv'], times['ours']),
                       'bf16 vs gluoncv': ratio(times['gluoncv'], times['ours_bf16']),
                       'bf16 vs gluoncv_bf16': ratio(times['gluoncv_bf16'], times['ours_bf16'])},
            'target': 1.15, 'target_vs': ['vs gluoncv', 'bf16 vs gluoncv']}
