"""SSD300-VGG16 inference, network + decode + NMS: ours vs GluonCV with identical weights."""
import mxnet as mx
import numpy as np

from bench.common import SSD300_GMAC, copy_params
from bench.timing import interleaved, ratio, summary

__all__ = ['build_pair', 'bench_inference']


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


def bench_inference(batch, repeat, warmup=1, pair=None):
    """Latency (batch 1) / throughput (batch > 1) of the whole inference path."""
    ours, ref = pair or build_pair()
    x = mx.nd.array(np.random.RandomState(batch).normal(0, 1, (batch, 3, 300, 300)))
    a, b = ours(x), ref(x)
    np.testing.assert_allclose(a[1].asnumpy(), b[1].asnumpy(), rtol=1e-3, atol=1e-4)
    times = interleaved({'ours': lambda: ours(x), 'gluoncv': lambda: ref(x)}, repeat=repeat,
                        warmup=warmup)
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
                       'hybridize': 'static_alloc, static_shape'},
            'times': {k: {s: (v * scale if s != 'n' else v) for s, v in summary(t).items()}
                      for k, t in times.items()},
            'images_per_s': {k: batch / t for k, t in med.items()},
            'gflops': gflops,
            'ratios': {'vs gluoncv': ratio(times['gluoncv'], times['ours'])},
            'target': 1.15, 'target_vs': 'vs gluoncv'}
