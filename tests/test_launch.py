"""gluon_ssd.launch (parameter-server launcher) and gluon_ssd.distributed helpers.

Multi-process tests run everything on 127.0.0.1 with a free port, bound every subprocess by a
timeout and kill every process group they started, also on failure.
"""
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gluon_ssd import distributed, launch

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / 'tests' / '_dist_toy.py'
PY = sys.executable


def _load_toy():
    spec = importlib.util.spec_from_file_location('_dist_toy', TOY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _child_env():
    env = dict(os.environ)
    for key in list(env):
        if key.startswith('DMLC_') or key.startswith('PS_'):
            del env[key]
    env.update(OMP_NUM_THREADS='1', MXNET_CPU_WORKER_NTHREADS='1', PYTHONUNBUFFERED='1',
               PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [env.get('PYTHONPATH')] if p]))
    return env


def _groups_alive(pgids):
    """pids of live (non-zombie) processes whose process group is in ``pgids``."""
    alive = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % entry) as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rindex(')') + 2:].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp in pgids and state != 'Z':
            alive.append(int(entry))
    return alive


def _run_launcher(tmp_path, launcher_args, command, timeout):
    """Run the launcher -> (returncode, output, child pids, wall seconds). Always cleans up."""
    log = tmp_path / 'launch.log'
    argv = [PY, '-m', 'gluon_ssd.launch'] + launcher_args + ['--'] + command
    pids = []
    start = time.monotonic()
    with open(log, 'wb') as out:
        proc = subprocess.Popen(argv, cwd=str(REPO), env=_child_env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        wall = time.monotonic() - start
        text = log.read_text(errors='replace')
        pids = [int(p) for p in re.findall(r'^\[launch\] started \S+ pid=(\d+)$', text, re.M)]
        return code, text, pids, wall
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        text = log.read_text(errors='replace')
        for pid in re.findall(r'^\[launch\] started \S+ pid=(\d+)$', text, re.M):
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


# ---------------------------------------------------------------- shard_indices / helpers (fast)

@pytest.mark.parametrize('n,workers', [(60, 2), (61, 2), (10, 3), (7, 4), (5, 1), (3, 5)])
def test_shard_indices_drop_disjoint_equal(n, workers):
    shards = [distributed.shard_indices(n, r, workers, seed=1, epoch=2, remainder='drop')
              for r in range(workers)]
    assert {len(s) for s in shards} == {n // workers}
    flat = np.concatenate(shards)
    assert len(set(flat.tolist())) == len(flat)  # disjoint
    assert set(flat.tolist()) <= set(range(n))


@pytest.mark.parametrize('n,workers', [(60, 2), (61, 2), (10, 3), (7, 4), (5, 1), (3, 5)])
def test_shard_indices_pad_covers_equal(n, workers):
    shards = [distributed.shard_indices(n, r, workers, seed=1, epoch=2) for r in range(workers)]
    assert {len(s) for s in shards} == {-(-n // workers)}
    flat = np.concatenate(shards)
    assert set(flat.tolist()) == set(range(n))  # covers
    assert len(flat) - n == (-n) % workers  # only the padding repeats
    assert shards[0].dtype == np.int64


def test_shard_indices_epochs_and_seed():
    a0 = distributed.shard_indices(100, 0, 2, seed=3, epoch=0)
    assert np.array_equal(a0, distributed.shard_indices(100, 0, 2, seed=3, epoch=0))
    assert not np.array_equal(a0, distributed.shard_indices(100, 0, 2, seed=3, epoch=1))
    assert not np.array_equal(a0, distributed.shard_indices(100, 0, 2, seed=4, epoch=0))
    assert np.array_equal(distributed.shard_indices(6, 1, 2, shuffle=False), [3, 4, 5])
    assert len(distributed.shard_indices(0, 0, 2)) == 0


def test_shard_sampler_with_dataloader():
    from mxnet import gluon
    data = gluon.data.SimpleDataset(list(range(11)))
    seen = []
    for rank in range(2):
        sampler = distributed.ShardSampler(len(data), rank, 2, seed=5)
        assert len(sampler) == 6
        loader = gluon.data.DataLoader(data, batch_size=4, sampler=sampler, last_batch='discard')
        epoch0 = [b.asnumpy().tolist() for b in loader]
        epoch1 = [b.asnumpy().tolist() for b in loader]
        assert len(epoch0) == len(epoch1) == 1 and epoch0 != epoch1
        assert epoch0[0] == distributed.shard_indices(11, rank, 2, seed=5, epoch=0)[:4].tolist()
        sampler.set_epoch(1)
        assert list(sampler) == distributed.shard_indices(11, rank, 2, seed=5, epoch=1).tolist()
        seen += list(distributed.ShardSampler(len(data), rank, 2, seed=5))
    assert set(seen) == set(range(11))


@pytest.mark.parametrize('kwargs', [dict(n=10, rank=2, num_workers=2),
                                    dict(n=10, rank=0, num_workers=0),
                                    dict(n=-1, rank=0, num_workers=1),
                                    dict(n=10, rank=0, num_workers=2, remainder='wrap')])
def test_shard_indices_errors(kwargs):
    with pytest.raises(ValueError):
        distributed.shard_indices(**kwargs)


def test_local_kvstore_helpers(monkeypatch):
    assert distributed.create_kvstore(None) is None
    assert distributed.create_kvstore('') is None
    assert distributed.create_kvstore('Device') == 'device'
    assert distributed.create_kvstore('local') == 'local'
    for kv in (None, 'local', 'device'):
        assert distributed.worker_info(kv) == (0, 1)
        assert distributed.global_batch_size(8, kv) == 8
        assert not distributed.is_distributed(kv)
    assert distributed.is_distributed('dist_sync') and distributed.is_distributed('horovod')

    class FakeKV:  # what a KVStore exposes
        def __init__(self, kind):
            self.type, self.rank, self.num_workers = kind, 1, 4
    assert distributed.worker_info(FakeKV('dist_sync')) == (1, 4)
    assert distributed.global_batch_size(8, FakeKV('dist_sync')) == 32
    assert distributed.global_batch_size(1, FakeKV('dist_device_sync')) == 4
    assert distributed.global_batch_size(8, FakeKV('dist_async')) == 8

    for key in ('DMLC_ROLE', 'DMLC_PS_ROOT_URI', 'DMLC_PS_ROOT_PORT', 'DMLC_NUM_SERVER',
                'DMLC_NUM_WORKER'):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match='gluon_ssd.launch'):
        distributed.create_kvstore('dist_sync')


def test_heartbeat_file(tmp_path, monkeypatch):
    path = tmp_path / 'heartbeat.worker0'
    monkeypatch.delenv(distributed.HEARTBEAT_ENV, raising=False)
    distributed.heartbeat(rank=1)          # no launcher: nothing happens
    assert not path.exists()
    monkeypatch.setenv(distributed.HEARTBEAT_ENV, str(path))
    monkeypatch.setattr(distributed, '_HEARTBEAT', {'last': 0.0, 'rank': None})
    distributed.heartbeat()
    assert path.is_file() and path.read_text() == ''
    distributed.heartbeat(rank=1)
    assert path.read_text() == 'rank 1\n'
    os.utime(path, (1, 1))
    distributed.heartbeat(min_interval=0)
    assert path.stat().st_mtime > 1 and path.read_text() == 'rank 1\n'
    assert launch.HEARTBEAT_ENV == distributed.HEARTBEAT_ENV


@pytest.mark.slow
def test_exit_guard_and_crash_guard_exit_codes():
    """exit_guard / install_crash_guard end the process with os._exit (run in subprocesses)."""
    cases = {
        'import sys\nwith distributed.exit_guard():\n    sys.exit(3)': 3,
        'with distributed.exit_guard():\n    raise ValueError("x")': 1,
        'with distributed.exit_guard():\n    pass\nprint("ok")': 0,
        'distributed.install_crash_guard()\nraise KeyError("y")': 1,
        'import os, signal, time\ndistributed.install_crash_guard()\n'
        'os.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(20)': 128 + signal.SIGTERM,
        # main thread blocked in C code that never returns on a signal (as in a kvstore wait):
        # the Python-level handler cannot run, the wake-up fd thread must end the process
        'import ctypes, os, signal, threading\ndistributed.install_crash_guard()\n'
        'libc = ctypes.CDLL(None)\n'
        'mutex, cond = ctypes.create_string_buffer(128), ctypes.create_string_buffer(128)\n'
        'libc.pthread_mutex_lock(mutex)\n'
        'threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()\n'
        'libc.pthread_cond_wait(cond, mutex)': 128 + signal.SIGTERM,
    }
    for body, expected in cases.items():
        code = 'from gluon_ssd import distributed\n' + body
        res = subprocess.run([PY, '-c', code], cwd=str(REPO), env=_child_env(), timeout=30,
                             capture_output=True, text=True)
        assert res.returncode == expected, (body, res.stdout, res.stderr)


# ---------------------------------------------------------------- launcher arguments (fast)

@pytest.mark.parametrize('argv,msg', [
    (['-n', '2', '-s', '1'], 'no worker command'),
    (['-n', '2', '-s', '1', '--'], 'no worker command'),
    (['-n', '0', '-s', '1', '--', 'true'], 'num-workers'),
    (['-n', '2', '-s', '0', '--', 'true'], 'num-servers'),
    (['-n', '2', '-s', '1', '--timeout', '0', '--', 'true'], 'timeout'),
    (['-n', '2', '-s', '1', '--port', '70000', '--', 'true'], 'port'),
    (['-n', '2', '-s', '1', '--grace', '-1', '--', 'true'], 'grace'),
    (['-n', '2', '-s', '1', '--stall-timeout', '-1', '--', 'true'], 'stall-timeout'),
    (['-s', '1', '--', 'true'], 'required'),
    (['-n', 'two', '-s', '1', '--', 'true'], 'invalid int'),
])
def test_launcher_argument_errors(argv, msg, capsys, monkeypatch):
    monkeypatch.delenv('DMLC_PS_ROOT_PORT', raising=False)
    with pytest.raises(SystemExit) as err:
        launch.parse_args(argv)
    assert err.value.code == 2
    assert msg in capsys.readouterr().err


def test_launcher_parse_and_env(monkeypatch, capsys):
    monkeypatch.delenv('DMLC_PS_ROOT_PORT', raising=False)
    args = launch.parse_args(['-n', '3', '-s', '2', '--port', '9000', '--timeout', '5', '--',
                              'python', 'train_ssd.py', '--kvstore', 'dist_sync', '--', 'x'])
    assert (args.num_workers, args.num_servers, args.port, args.timeout) == (3, 2, 9000, 5.0)
    assert (args.port_source, args.stall_timeout) == ('--port', launch.DEFAULT_STALL_TIMEOUT)
    assert args.command == ['python', 'train_ssd.py', '--kvstore', 'dist_sync', '--', 'x']
    env = launch.role_env('worker', '127.0.0.1', 9000, 3, 2, base={'A': '1'}, index=1)
    assert env == {'A': '1', 'DMLC_ROLE': 'worker', 'DMLC_PS_ROOT_URI': '127.0.0.1',
                   'DMLC_PS_ROOT_PORT': '9000', 'DMLC_NUM_WORKER': '3', 'DMLC_NUM_SERVER': '2',
                   'DMLC_NODE_HOST': '127.0.0.1', 'PYTHONUNBUFFERED': '1',
                   'GLUON_SSD_LAUNCH_INDEX': '1'}
    assert 0 < launch.free_port() < 65536

    other = launch.parse_args(['-n', '1', '-s', '1', '--stall-timeout', '0', '--', 'x'])
    assert (other.port, other.port_source, other.stall_timeout) == (0, None, 0.0)
    monkeypatch.setenv('DMLC_PS_ROOT_PORT', '9123')    # the ps-lite variable is the default port
    other = launch.parse_args(['-n', '1', '-s', '1', '--', 'x'])
    assert (other.port, other.port_source) == (9123, '$DMLC_PS_ROOT_PORT')
    assert launch.parse_args(['-n', '1', '-s', '1', '--port', '9000', '--', 'x']).port == 9000
    monkeypatch.setenv('DMLC_PS_ROOT_PORT', 'x9')
    with pytest.raises(SystemExit) as err:
        launch.parse_args(['-n', '1', '-s', '1', '--', 'x'])
    assert err.value.code == 2 and 'DMLC_PS_ROOT_PORT' in capsys.readouterr().err


def test_launcher_missing_command_stops_servers(tmp_path):
    code, text, pids, wall = _run_launcher(
        tmp_path, ['-n', '1', '-s', '1', '--grace', '2'], ['/nonexistent/worker-binary'], 60)
    assert code == 127, text
    assert len(pids) == 2 and not _groups_alive(set(pids)), text
    assert wall < 30


# ---------------------------------------------------------------- multi-process runs (slow)

@pytest.mark.slow
@pytest.mark.parametrize('kvstore', ['dist_sync'])
def test_two_workers_match_single_process(tmp_path, kvstore):
    out = tmp_path / 'out'
    code, text, pids, wall = _run_launcher(
        tmp_path, ['-n', '2', '-s', '1', '--timeout', '60'],
        [PY, str(TOY), '--kvstore', kvstore, '--out', str(out)], 90)
    assert code == 0, text
    assert len(pids) == 4 and not _groups_alive(set(pids)), text
    ranks = [dict(np.load(out / ('params_rank%d.npz' % r))) for r in (0, 1)]
    toy = _load_toy()
    reference, _, _, steps = toy.train(None, emulate_workers=2)
    assert steps == 10
    initial = toy.params_dict(toy.make_net())
    assert sorted(ranks[0]) == sorted(reference)
    for name, ref in reference.items():
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name])  # same on both workers
        np.testing.assert_allclose(ranks[0][name], ref, rtol=1e-4, atol=1e-5)
        assert np.abs(ref - initial[name]).max() > 1e-3  # it did train
    # passing the local batch size (gradient summed, not averaged) would give different weights
    wrong, _, _, _ = toy.train(None, emulate_workers=2, step_scale=6)
    assert max(np.abs(wrong[k] - ranks[0][k]).max() for k in wrong) > 1e-3
    print('2 workers + 1 server: %.1f s' % wall)


@pytest.mark.slow
def test_crashed_worker_stops_everything(tmp_path):
    code, text, pids, wall = _run_launcher(
        tmp_path, ['-n', '2', '-s', '1', '--timeout', '60', '--grace', '3'],
        [PY, str(TOY), '--out', str(tmp_path / 'out'), '--crash-at-step', '3'], 90)
    assert code is not None and code != 0, text
    assert wall < 30, text
    assert 'toy crash on rank 1 at step 3' in text
    assert re.search(r'^\[launch\] worker\d exited with 1, stopping everything$', text, re.M), text
    assert len(pids) == 4
    assert not _groups_alive(set(pids)), text
    assert not (tmp_path / 'out' / 'params_rank0.npz').exists()


@pytest.mark.slow
def test_timeout_stops_everything(tmp_path):
    code, text, pids, wall = _run_launcher(
        tmp_path, ['-n', '2', '-s', '1', '--timeout', '3', '--grace', '2'],
        [PY, '-c', 'import time; time.sleep(120)'], 60)
    assert code == launch.EXIT_TIMEOUT, text
    assert wall < 20, text
    assert len(pids) == 4 and not _groups_alive(set(pids)), text


@pytest.mark.slow
def kill_launch_groups(proc, pids):
    """Test clean-up: SIGKILL the launcher's process group and those of its children."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def test_sigterm_to_launcher_stops_everything(tmp_path):
    log = tmp_path / 'launch.log'
    argv = [PY, '-m', 'gluon_ssd.launch', '-n', '2', '-s', '1', '--grace', '2', '--',
            PY, '-c', 'import time; time.sleep(120)']
    with open(log, 'wb') as out:
        proc = subprocess.Popen(argv, cwd=str(REPO), env=_child_env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    pids = []
    try:
        deadline = time.monotonic() + 30
        while len(pids) < 4 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            pids = [int(p) for p in re.findall(r'^\[launch\] started \S+ pid=(\d+)$',
                                               log.read_text(errors='replace'), re.M)]
        assert len(pids) == 4, log.read_text()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        assert not _groups_alive(set(pids)), log.read_text()
    finally:
        kill_launch_groups(proc, pids)
