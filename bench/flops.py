"""The machine's attainable FLOP/s: an sgemm (``mx.nd.dot``) and 3x3 convolutions
(``mx.nd.Convolution``) at SSD-like shapes; the best of them is the reference for "% of
attainable" of the SSD300 runs. The hybridized conv chains are also run in bfloat16 mixed
precision (``gluon_ssd.precision``, as ``--amp`` on CPU): the reference for the bf16 runs."""
import time

import mxnet as mx

__all__ = ['bench_flops', 'CONV_SHAPES']

#: (batch, in channels, out channels, height = width) of 3x3 stride-1 pad-1 convolutions:
#: VGG16 conv3 (75x75x256), conv4 (38x38x512) and the 19x19x1024 -> 512 predictor-like layer.
CONV_SHAPES = [(8, 256, 256, 75), (8, 512, 512, 38), (8, 1024, 512, 19)]


def _chain(cin, precision):
    """4 bias-free 3x3 convolutions ``cin -> cin``, hybridized in ``precision``."""
    from gluon_ssd.precision import PrecisionMixin

    class Chain(PrecisionMixin, mx.gluon.nn.HybridSequential):
        """A conv chain whose graph can be bfloat16 (all four layers: the attainable rate)."""
        _first_layer_float32 = False

    chain = Chain()
    for _ in range(4):
        chain.add(mx.gluon.nn.Conv2D(cin, 3, padding=1, in_channels=cin, use_bias=False))
    chain.initialize()
    chain.set_precision(precision)
    chain.hybridize(static_alloc=True, static_shape=True)
    return chain


def _best_rate(fn, flop, repeat):
    fn().wait_to_read()  # warm-up (primitive creation)
    best = float('inf')
    for _ in range(repeat):
        start = time.perf_counter()
        fn().wait_to_read()
        best = min(best, time.perf_counter() - start)
    return flop / best


def bench_flops(repeat=5, quick=False):
    """dict with GFLOP/s of sgemm and of each conv shape, 'attainable' (their max), and the
    forward + backward rate of the conv chains ('attainable_train_gflops')."""
    scale = 8 if quick else 1
    rates, train = {}, {}
    n = 2048 // scale
    a = mx.nd.random.uniform(shape=(n, n))
    b = mx.nd.random.uniform(shape=(n, n))
    rates[f'sgemm {n}x{n}x{n}'] = _best_rate(lambda: mx.nd.dot(a, b), 2 * n ** 3, repeat) / 1e9
    for batch, cin, cout, hw in CONV_SHAPES:
        batch = max(1, batch // scale)
        x = mx.nd.random.uniform(shape=(batch, cin, hw, hw))
        w = mx.nd.random.uniform(shape=(cout, cin, 3, 3))
        flop = 2 * batch * cin * cout * 9 * hw * hw

        def conv(x=x, w=w, cout=cout):
            return mx.nd.Convolution(x, w, kernel=(3, 3), pad=(1, 1), num_filter=cout,
                                     no_bias=True)
        rates[f'conv3x3 {batch}x{cin}x{hw}x{hw} -> {cout}'] = _best_rate(conv, flop, repeat) / 1e9
        # the same convolution 4x in a hybridized chain: MKLDNN keeps its blocked layout between
        # layers, as inside the SSD graph (no per-call reorder from/to NCHW)
        for precision, tag in (('float32', ''), ('bfloat16', ' bf16')):
            chain = _chain(cin, precision)
            x2 = mx.nd.random.uniform(shape=(batch, cin, hw, hw))
            flop2 = 4 * 2 * batch * cin * cin * 9 * hw * hw
            rates[f'4x conv3x3 chain{tag} {batch}x{cin}x{hw}x{hw} (hybridized)'] = \
                _best_rate(lambda chain=chain, x2=x2: chain(x2), flop2, repeat) / 1e9
            # forward + backward (data and weight gradients: 3x the forward FLOPs), as in training
            x2.attach_grad()

            def train_step(chain=chain, x2=x2):
                with mx.autograd.record():
                    y = chain(x2)
                y.backward()
                return x2.grad
            train[f'4x conv3x3 chain{tag} fwd+bwd {batch}x{cin}x{hw}x{hw} (hybridized)'] = \
                _best_rate(train_step, 3 * flop2, repeat) / 1e9

    def best(table, bf16):
        return max(v for k, v in table.items() if (' bf16 ' in k) == bf16)
    return {'gflops': rates, 'train_gflops': train,
            'attainable_train_gflops': best(train, False), 'attainable_gflops': best(rates, False),
            'attainable_bf16_gflops': best(rates, True),
            'attainable_bf16_train_gflops': best(train, True),
            'attainable_conv_gflops': max(v for k, v in rates.items()
                                          if 'conv' in k and ' bf16 ' not in k)}
