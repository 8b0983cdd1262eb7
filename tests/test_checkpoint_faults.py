"""Faults around checkpoints and run directories: kill -9 at every step of a checkpoint switch,
Ctrl-C and SIGTERM (with loader worker processes), a full disk, damaged files, two runs in one
directory and unusable ``--out-dir`` folders. Every interrupted run is resumed and must end with
exactly the parameters of the uninterrupted one.

A kill -9 inside the checkpoint write is simulated in-process: at the chosen step the run
directory is copied (the copy is what a killed process leaves on disk: nothing it wrote is lost,
nothing after that step exists), the copy is resumed. One real SIGKILL placed inside the switch,
a real Ctrl-C (the whole process group, as a terminal sends it) and a real SIGTERM check the
same in separate processes.
"""
import errno
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
from gluon_ssd import engine, rundir
from gluon_ssd.config import parse_config

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / 'train_ssd.py')
EPOCHS = 3
FAULT_CKPT = 'ckpt-0002'          # faults hit the save after the second epoch


def _args(data_root, out_dir, *extra):
    """tiny_ssd at 256 px on 16 synthetic images, batch 4, 3 epochs (as test_train_cli's
    ``_small_args``)."""
    return ['--network', 'tiny_ssd', '--data-shape', '256', '--num-train', '16',
            '--num-val', '16', '--val-split', 'train', '--batch-size', '4',
            '--epochs', str(EPOCHS), '-j', '0', '--seed', '3',
            '--no-progress', '--num-samples-viz', '1', '--dataset-root', str(data_root),
            '--out-dir', str(out_dir), *extra]


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))


def _script():
    spec = importlib.util.spec_from_file_location('train_ssd_script', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _weights(path):
    return {k: v.asnumpy() for k, v in mx.nd.load(str(path)).items()}


def _assert_same_weights(run_dir, reference):
    got, want = _weights(Path(run_dir) / 'last.params'), _weights(reference / 'last.params')
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], key)


def _losses(run_dir):
    lines = Path(run_dir, 'metrics.jsonl').read_text().splitlines()
    return [(r['epoch'], r['loss'], r['map']) for r in map(json.loads, lines)]


def _resumed_at(run_dir):
    lines = [l for l in Path(run_dir, 'train.log').read_text().splitlines() if 'resumed from' in l]
    return int(lines[-1].rsplit(' ', 1)[1])


def _one_error_line(err, prog='train_ssd.py'):
    lines = [l for l in err.splitlines() if l.startswith(prog)]
    assert len(lines) == 1, err
    assert 'Traceback' not in err, err
    return lines[0]


# ----------------------------------------------------------------------------------------------
# the uninterrupted run, copied at each step of one checkpoint switch (= kill -9 there)
# ----------------------------------------------------------------------------------------------
#: step -> (function of gluon_ssd.checkpoint, copy before (False) or after (True) it runs,
#:          epoch a resume must start from)
KILL_STEPS = {
    'params half written': ('_write_file', True, 1),
    'states written, no record': ('_write_file', True, 1),
    'complete, not switched': ('_verify', False, 1),
    'switched, last.params stale': ('_refresh_last_params', False, 2),
    'switched, old checkpoint still there': ('_remove_old', False, 2),
}


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp('synthetic_cache')


@pytest.fixture(scope='module')
def reference(data_root, tmp_path_factory):
    """The uninterrupted run, and copies of its directory at each of :data:`KILL_STEPS`."""
    base = tmp_path_factory.mktemp('faults')
    out = base / 'reference'
    copies = {}
    calls = []

    def at_fault(name, args, kwargs):
        if name == '_remove_old':
            return kwargs.get('keep') == FAULT_CKPT
        if name == '_refresh_last_params':
            return str(args[1]).endswith(FAULT_CKPT)
        return FAULT_CKPT in str(args[0])

    def wrap(name):
        original = getattr(ckpt, name)

        def step(*args, **kwargs):
            if not at_fault(name, args, kwargs):
                return original(*args, **kwargs)
            calls.append(name)
            before = [label for label, (fn, after, _) in KILL_STEPS.items()
                      if fn == name and not after]
            if before:
                copies[before[0]] = _copy(out, base / before[0])
            result = original(*args, **kwargs)
            if name == '_write_file' and args[0].endswith('model.params'):
                label = 'params half written'         # killed in the middle of the write
                copies[label] = _copy(out, base / label)
                (partial,) = (base / label / 'checkpoints').glob('*.partial-*')
                data = (partial / 'model.params').read_bytes()
                (partial / 'model.params').write_bytes(data[:len(data) // 2])
            elif name == '_write_file' and args[0].endswith('trainer.states'):
                label = 'states written, no record'
                copies[label] = _copy(out, base / label)
            return result
        return step

    with pytest.MonkeyPatch.context() as mp:
        for name in {fn for fn, _, _ in KILL_STEPS.values()}:
            mp.setattr(ckpt, name, wrap(name))
        result = engine.train(parse_config(_args(data_root, out)))
    assert set(copies) == set(KILL_STEPS), (sorted(copies), calls)
    return {'out': out, 'copies': copies, 'result': result, 'base': base}


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_checkpoint_layout(reference):
    out = reference['out']
    pointer = json.loads((out / 'last.json').read_text())
    assert pointer['checkpoint'] == 'checkpoints/ckpt-0003' and pointer['epoch'] == EPOCHS
    assert sorted(p.name for p in (out / 'checkpoints').iterdir()) == ['ckpt-0003']
    assert sorted(p.name for p in (out / 'checkpoints' / 'ckpt-0003').iterdir()) == \
        ['model.params', 'record.json', 'trainer.states']
    assert (out / 'last.params').read_bytes() == \
        (out / 'checkpoints' / 'ckpt-0003' / 'model.params').read_bytes()
    assert (out / 'best.params').is_file() and not (out / 'last.states').exists()
    state = ckpt.load_checkpoint_state(str(out))
    assert state['epoch'] == EPOCHS and state['skipped'] == []
    assert not list(out.rglob('*.tmp*')) and not list(out.rglob('*.partial-*'))


@pytest.mark.parametrize('step', ['params half written', 'complete, not switched',
                                  'switched, last.params stale'])
def test_kill_during_checkpoint_switch_resumes_bit_identical(reference, step, tmp_path):
    """Before: the checkpoint was three files replaced one after another; a kill between them
    left a params file that did not match last.json (4 of 23 random kills not resumable).
    (Every step of :data:`KILL_STEPS` is resumable; three distinct ones are trained here.)"""
    run = _copy(reference['copies'][step], tmp_path / 'run')
    for other in KILL_STEPS:
        assert ckpt.load_checkpoint_state(str(reference['copies'][other]))['epoch'] == \
            KILL_STEPS[other][2], other
    engine.train(parse_config(['--resume', str(run)]))
    assert _resumed_at(run) == KILL_STEPS[step][2]
    _assert_same_weights(run, reference['out'])
    assert _losses(run) == _losses(reference['out'])
    assert sorted(p.name for p in (run / 'checkpoints').iterdir()) == ['ckpt-0003']
    if 'written' in step:     # the unfinished checkpoint directory was reported, then removed
        assert 'incomplete (the run stopped while writing it)' in (run / 'train.log').read_text()


# ----------------------------------------------------------------------------------------------
# full disk
# ----------------------------------------------------------------------------------------------
def _disk_full_at(monkeypatch, name, suffix):
    """The write of checkpoint ``name``'s file ending in ``suffix`` writes half of it, then
    fails with ENOSPC."""
    original = ckpt._write_file

    def write(path, write_fn):
        if name in path and path.endswith(suffix):
            def half(p):
                write_fn(p)
                with open(p, 'r+b') as f:
                    f.truncate(os.path.getsize(p) // 2)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), p)
            return original(path, half)
        return original(path, write_fn)
    monkeypatch.setattr(ckpt, '_write_file', write)


def test_disk_full_while_saving_keeps_the_previous_checkpoint(reference, tmp_path, monkeypatch,
                                                              capsys):
    """Before: ENOSPC while writing last.states left the new last.params beside the old
    last.states and last.json: the previous checkpoint was destroyed."""
    run = _copy(reference['copies']['switched, old checkpoint still there'], tmp_path / 'full')
    _disk_full_at(monkeypatch, 'ckpt-0003', 'trainer.states')
    assert _script().main(['--resume', str(run)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert 'No space left on device' in line and 'checkpoint of epoch 3 not written' in line
    assert 'the checkpoint of epoch 2 is kept' in line and 'trainer.states' in line
    assert json.loads((run / 'last.json').read_text())['epoch'] == 2
    assert sorted(p.name for p in (run / 'checkpoints').iterdir()) == ['ckpt-0001', 'ckpt-0002']
    monkeypatch.undo()
    engine.train(parse_config(['--resume', str(run)]))
    _assert_same_weights(run, reference['out'])


def test_disk_full_writing_best_params_is_one_line(data_root, tmp_path, monkeypatch, capsys):
    run = tmp_path / 'full_best'
    original = ckpt.atomic_write

    def atomic_write(path, write_fn, fsync=True):
        if path.endswith('best.params'):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path + '.tmp1')
        return original(path, write_fn, fsync)
    monkeypatch.setattr(ckpt, 'atomic_write', atomic_write)
    assert _script().main(_args(data_root, run, '--epochs', '1')) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert 'best.params' in line and 'No space left on device' in line


# ----------------------------------------------------------------------------------------------
# damaged files: one line, or a fallback with a warning
# ----------------------------------------------------------------------------------------------
def test_corrupt_pointer_falls_back_to_the_checkpoint_directory(reference, tmp_path):
    run = _copy(reference['copies']['switched, old checkpoint still there'], tmp_path / 'r')
    (run / 'last.json').write_text('{"checkpoint": "checkpoints/ckpt-00')   # torn write
    state = ckpt.load_checkpoint_state(str(run))
    assert state['epoch'] == 2 and 'unreadable checkpoint pointer' in state['skipped'][0]


def test_damaged_newest_checkpoint_is_skipped_with_a_warning(reference, tmp_path):
    run = _copy(reference['copies']['switched, old checkpoint still there'], tmp_path / 'r')
    params = run / 'checkpoints' / 'ckpt-0002' / 'model.params'
    params.write_bytes(params.read_bytes()[:1000])
    state = ckpt.load_checkpoint_state(str(run))
    assert state['epoch'] == 1 and state['checkpoint'].endswith('ckpt-0001')
    assert 'does not match' in state['skipped'][0] and 'ckpt-0002' in state['skipped'][0]


@pytest.mark.parametrize('damage', ['record', 'pointer and record', 'params', 'no checkpoint'])
def test_unusable_checkpoint_is_one_line_exit_2(reference, tmp_path, capsys, damage):
    run = _copy(reference['out'], tmp_path / 'r')
    ck = run / 'checkpoints' / 'ckpt-0003'
    if damage in ('record', 'pointer and record'):
        (ck / 'record.json').write_text('{"epoch": 3, "files": {"par')
    if damage == 'pointer and record':
        (run / 'last.json').write_text('garbage')
    if damage == 'params':
        (ck / 'model.params').write_bytes(b'x')
    if damage == 'no checkpoint':
        shutil.rmtree(run / 'checkpoints')
        (run / 'last.json').unlink()
    assert _script().main(['--resume', str(run)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith('train_ssd.py: error: --resume: ') and str(run) in line
    if damage == 'no checkpoint':
        assert '--overwrite' in line
    else:
        assert 'no usable checkpoint' in line


def test_previous_layout_is_still_resumable(reference, tmp_path):
    """Run directories written before checkpoint directories (last.{params,states,json})."""
    run = tmp_path / 'old'
    run.mkdir()
    src = reference['out'] / 'checkpoints' / 'ckpt-0003'
    shutil.copy(src / 'model.params', run / 'last.params')
    shutil.copy(src / 'trainer.states', run / 'last.states')
    record = json.loads((src / 'record.json').read_text())
    record['md5'] = {k: v['md5'] for k, v in record.pop('files').items()}
    del record['format'], record['time']
    (run / 'last.json').write_text(json.dumps(record))
    state = ckpt.load_checkpoint_state(str(run))
    assert state['epoch'] == EPOCHS and state['states'] == str(run / 'last.states')


# ----------------------------------------------------------------------------------------------
# real signals: SIGKILL inside the switch, Ctrl-C, SIGTERM (with loader workers)
# ----------------------------------------------------------------------------------------------
_KILL_DRIVER = """
import os, runpy, signal, sys
from gluon_ssd import checkpoint as ckpt
switch = ckpt._switch
def _switch(run_dir, name, epoch):
    if epoch == 2:
        os.kill(os.getpid(), signal.SIGKILL)      # between the complete directory and the switch
    return switch(run_dir, name, epoch)
ckpt._switch = _switch
sys.argv = [{script!r}] + sys.argv[1:]
runpy.run_path({script!r}, run_name='__main__')
"""


def test_real_sigkill_inside_the_switch_resumes_bit_identical(reference, data_root, tmp_path):
    run = tmp_path / 'killed'
    driver = tmp_path / 'driver.py'
    driver.write_text(_KILL_DRIVER.format(script=SCRIPT))
    proc = subprocess.run([sys.executable, str(driver), *_args(data_root, run)], env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert json.loads((run / 'last.json').read_text())['epoch'] == 1
    assert sorted(p.name for p in (run / 'checkpoints').iterdir()) == ['ckpt-0001', 'ckpt-0002']
    # the dead run's lock went with it: resuming is allowed at once
    engine.train(parse_config(['--resume', str(run)]))
    assert _resumed_at(run) == 1
    _assert_same_weights(run, reference['out'])


def _start(data_root, run, *extra):
    return subprocess.Popen([sys.executable, SCRIPT, *_args(data_root, run, *extra)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for_checkpoint(proc, run, epoch, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if ckpt.committed_checkpoint(str(run))[1] == epoch:
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError('no checkpoint of epoch %d: %s' % (epoch, proc.communicate()[1][-2000:]))


@pytest.mark.parametrize('sig, code, name, group', [(signal.SIGINT, 130, 'Ctrl-C', True),
                                                    (signal.SIGTERM, 143, 'SIGTERM', False),
                                                    (signal.SIGTERM, 143, 'SIGTERM', True)])
def test_interrupt_with_loader_workers_is_one_line_and_resumable(reference, data_root, tmp_path,
                                                                 capsys, sig, code, name, group):
    """Before: Ctrl-C gave a KeyboardInterrupt traceback (exit -2), SIGTERM killed the run
    outright (loader workers could print BrokenPipeError tracebacks), and SIGTERM to the whole
    process group (``kill -- -PGID``, systemd, batch schedulers) left the process hanging forever
    after its message: a worker killed while holding the pool's queue lock blocked the pool's
    terminate(). Ctrl-C goes to the whole process group (as a terminal sends it)."""
    run = tmp_path / 'interrupted'
    proc = _start(data_root, run, '-j', '2')
    try:
        _wait_for_checkpoint(proc, run, 1)
        # meanwhile the run owns its directory: a second run there stops at once
        assert _script().main(_args(data_root, run, '--overwrite')) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert f'--out-dir {run}: another training run is using this directory' in line
        time.sleep(0.5)                                 # inside epoch index 1
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err[-3000:]
    assert 'Traceback' not in err and 'Error' not in err, err[-3000:]
    line = _one_error_line(err)
    done = ckpt.committed_checkpoint(str(run))[1]
    assert line == (f"train_ssd.py: interrupted by {name}{' (SIGINT)' if code == 130 else ''}; "
                    f"{run} keeps its checkpoint after {done} of {EPOCHS} epochs: continue with "
                    f"train_ssd.py --resume {run}")
    assert done in (1, 2)
    state = ckpt.load_checkpoint_state(str(run))
    assert state['epoch'] == done and state['skipped'] == []
    assert not list((run / 'checkpoints').glob('*.partial-*'))


def test_forked_loader_workers_keep_the_default_sigterm():
    """A worker forked while train_ssd.py's SIGTERM handler is installed must die of SIGTERM
    even when blocked in C (a Python handler there never ran: the pool's terminate() hung), and
    with the training process (an orphan replacement worker once held the run's stderr open)."""
    script = _script()
    restore = script._install_sigterm()
    try:
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        pid = os.fork()
        if pid == 0:   # pragma: no cover (child)
            import ctypes
            death = ctypes.c_int(0)       # and it dies with its parent (prctl PR_GET_PDEATHSIG)
            ctypes.CDLL(None).prctl(2, ctypes.byref(death))
            os._exit(0 if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
                     and death.value == signal.SIGKILL else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        restore()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_ctrl_c_while_saving_finishes_the_checkpoint_first(reference, tmp_path, monkeypatch):
    """SIGINT/SIGTERM are held back while a checkpoint is written, then delivered."""
    run = _copy(reference['copies']['switched, old checkpoint still there'], tmp_path / 'ctrlc')
    original = ckpt._write_file

    def write(path, write_fn):
        if 'ckpt-0003' in path and path.endswith('model.params'):
            signal.raise_signal(signal.SIGINT)          # Ctrl-C in the middle of the save
        return original(path, write_fn)
    monkeypatch.setattr(ckpt, '_write_file', write)
    with pytest.raises(KeyboardInterrupt):
        engine.train(parse_config(['--resume', str(run)]))
    assert ckpt.load_checkpoint_state(str(run))['epoch'] == 3      # the save completed
    _assert_same_weights(run, reference['out'])


# ----------------------------------------------------------------------------------------------
# run-directory ownership and --out-dir
# ----------------------------------------------------------------------------------------------
def test_new_run_refuses_a_used_directory(reference, data_root, tmp_path, capsys):
    """Before: a new run into an old run's directory overwrote its best.params and mixed its
    files with the old ones."""
    run = _copy(reference['out'], tmp_path / 'old')
    before = (run / 'best.params').read_bytes()
    assert _script().main(_args(data_root, run)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f'--out-dir {run}: not empty' in line and '--resume' in line and '--overwrite' in line
    assert (run / 'best.params').read_bytes() == before


def test_overwrite_replaces_only_the_previous_runs_files(data_root, tmp_path, capsys):
    run = tmp_path / 'again'
    (run / 'checkpoints' / 'ckpt-0009').mkdir(parents=True)
    for name in ('best.params', 'epoch_0009.params', 'metrics.jsonl', 'notes.txt'):
        (run / name).write_text('old')
    assert _script().main(_args(data_root, run, '--overwrite', '--epochs', '1')) == 0
    assert (run / 'notes.txt').read_text() == 'old'
    assert not (run / 'epoch_0009.params').exists()
    assert sorted(p.name for p in (run / 'checkpoints').iterdir()) == ['ckpt-0001']
    assert len(_losses(run)) == 1 and (run / 'best.params').read_bytes() != b'old'
    assert json.loads((run / 'config.json').read_text())['overwrite'] is True
    with pytest.raises(Exception, match='--overwrite starts a new run'):
        parse_config(['--resume', str(run), '--overwrite'])


def _bad_out_dirs(tmp_path):
    afile = tmp_path / 'a_file'
    afile.write_text('x')
    readonly = tmp_path / 'readonly'
    readonly.mkdir()
    readonly.chmod(0o555)
    return {'a file': (afile, 'not a folder'), 'inside a file': (afile / 'run', 'not a folder'),
            'read-only folder': (readonly / 'run', 'not writable')}


@pytest.mark.parametrize('case', ['a file', 'inside a file', 'read-only folder'])
def test_unusable_out_dir_is_one_line_exit_2(data_root, tmp_path, capsys, case):
    path, needle = _bad_out_dirs(tmp_path)[case]
    if case == 'read-only folder' and os.access(path.parent, os.W_OK):
        pytest.skip('this user (root) can write into read-only folders')
    assert _script().main(_args(data_root, path)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f'--out-dir {path}: {needle}' in line
    from gluon_ssd import predict
    image = tmp_path / 'img.png'
    from PIL import Image
    Image.new('RGB', (32, 32)).save(image)
    assert predict.main([str(image), '--run-dir', str(tmp_path), '--out-dir', str(path)]) == 2
    line = _one_error_line(capsys.readouterr().err, 'python -m gluon_ssd.predict')
    assert f'--out-dir {path}: {needle}' in line


def test_run_dir_lock_is_released_when_the_run_ends(tmp_path):
    lock = rundir.claim_run_dir(str(tmp_path / 'r'))
    with pytest.raises(Exception, match='another training run is using this directory'):
        rundir.claim_run_dir(str(tmp_path / 'r'), resume=True)
    rundir.release_run_dir(lock)
    rundir.release_run_dir(rundir.claim_run_dir(str(tmp_path / 'r'), resume=True))


def test_resume_sources(reference):
    out = reference['out']
    ck = out / 'checkpoints' / 'ckpt-0003'
    assert rundir.resume_source(str(out)) == (str(out), None, True)
    assert rundir.resume_source(str(out / 'last.params')) == (str(out), None, True)
    assert rundir.resume_source(str(ck)) == (str(out), str(ck), True)
    assert rundir.resume_source(str(ck / 'model.params')) == (str(out), str(ck), True)
    assert rundir.resume_source(str(out / 'best.params')) == (str(out), None, False)


def test_a_damaged_metrics_line_is_left_out(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    path.write_text('{"epoch": 0, "loss": 1}\n{"epoch": 1, "lo\n{"epoch": 2, "loss": 3}\n')
    assert [r['epoch'] for r in rundir.read_metrics(str(path), 5)] == [0, 2]
