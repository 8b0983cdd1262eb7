"""End-to-end tests of ``train_ssd.py`` and the engine: short real training runs (tiny_ssd, small
synthetic data), run-directory contents, resume after a kill, multi-context, NaN handling and the
command line's configuration errors."""
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from gluon_ssd import checkpoint as ckpt
from gluon_ssd import engine
from gluon_ssd.config import RESUME_MUTABLE, parse_config
from gluon_ssd.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / 'train_ssd.py')
RUN_FILES = ('config.json', 'model.json', 'train.log', 'metrics.jsonl', 'best.params', 'last.params',
             'last.json', 'curves.png', 'detections.png')


def _env():
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    return env


def _small_args(data_root, out_dir, *extra):
    """A ~15 s run: 16 synthetic images, batch 4, 6 epochs, validated on the same 16 images
    (24 steps are too few to beat an untrained net's chance mAP on unseen images)."""
    # d2l's exact TinySSD, the network and size these runs were tuned at
    return ['--network', 'tiny_ssd', '--data-shape', '256',
            '--num-train', '16', '--num-val', '16', '--val-split', 'train', '--batch-size', '4',
            '--epochs', '6', '-j', '0', '--seed', '3', '--no-progress', '--num-samples-viz', '2',
            '--dataset-root', str(data_root), '--out-dir', str(out_dir), *extra]


def _md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def _records(run_dir):
    return [json.loads(line) for line in Path(run_dir, 'metrics.jsonl').read_text().splitlines()]


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp('synthetic_cache')


@pytest.fixture(scope='module')
def baseline(data_root, tmp_path_factory):
    """One uninterrupted short run (shared by several tests)."""
    out = tmp_path_factory.mktemp('runs') / 'baseline'
    result = engine.train(parse_config(_small_args(data_root, out)))
    return {'out': out, 'result': result}


# ----------------------------------------------------------------------------------------------
# configuration errors: exit 2, one line, no traceback, before any heavy work
# ----------------------------------------------------------------------------------------------
def _load_script():
    spec = importlib.util.spec_from_file_location('train_ssd_script', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('argv, needle', [
    (['--network', 'resnet9000'], '--network'),
    (['--data-shape', '512'], 'scratch_ssd supports 192, 256, 320'),
    (['--dataset', 'voc', '--dataset-root', '/no/such/folder'], '--dataset-root'),
    (['--cpu-contexts', '3', '--batch-size', '2'], 'smaller than the number of devices'),
])
def test_configuration_errors_exit_2_with_one_line(argv, needle, tmp_path, capsys):
    code = _load_script().main(argv + ['--out-dir', str(tmp_path / 'r')])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith('train_ssd.py: error:')
    assert not (tmp_path / 'r').exists()


def test_cpu_training_computes_on_every_core_unless_told_otherwise():
    """MXNet keeps a core for its engine by default (one OpenMP thread on 2 cores): a CPU run
    of train_ssd.py asks for one thread per core; an explicit OMP_NUM_THREADS, GPUs, Horovod,
    a parameter-server run and an already imported MXNet keep their setting."""
    use_every_core = _load_script().use_every_core
    cores = str(len(os.sched_getaffinity(0)))
    env = {}
    use_every_core([], env, {})
    assert env == {'OMP_NUM_THREADS': cores}
    env = {}
    use_every_core(['--gpus', ''], env, {})
    assert env == {'OMP_NUM_THREADS': cores}               # an empty --gpus is the CPU
    for args, environ, modules in ((['--gpus', '0'], {}, {}), (['--gpus=0,1'], {}, {}),
                                   (['--horovod'], {}, {}), (['--kvstore', 'dist_sync'], {}, {}),
                                   ([], {'DMLC_ROLE': 'worker'}, {}),
                                   ([], {'OMP_NUM_THREADS': '1'}, {}), ([], {}, {'mxnet': None})):
        before = dict(environ)
        use_every_core(args, environ, modules)
        assert environ == before, args


@pytest.mark.slow
def test_cli_subprocess_configuration_error(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, '--network', 'resnet9000', '--out-dir',
                           str(tmp_path / 'r')], capture_output=True, text=True, env=_env(),
                          timeout=120)
    assert proc.returncode == 2
    from gluon_ssd.model.zoo import NETWORKS
    assert proc.stderr.strip().splitlines() == [
        "train_ssd.py: error: --network: unknown network 'resnet9000'; choose one of "
        + ', '.join(NETWORKS)]


def test_resume_with_different_classes_is_refused(data_root, tmp_path):
    class _Net:
        def save_parameters(self, path):
            Path(path).write_bytes(b'x')
    ckpt.save_checkpoint(str(tmp_path), _Net(), None,
                         {'epoch': 1, 'classes': ['cat', 'dog'], 'network': 'tiny_ssd',
                          'data_shape': 256})
    cfg = parse_config(_small_args(data_root, tmp_path / 'new', '--resume', str(tmp_path)))
    with pytest.raises(UserError, match='--resume: checkpoint classes'):
        engine.train(cfg)


# ----------------------------------------------------------------------------------------------
# real training runs
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_run_directory_and_metrics(baseline):
    out = baseline['out']
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    records = _records(out)
    assert [r['epoch'] for r in records] == list(range(6))
    for r in records:
        assert {'epoch', 'lr', 'loss', 'cls_loss', 'box_loss', 'img_per_s', 'map'} <= set(r)
        assert np.isfinite(r['loss']) and r['img_per_s'] > 0
    assert records[-1]['loss'] < records[0]['loss']
    assert sorted(p.name for p in (out / 'checkpoints').iterdir()) == ['ckpt-0006']
    state = ckpt.load_checkpoint_state(str(out))
    assert state['epoch'] == 6 and state['classes'] == baseline['result']['classes']
    assert json.loads((out / 'config.json').read_text())['network'] == 'tiny_ssd'
    meta = json.loads((out / 'model.json').read_text())
    assert (meta['model'], meta['data_shape'], meta['classes']) == \
        ('tiny_ssd', 256, baseline['result']['classes'])
    result = baseline['result']
    assert result['final_map'] == records[-1]['map']           # the headline: the last epoch
    assert result['best_map'] == max(r['map'] for r in records)
    assert records[result['best_epoch']]['map'] == result['best_map']


@pytest.mark.slow
def test_training_improves_map_over_untrained(baseline, data_root):
    cfg = parse_config(_small_args(data_root, baseline['out'] / 'unused'))
    _, val_ds, classes = engine.open_data(cfg)
    mx.random.seed(cfg.seed)
    untrained = engine.build_net(cfg, classes, [mx.cpu()])
    before = engine.build_evaluator(cfg, val_ds, classes)(untrained, [mx.cpu()])['voc07']['map']
    after = baseline['result']['final_map']
    assert after > before, (before, after)


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted(baseline, data_root, tmp_path):
    out = tmp_path / 'killed'
    proc = subprocess.Popen([sys.executable, SCRIPT, *_small_args(data_root, out)],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    record = out / 'last.json'
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if record.is_file() and json.loads(record.read_text() or '{}').get('epoch') == 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, 'the run ended before it could be killed: ' + \
            proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)       # dies during epoch index 2 (the third)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert json.loads(record.read_text())['epoch'] == 2
    result = engine.train(parse_config(_small_args(data_root, out, '--resume', str(out))))
    resumed = mx.nd.load(str(out / 'last.params'))
    reference = mx.nd.load(str(baseline['out'] / 'last.params'))
    assert resumed.keys() == reference.keys()
    for key in reference:
        np.testing.assert_array_equal(resumed[key].asnumpy(), reference[key].asnumpy(), key)
    assert [r['epoch'] for r in result['records']] == list(range(6))


@pytest.mark.slow
def test_resume_restores_the_run_configuration(baseline):
    """Bug: --resume RUN used train_ssd.py's defaults (1000 images, 4 workers...) instead of the
    run's settings and overwrote its config.json."""
    cfg = parse_config(['--resume', str(baseline['out'])])
    saved = json.loads((baseline['out'] / 'config.json').read_text())
    for key in ('num_train', 'num_val', 'num_workers', 'data_shape', 'batch_size', 'seed',
                'val_split', 'dataset_root', 'lr', 'epochs'):
        assert getattr(cfg, key) == saved[key], key
    assert (cfg.num_train, cfg.num_workers, cfg.data_shape) == (16, 0, 256)
    assert cfg.out_dir == str(baseline['out'])
    assert cfg.history[-1]['changes'] == {}


@pytest.mark.slow
@pytest.mark.parametrize('flag, value', [('--num-train', '1000'), ('--lr', '0.1'),
                                         ('--data-shape', '128'), ('--dataset', 'voc'),
                                         ('--seed', '4'), ('--out-dir', '/tmp/elsewhere')])
def test_resume_refuses_a_flag_that_contradicts_the_run(baseline, flag, value):
    with pytest.raises(UserError) as err:
        parse_config(['--resume', str(baseline['out']), flag, value])
    assert flag in str(err.value) and '\n' not in str(err.value)


@pytest.mark.slow
def test_resume_of_a_run_saved_before_iou_thresh_keeps_gluoncvs_matching_and_colours(baseline, tmp_path):
    run = tmp_path / 'old'
    shutil.copytree(baseline['out'], run)
    saved = json.loads((run / 'config.json').read_text())
    del saved['iou_thresh'], saved['photometric'], saved['validations']
    (run / 'config.json').write_text(json.dumps(saved))
    cfg = parse_config(['--resume', str(run)])
    assert (cfg.iou_thresh, cfg.photometric) == (0.5, 'gluoncv')


@pytest.mark.slow
def test_resume_records_accepted_changes_in_config_json(baseline, tmp_path):
    run = tmp_path / 'longer'
    shutil.copytree(baseline['out'], run)
    assert 'epochs' in RESUME_MUTABLE and 'num_workers' in RESUME_MUTABLE
    cfg = parse_config(['--resume', str(run), '--epochs', '7', '-j', '0', '--seed', '3'])
    assert cfg.history[-1]['changes'] == {'epochs': [6, 7]}   # -j 0, --seed 3: unchanged
    result = engine.train(cfg)
    assert [r['epoch'] for r in result['records']] == list(range(7))
    saved = json.loads((run / 'config.json').read_text())
    assert saved['epochs'] == 7 and saved['num_train'] == 16
    assert saved['history'][-1]['changes'] == {'epochs': [6, 7]}


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_checkpoint(baseline, data_root, tmp_path):
    run = tmp_path / 'nan'
    shutil.copytree(baseline['out'], run)
    files = ('last.params', 'last.json', 'best.params', 'checkpoints/ckpt-0006/model.params',
             'checkpoints/ckpt-0006/trainer.states', 'checkpoints/ckpt-0006/record.json')
    before = {n: _md5(run / n) for n in files}
    saved = json.loads((run / 'config.json').read_text())   # --resume keeps the run's --lr
    (run / 'config.json').write_text(json.dumps(dict(saved, lr=1e12)))
    cfg = parse_config(['--resume', str(run), '--epochs', '8', '--log-interval', '1'])
    with pytest.raises(engine.TrainingDiverged, match='last good checkpoint'):
        engine.train(cfg)
    assert {n: _md5(run / n) for n in before} == before
    assert 'loss is' in (run / 'train.log').read_text() or 'nan' in (run / 'train.log').read_text()


@pytest.mark.slow
def test_two_cpu_contexts_run(data_root, tmp_path):
    cfg = parse_config(_small_args(data_root, tmp_path / 'two', '--cpu-contexts', '2',
                                   '--epochs', '1'))
    result = engine.train(cfg)
    rec = result['records'][0]
    assert np.isfinite(rec['loss']) and rec['map'] is not None
    assert 'cpu(1)' in (tmp_path / 'two' / 'train.log').read_text()


@pytest.mark.slow
def test_amp_on_cpu_trains_in_bfloat16_and_tracks_float32(baseline, data_root, tmp_path,
                                                          monkeypatch):
    monkeypatch.setenv('GLUON_SSD_BF16', 'on')   # bfloat16 whatever this CPU's measured speed
    out = tmp_path / 'amp'
    result = engine.train(parse_config(_small_args(data_root, out, '--amp')))
    assert 'precision bfloat16' in (out / 'train.log').read_text()
    assert json.loads((out / 'config.json').read_text())['amp'] is True
    amp_losses = [r['loss'] for r in result['records']]
    fp32_losses = [r['loss'] for r in _records(baseline['out'])]
    # same seed, data and schedule: bfloat16 convolutions only round the activations
    np.testing.assert_allclose(amp_losses, fp32_losses, rtol=0.05)
    assert amp_losses != fp32_losses  # ... but it does round them: this run was bfloat16
    assert all(r['map'] is not None and np.isfinite(r['map']) for r in result['records'])


@pytest.mark.slow
def test_voc_folder_raccoon(shared_data, tmp_path):
    root = shared_data / 'raccoon'
    argv = ['--dataset', 'voc', '--dataset-root', str(root), '--train-split', 'train',
            '--val-split', 'test', '--num-train', '32', '--num-val', '16', '--batch-size', '8',
            '--epochs', '2', '-j', '0', '--no-progress', '--num-samples-viz', '2',
            '--out-dir', str(tmp_path / 'raccoon')]
    result = engine.train(parse_config(argv))
    assert result['classes'] == ['raccoon']
    records = _records(tmp_path / 'raccoon')
    assert len(records) == 2 and all(np.isfinite(r['loss']) for r in records)
    assert records[-1]['loss'] < records[0]['loss']
    assert (tmp_path / 'raccoon' / 'detections.png').is_file()


@pytest.mark.slow
def test_coco_training_validates_with_coco_ap(shared_data, tmp_path, capsys):
    """A COCO run trains the COCO preset and reports COCO AP beside VOC07 mAP every validation."""
    out = tmp_path / 'coco'
    argv = ['--dataset', 'coco', '--dataset-root', str(shared_data / 'coco128'),
            '--train-split', 'instances_train2017', '--val-split', 'instances_train2017',
            '--num-train', '8', '--num-val', '4', '--batch-size', '4', '--epochs', '1', '-j', '0',
            '--no-progress', '--num-samples-viz', '1', '--out-dir', str(out)]
    assert _load_script().main(argv) == 0
    printed = capsys.readouterr().out
    assert 'final COCO AP' in printed and 'final VOC07 mAP' in printed
    (record,) = _records(out)
    assert 0.0 <= record['coco_ap'] <= 1.0 and 0.0 <= record['map'] <= 1.0
    assert 'COCO AP' in (out / 'train.log').read_text()
    assert json.loads((out / 'model.json').read_text())['classes'][0] == 'person'


@pytest.mark.slow
def test_pretrained_detector_keeps_features_and_matching_classes(baseline, data_root):
    """--pretrained FILE: the trained detector's weights, its classes reset to the dataset's,
    the predictor rows of classes with the same name kept (GluonCV's reset_class)."""
    trained = mx.nd.load(str(baseline['out'] / 'best.params'))
    old_classes = baseline['result']['classes']
    cfg = parse_config(_small_args(data_root, baseline['out'] / 'unused', '--pretrained',
                                   str(baseline['out'] / 'best.params')))
    assert (cfg.model, cfg.network, cfg.data_shape) == ('tiny_ssd', 'tiny_ssd', 256)
    new_classes = ['star', 'zebra']
    net = engine.build_net(cfg, new_classes, [mx.cpu()])
    params = {k: v.data().asnumpy() for k, v in net._collect_params_with_prefix().items()}
    features = [k for k in trained if k.startswith('features.')]
    assert features and all(np.array_equal(params[k], trained[k].asnumpy()) for k in features)
    old_w = trained['class_predictors.0.predictor.weight'].asnumpy()
    new_w = params['class_predictors.0.predictor.weight']
    old_k, new_k = len(old_classes) + 1, len(new_classes) + 1
    assert new_w.shape[0] == old_w.shape[0] // old_k * new_k
    star = old_classes.index('star') + 1
    np.testing.assert_array_equal(new_w[1::new_k], old_w[star::old_k])     # 'star' reused
    np.testing.assert_array_equal(new_w[0::new_k], old_w[0::old_k])       # background


@pytest.mark.slow
def test_fine_tune_a_saved_detector_on_raccoon_then_eval_and_export(baseline, shared_data,
                                                                     tmp_path, capsys):
    from gluon_ssd import eval as ssd_eval
    from gluon_ssd import export as ssd_export
    out = tmp_path / 'finetune'
    argv = ['--pretrained', str(baseline['out'] / 'best.params'), '--dataset', 'voc',
            '--dataset-root', str(shared_data / 'raccoon'), '--train-split', 'train',
            '--val-split', 'test', '--num-train', '16', '--num-val', '8', '--batch-size', '8',
            '--epochs', '1', '-j', '0', '--no-progress', '--num-samples-viz', '1',
            '--out-dir', str(out)]
    assert _load_script().main(argv) == 0, capsys.readouterr().err
    meta = json.loads((out / 'model.json').read_text())
    assert (meta['model'], meta['data_shape'], meta['classes']) == ('tiny_ssd', 256, ['raccoon'])
    capsys.readouterr()
    assert ssd_eval.main(['--run-dir', str(out), '--metrics', 'voc07']) == 0
    assert json.loads(capsys.readouterr().out)['num_images'] == 8
    assert ssd_export.main(['--run-dir', str(out), '--out', str(tmp_path / 'deploy' / 'ft')]) == 0
    exported = json.loads((tmp_path / 'deploy' / 'ft-meta.json').read_text())
    assert exported['classes'] == ['raccoon'] and exported['model'] == 'tiny_ssd'


@pytest.mark.slow
def test_dist_sync_two_workers_with_launcher(data_root, tmp_path):
    out = tmp_path / 'dist'
    cmd = [sys.executable, '-m', 'gluon_ssd.launch', '-n', '2', '-s', '1', '--timeout', '240',
           '--', sys.executable, SCRIPT, '--kvstore', 'dist_sync', '--num-train', '16',
           '--num-val', '8', '--batch-size', '4', '--epochs', '2', '-j', '0', '--no-progress',
           '--num-samples-viz', '1', '--dataset-root', str(data_root), '--out-dir', str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert '[worker 1]' in proc.stdout + proc.stderr
    records = _records(out)
    assert [r['epoch'] for r in records] == [0, 1] and records[-1]['map'] is not None
    for name in RUN_FILES:
        assert (out / name).is_file(), name


def test_resume_with_weights_of_another_detector_is_one_line(data_root, tmp_path):
    """Bug: --resume with an 80-class file on a 1-class dataset crashed with an AssertionError."""
    from gluon_ssd.model.zoo import get_model
    other = get_model('tiny_ssd', classes=[f'c{i}' for i in range(80)])
    other.initialize()
    other(mx.nd.zeros((1, 3, 256, 256)))
    path = tmp_path / 'coco80.params'
    other.save_parameters(str(path))
    cfg = parse_config(_small_args(data_root, tmp_path / 'run', '--resume', str(path),
                                   '--epochs', '1'))
    with pytest.raises(UserError, match='do not fit tiny_ssd with 6 classes') as err:
        engine.train(cfg)
    assert '--pretrained' in str(err.value) and '\n' not in str(err.value)
