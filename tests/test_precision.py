"""bfloat16 mixed precision (gluon_ssd.precision): graph rewrite, inference and training
closeness to float32, and the ``--amp`` CPU run."""
import json
import warnings

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from gluon_ssd import engine
from gluon_ssd.loss import MultiBoxLossTerms, SSDMultiBoxLoss
from gluon_ssd.model.zoo import get_model
from gluon_ssd import precision
from gluon_ssd.errors import UserError
from gluon_ssd.precision import AmpWarning, bf16_speedup, cpu_bf16_support, resolve_amp, to_bfloat16
from gluon_ssd.target import SSDTargetGenerator

CLASSES = ['a', 'b', 'c']


def _nodes(sym):
    return json.loads(sym.tojson(remove_amp_cast=False))['nodes']


def test_graph_rewrite_casts_convolutions_only():
    data, weight = mx.sym.var('data'), mx.sym.var('w')
    x = mx.sym.Convolution(data * 2, weight, no_bias=True, kernel=(3, 3), pad=(1, 1),
                           num_filter=4, name='c0')
    x = mx.sym.Activation(x, act_type='relu', name='act0')
    x = mx.sym.Convolution(x, weight, no_bias=True, kernel=(3, 3), num_filter=4, name='c1')
    x = mx.sym.Activation(x, act_type='relu', name='act')
    x = mx.sym.Pooling(x, kernel=(2, 2), stride=(2, 2), name='pool')
    x = mx.sym.Convolution(x, weight, no_bias=True, kernel=(3, 3), num_filter=4, name='c2')
    out = mx.sym.Group([mx.sym.L2Normalization(x, name='norm'), x])
    conv = to_bfloat16(out)
    assert conv.list_arguments() == out.list_arguments()
    nodes = _nodes(conv)
    by_name = {n['name']: n for n in nodes}

    def input_ops(name):
        return [(nodes[i]['op'], nodes[i].get('attrs', {}).get('dtype'))
                for i, _, _ in by_name[name]['inputs']]
    # the first layer (reading the image) stays float32
    assert input_ops('c0') == [('_mul_scalar', None), ('null', None)]
    assert input_ops('act0') == [('Convolution', None)]
    # later convolutions read bfloat16 data and weight; the weight is cast once
    assert input_ops('c1') == [('amp_cast', 'bfloat16')] * 2
    assert input_ops('act') == [('Convolution', None)]   # relu and pooling stay in bfloat16
    assert input_ops('pool') == [('Activation', None)]
    assert input_ops('c2') == [('Pooling', None), ('amp_cast', 'bfloat16')]
    assert input_ops('norm') == [('amp_cast', 'float32')]  # everything else gets float32
    # act0's output and the weight to bfloat16, c2's output to float32 (shared by the norm and
    # the graph output)
    assert sum(n['op'] == 'amp_cast' for n in nodes) == 3
    x_in = mx.nd.random.uniform(shape=(1, 4, 12, 12))
    w_in = mx.nd.random.uniform(-0.3, 0.3, shape=(4, 4, 3, 3))
    outs = conv.eval(data=x_in, w=w_in)
    refs = out.eval(data=x_in, w=w_in)
    for o, r in zip(outs, refs):
        assert o.dtype == np.float32  # outputs are float32
        np.testing.assert_allclose(o.asnumpy(), r.asnumpy(), rtol=3e-2, atol=3e-2)


def test_set_precision_validates_and_rebuilds():
    net = get_model('tiny_ssd', classes=CLASSES)
    net.initialize()
    net.hybridize()
    with pytest.raises(ValueError, match='precision'):
        net.set_precision('float16')
    x = mx.nd.random.uniform(shape=(1, 3, 256, 256))
    net(x)
    assert 'amp_cast' not in net._cached_graph[1].tojson(remove_amp_cast=False)
    net.set_precision('bfloat16')
    assert net.precision == 'bfloat16'
    net(x)
    assert 'amp_cast' in net._cached_graph[1].tojson(remove_amp_cast=False)


def _relative_error(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))


def test_bfloat16_ssd300_predictions_close_to_float32():
    mx.random.seed(0)
    net = get_model('ssd_300_vgg16_atrous_voc', classes=CLASSES)
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True, static_shape=True)
    x = mx.nd.random.uniform(0, 1, shape=(1, 3, 300, 300))
    with autograd.train_mode():
        ref = [o.asnumpy() for o in net(x)]
    net.set_precision('bfloat16')
    with autograd.train_mode():
        out = [o.asnumpy() for o in net(x)]
    assert all(o.dtype == np.float32 for o in out)
    assert _relative_error(out[0], ref[0]) < 0.05   # class scores
    assert _relative_error(out[1], ref[1]) < 0.05   # box offsets
    np.testing.assert_array_equal(out[2], ref[2])   # anchors: no low precision on that path
    ids, scores, boxes = net(x)                     # the inference graph works as well
    assert ids.dtype == scores.dtype == boxes.dtype == np.float32


def _train_graph(precision):
    mx.random.seed(0)
    net = get_model('tiny_ssd', classes=CLASSES)
    net.initialize(mx.init.Xavier())
    graph = engine.TrainGraph(net, SSDTargetGenerator(max_objects=4), MultiBoxLossTerms())
    graph.set_precision(precision)
    graph.hybridize(static_alloc=True, static_shape=True)
    return net, graph


def test_bfloat16_training_gradients_close_to_float32():
    rng = np.random.RandomState(0)
    data = mx.nd.array(rng.uniform(-1, 1, (4, 3, 256, 256)))
    label = -np.ones((4, 4, 6), np.float32)
    for i in range(4):
        label[i, :2] = [[20 + 10 * i, 30, 140, 150 + 10 * i, i % 3, 0],
                        [100, 90, 230, 200, (i + 1) % 3, 0]]
    label = mx.nd.array(label)
    grads, losses = {}, {}
    for precision in ('float32', 'bfloat16'):
        net, graph = _train_graph(precision)
        with autograd.record():
            total, _, _ = engine.forward_losses(graph, SSDMultiBoxLoss(), [data], [label])
        autograd.backward(total)
        losses[precision] = float(total[0].sum().asscalar())
        grads[precision] = {name.split('_', 1)[1]: p.grad().asnumpy()
                            for name, p in net.collect_params().items()
                            if p.grad_req != 'null'}
        assert all(p.data().dtype == np.float32 for p in net.collect_params().values())
    assert losses['bfloat16'] == pytest.approx(losses['float32'], rel=0.02)
    cosines = {}
    for name, ref in grads['float32'].items():
        got = grads['bfloat16'][name]
        assert got.dtype == np.float32
        # a convolution bias followed by BatchNorm has a zero true gradient (rounding noise
        # only); predictors of maps without positives or negatives can have all-zero ones
        if ('downsampleblock' in name and name.endswith('conv0_bias')) or \
                ('downsampleblock' in name and name.endswith('conv1_bias')) or \
                not np.abs(ref).max() > 0:
            continue
        cosines[name] = float((got * ref).sum() / (np.linalg.norm(got) * np.linalg.norm(ref)))
    # measured: predictors >= 0.99, BatchNorm'd backbone layers 0.87-0.97 (bfloat16 activations
    # through 12 conv + BatchNorm layers of a randomly initialised net)
    assert min(cosines.values()) > 0.8, cosines
    assert np.mean(list(cosines.values())) > 0.9, cosines
    assert min(v for k, v in cosines.items() if 'convpredictor' in k) > 0.98, cosines


def test_bfloat16_trainer_step_updates_float32_weights():
    net, graph = _train_graph('bfloat16')
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})
    data = mx.nd.random.uniform(-1, 1, shape=(2, 3, 256, 256))
    label = mx.nd.array([[[30, 40, 200, 220, 1, 0]] + [[-1] * 6] * 3] * 2)
    first = net.class_predictors[0].predictor.weight.data().copy()
    with autograd.record():
        total, _, _ = engine.forward_losses(graph, SSDMultiBoxLoss(), [data], [label])
    autograd.backward(total)
    trainer.step(1)
    after = net.class_predictors[0].predictor.weight.data()
    assert after.dtype == np.float32
    assert float((after - first).abs().max().asscalar()) > 0


@pytest.mark.filterwarnings('ignore:Cannot decide type')  # SymbolBlock.imports' input dtype note
def test_export_of_a_bfloat16_net_is_float32(tmp_path):
    mx.random.seed(0)
    net = get_model('tiny_ssd', classes=CLASSES)
    net.initialize(mx.init.Xavier())
    x = mx.nd.random.uniform(-1, 1, shape=(1, 3, 256, 256))
    net.hybridize()
    ref = [o.asnumpy() for o in net(x)]
    net.set_precision('bfloat16')
    sym_file, params_file = net.export(str(tmp_path / 'bf16'))
    with open(sym_file) as f:
        assert 'amp_cast' not in f.read()
    imported = gluon.SymbolBlock.imports(sym_file, ['data'], params_file)
    for got, want in zip(imported(x), ref):
        np.testing.assert_array_equal(got.asnumpy(), want)


@pytest.mark.parametrize('flags, support', [
    ('fpu sse avx2 fma avx512f avx512bw avx512_bf16', 'native'),
    ('fpu avx2 amx_bf16 amx_tile', 'native'),
    ('fpu sse avx2 fma avx512f avx512bw avx512vl', 'emulated'),
    ('fpu sse avx2 fma', None),
])
def test_cpu_bf16_support_from_flags(flags, support, tmp_path):
    info = tmp_path / 'cpuinfo'
    info.write_text(f'processor\t: 0\nflags\t\t: {flags}\n')
    assert cpu_bf16_support(str(info)) == support
    assert cpu_bf16_support(str(tmp_path / 'missing')) is None


def test_amp_without_avx512_is_a_configuration_error(monkeypatch, tmp_path):
    from gluon_ssd import precision
    from gluon_ssd.config import parse_config
    from gluon_ssd.errors import UserError
    # forced on: no probe, whether parse_config calls check_bf16_support or resolve_amp
    monkeypatch.setenv('GLUON_SSD_BF16', 'on')
    monkeypatch.setenv('GLUON_SSD_CACHE', str(tmp_path))
    monkeypatch.setattr(precision, 'cpu_bf16_support', lambda: None)
    with pytest.raises(UserError, match='AVX-512'):
        parse_config(['--amp', '--out-dir', 'unused'])
    monkeypatch.setattr(precision, 'cpu_bf16_support', lambda: 'emulated')
    with pytest.warns(UserWarning, match='emulates bfloat16'):
        parse_config(['--amp', '--out-dir', 'unused'])


def test_first_layer_can_be_cast_too():
    data, weight = mx.sym.var('data'), mx.sym.var('w')
    out = mx.sym.Convolution(data, weight, no_bias=True, kernel=(3, 3), num_filter=4, name='c0')
    kept = [n['op'] for n in _nodes(to_bfloat16(out))]
    cast = [n['op'] for n in _nodes(to_bfloat16(out, first_layer_float32=False))]
    assert kept.count('amp_cast') == 0
    assert cast.count('amp_cast') == 3  # data, weight, output back to float32


# ----------------------------------------------------------------------------------------------
# --amp on CPU decided by a cached measurement (bf16_speedup, resolve_amp)

@pytest.fixture
def probe(monkeypatch, tmp_path):
    """A stubbed probe: a native-bfloat16 'Intel Xeon Test' CPU whose timings are
    ``probe.times`` (float32 s, bfloat16 s); ``probe.calls`` counts measurements. The cache
    lives in ``tmp_path``."""
    class Stub:
        times = (0.05, 0.1)
        calls = 0
        cache = tmp_path / 'bf16_probe.json'

        def measure(self):
            self.calls += 1
            return self.times
    stub = Stub()
    monkeypatch.setenv('GLUON_SSD_CACHE', str(tmp_path))
    monkeypatch.delenv('GLUON_SSD_BF16', raising=False)
    monkeypatch.setattr(precision, '_measure', stub.measure)
    monkeypatch.setattr(precision, '_cpu_identity',
                        lambda: ('Intel Xeon Test', ['avx512_bf16', 'avx512bw', 'avx512f']))
    monkeypatch.setattr(precision, 'cpu_bf16_support', lambda: 'native')
    return stub


def test_probe_result_and_cache_hit(probe):
    first = bf16_speedup()
    assert probe.calls == 1
    assert first['speedup'] == pytest.approx(0.5)
    assert first['cpu'] == 'Intel Xeon Test'
    assert first['flags'] == ['avx512_bf16', 'avx512bw', 'avx512f']
    assert first['mxnet'] == mx.__version__
    assert first['measured'].startswith('20')  # ISO 8601
    assert (first['float32_ms'], first['bfloat16_ms']) == (50.0, 100.0)
    assert bf16_speedup() == first            # second call: from the cache, not measured
    assert probe.calls == 1
    entries = json.loads(probe.cache.read_text())['entries']
    assert list(entries.values()) == [first]
    assert [p.name for p in probe.cache.parent.iterdir()] == ['bf16_probe.json']  # no temp file
    probe.times = (0.2, 0.1)
    assert bf16_speedup(refresh=True)['speedup'] == pytest.approx(2.0)
    assert probe.calls == 2
    assert bf16_speedup()['speedup'] == pytest.approx(2.0)


@pytest.mark.parametrize('content', [
    '{"entries": {"Intel', '', 'null', '[1, 2]', '{"entries": []}',
    '{"entries": {"Intel Xeon Test | avx512_bf16 avx512bw avx512f | mxnet %s": {"speedup": -1, '
    '"cpu": "x", "flags": [], "mxnet": "x", "measured": "x"}}}' % mx.__version__,
])
def test_unreadable_cache_is_measured_again(probe, content):
    probe.cache.write_text(content)
    assert bf16_speedup()['speedup'] == pytest.approx(0.5)
    assert probe.calls == 1
    assert len(json.loads(probe.cache.read_text())['entries']) == 1  # rewritten, valid


def test_cache_key_is_cpu_flags_and_mxnet_version(probe, monkeypatch):
    monkeypatch.setattr(mx, '__version__', '1.9.1')
    bf16_speedup()
    monkeypatch.setattr(precision, '_cpu_identity', lambda: ('AMD EPYC Test', ['avx512_bf16']))
    probe.times = (0.17, 0.1)
    assert bf16_speedup()['speedup'] == pytest.approx(1.7)
    monkeypatch.setattr(mx, '__version__', '9.9.9')
    assert bf16_speedup()['mxnet'] == '9.9.9'
    assert probe.calls == 3
    keys = sorted(json.loads(probe.cache.read_text())['entries'])
    assert keys == ['AMD EPYC Test | avx512_bf16 | mxnet 1.9.1',
                    'AMD EPYC Test | avx512_bf16 | mxnet 9.9.9',
                    'Intel Xeon Test | avx512_bf16 avx512bw avx512f | mxnet 1.9.1']


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv('GLUON_SSD_CACHE', raising=False)
    monkeypatch.delenv('MXNET_HOME', raising=False)
    monkeypatch.setenv('HOME', str(tmp_path))
    assert precision._cache_path() == str(tmp_path / '.cache' / 'gluon_ssd' / 'bf16_probe.json')
    monkeypatch.setenv('MXNET_HOME', str(tmp_path / 'mx'))
    assert precision._cache_path() == str(tmp_path / 'mx' / 'bf16_probe.json')
    monkeypatch.setenv('GLUON_SSD_CACHE', str(tmp_path / 'c'))
    assert precision._cache_path() == str(tmp_path / 'c' / 'bf16_probe.json')


def test_unwritable_cache_only_costs_a_new_probe(probe, monkeypatch, tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('')
    monkeypatch.setenv('GLUON_SSD_CACHE', str(blocker / 'sub'))  # cannot be a folder
    assert bf16_speedup()['speedup'] == pytest.approx(0.5)
    assert bf16_speedup()['speedup'] == pytest.approx(0.5)
    assert probe.calls == 2


def test_cpu_identity_reads_model_name_and_bf16_flags(tmp_path):
    info = tmp_path / 'cpuinfo'
    info.write_text('processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Test\n'
                    'flags\t\t: fpu avx2 avx512f avx512bw avx512_bf16 sse\n'
                    'processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n')
    assert precision._cpu_identity(str(info)) == ('Intel(R) Xeon(R) Test',
                                                  ['avx512_bf16', 'avx512bw', 'avx512f'])
    assert precision._cpu_identity(str(tmp_path / 'missing')) == ('unknown', [])


def _no_amp_warnings(func):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        result = func()
    assert not [w for w in caught if issubclass(w.category, AmpWarning)]
    return result


def test_slow_bfloat16_runs_float32_and_says_so_in_one_line(probe):
    probe.times = (0.052, 0.1)
    with pytest.warns(AmpWarning) as record:
        assert resolve_amp('--amp') is False
    assert len(record) == 1
    assert str(record[0].message) == (
        '--amp: bfloat16 measured 0.52x float32 speed on this CPU (Intel Xeon Test); '
        'running float32 (set GLUON_SSD_BF16=on to force)')
    assert record[0].filename == __file__  # points at the caller


def test_fast_bfloat16_is_used_silently(probe):
    probe.times = (0.17, 0.1)
    assert _no_amp_warnings(resolve_amp) is True
    assert _no_amp_warnings(resolve_amp) is True
    assert probe.calls == 1  # once per machine


@pytest.mark.parametrize('times, use', [((0.105, 0.1), False), ((0.106, 0.1), True)])
def test_decision_margin(probe, times, use):
    probe.times = times
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', AmpWarning)
        assert resolve_amp() is use
    assert precision.MIN_BF16_SPEEDUP == 1.05


def test_overrides_skip_the_probe(probe, monkeypatch):
    monkeypatch.setenv('GLUON_SSD_BF16', 'on')
    assert _no_amp_warnings(resolve_amp) is True
    monkeypatch.setenv('GLUON_SSD_BF16', 'OFF')
    probe.times = (1.0, 0.1)   # would be 10x faster: off still wins
    with pytest.warns(AmpWarning, match=r'^--amp: GLUON_SSD_BF16=off; running float32$'):
        assert resolve_amp() is False
    assert probe.calls == 0
    monkeypatch.setenv('GLUON_SSD_BF16', 'probe')
    assert resolve_amp() is True
    assert probe.calls == 1
    monkeypatch.setenv('GLUON_SSD_BF16', 'maybe')
    with pytest.raises(UserError, match="GLUON_SSD_BF16='maybe': expected on, off or probe"):
        resolve_amp()


def test_cpus_without_fast_bfloat16(probe, monkeypatch):
    monkeypatch.setattr(precision, 'cpu_bf16_support', lambda: None)
    for mode in ('on', 'probe'):
        monkeypatch.setenv('GLUON_SSD_BF16', mode)
        with pytest.raises(UserError, match='--eval-amp: bfloat16 on CPU needs AVX-512'):
            resolve_amp('--eval-amp')
    assert probe.calls == 0
    monkeypatch.setattr(precision, 'cpu_bf16_support', lambda: 'emulated')
    monkeypatch.setenv('GLUON_SSD_BF16', 'on')   # forced: today's warning, bfloat16
    with pytest.warns(AmpWarning, match='emulates bfloat16'):
        assert resolve_amp() is True
    monkeypatch.setenv('GLUON_SSD_BF16', 'probe')  # measured like any other CPU
    probe.times = (0.03, 0.1)
    with pytest.warns(AmpWarning, match=r'0\.30x float32 speed on this CPU \(Intel Xeon Test, '
                                        r'bfloat16 emulated\); running float32'):
        assert resolve_amp() is False


def test_failing_probe_runs_float32(probe, monkeypatch):
    def broken():
        raise mx.base.MXNetError('could not create a bfloat16 primitive\nstack trace')
    monkeypatch.setattr(precision, '_measure', broken)
    with pytest.warns(AmpWarning, match=r'probe failed on this CPU \(could not create a '
                                        r'bfloat16 primitive\); running float32'):
        assert resolve_amp() is False


@pytest.mark.slow
def test_real_probe_measures_both_precisions(monkeypatch, tmp_path):
    if cpu_bf16_support() is None:
        pytest.skip('no AVX-512: MKL-DNN has no bfloat16 convolution here')
    monkeypatch.setenv('GLUON_SSD_CACHE', str(tmp_path))
    monkeypatch.setattr(precision, '_PROBE_SECONDS', 0.2)
    result = bf16_speedup()
    assert set(result) == {'speedup', 'cpu', 'flags', 'mxnet', 'measured', 'float32_ms',
                           'bfloat16_ms'}
    assert result['speedup'] > 0 and result['float32_ms'] > 0 and result['bfloat16_ms'] > 0
    assert result['speedup'] == pytest.approx(result['float32_ms'] / result['bfloat16_ms'],
                                              rel=0.01)
    assert 'avx512f' in result['flags'] and result['mxnet'] == mx.__version__
    assert (tmp_path / 'bf16_probe.json').exists()
