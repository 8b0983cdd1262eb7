"""What happens when a distributed run goes wrong (issue 13), each case reproduced first.

* the crash guard of a ``dist_*`` worker and forked ``DataLoader`` workers (``-j N``): a SIGTERM to
  a forked child must kill that child only (it used to end the parent with 143, or hang it);
* a frozen worker (SIGSTOP) or a job where no worker makes progress: the launcher's
  ``--stall-timeout`` stops everything with one line naming the stuck worker, exit 125;
* ``kill -9`` of the launcher: its children (and their children) die with it;
* a scheduler port already in use: one line naming the port and where it was set, exit 2.

Everything runs on 127.0.0.1 and is bounded in time; the helpers of ``test_launch`` kill every
process group they started, also on failure.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from gluon_ssd import launch
from test_launch import (PY, REPO, TOY, _child_env, _groups_alive, _run_launcher,
                         kill_launch_groups)

STARTED = re.compile(r'^\[launch\] started \S+ pid=(\d+)$', re.M)


def _run_python(code, timeout=120):
    """Run ``code`` in a new session -> (returncode, stdout, stderr); kills the session after."""
    proc = subprocess.Popen([PY, '-c', textwrap.dedent(code)], cwd=str(REPO), env=_child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail('timed out after %d s:\n%s\n%s' % (timeout, out, err))
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return proc.returncode, out, err


def _pids_alive(pids):
    alive = []
    for pid in pids:
        try:
            with open('/proc/%d/stat' % pid) as fh:
                stat = fh.read()
        except OSError:
            continue
        if stat[stat.rindex(')') + 2] != 'Z':
            alive.append(pid)
    return alive


def _wait_gone(check, timeout):
    """Poll ``check()`` (returns what is still alive) until empty -> (alive, seconds waited)."""
    start = time.monotonic()
    alive = check()
    while alive and time.monotonic() - start < timeout:
        time.sleep(0.1)
        alive = check()
    return alive, time.monotonic() - start


# ---------------------------------------------------------------- crash guard x fork (case 1)

def test_sigterm_to_forked_child_does_not_end_guarded_parent():
    """Minimal case of the exit-143 bug: the forked child inherited the guard's wake-up pipe, so a
    SIGTERM to the child made the parent ``os._exit(143)``. The child must die of the signal, the
    parent must live on with its guard intact, also for children killed right after fork."""
    code, out, err = _run_python('''
        import os, signal, sys, time
        from gluon_ssd import distributed
        distributed.install_crash_guard()
        for delay in [0.3] + [0.0] * 20:         # 0.0: SIGTERM before the child ran any Python
            pid = os.fork()
            if pid == 0:
                clean = (signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
                         and sys.excepthook is sys.__excepthook__)
                time.sleep(30 if clean else 0)
                os._exit(7)
            time.sleep(delay)
            os.kill(pid, signal.SIGTERM)
            _, status = os.waitpid(pid, 0)
            print('child', os.WTERMSIG(status) if os.WIFSIGNALED(status) else 'exit %d'
                  % os.WEXITSTATUS(status), flush=True)
        time.sleep(0.5)
        print('parent alive', flush=True)
        os.kill(os.getpid(), signal.SIGTERM)     # the parent's guard still works
        time.sleep(20)
        print('not reached')
        ''', timeout=90)
    assert out.splitlines() == ['child %d' % signal.SIGTERM] * 21 + ['parent alive'], (out, err)
    assert code == 128 + signal.SIGTERM, (code, out, err)


@pytest.mark.slow
def test_guard_with_multiprocess_dataloader_shutdowns():
    """The case from the report: crash guard + ``DataLoader(num_workers=4)`` shutdowns
    (``Pool.terminate()`` SIGTERMs the loader workers). Before: exit 143 in ~1 of 3 processes, or
    ``terminate()`` waiting forever for a worker whose Python SIGTERM handler never ran, and a
    loader worker orphaned. Like ``train_ssd.py``, a Python SIGTERM handler is set before the
    guard."""
    code, out, err = _run_python('''
        import os, signal
        import numpy as np
        from mxnet import gluon
        from gluon_ssd import distributed

        def handler(signum, frame):              # what train_ssd.py installs before the guard
            raise KeyboardInterrupt
        signal.signal(signal.SIGTERM, handler)
        distributed.install_crash_guard()
        data = gluon.data.ArrayDataset(np.arange(64, dtype='float32').reshape(32, 2))
        for i in range(8):
            loader = gluon.data.DataLoader(data, batch_size=4, num_workers=4)
            assert sum(1 for _ in loader) == 8
            print('workers', ' '.join(str(p.pid) for p in loader._worker_pool._pool), flush=True)
            del loader
        print('done', flush=True)
        ''', timeout=240)
    pids = [int(p) for line in out.splitlines() if line.startswith('workers ')
            for p in line.split()[1:]]
    alive, _ = _wait_gone(lambda: _pids_alive(pids), 5)
    for pid in alive:   # leave nothing behind even when failing
        os.kill(pid, signal.SIGKILL)
    assert code == 0 and out.rstrip().endswith('done'), (code, out, err)
    assert len(pids) == 32 and not alive, (pids, alive)


@pytest.mark.slow
def test_dist_sync_train_default_loader_workers_under_launcher(tmp_path):
    """End to end, 4 loader workers (the default ``-j`` with 8 or more cores): 2 workers + 1
    server, tiny_ssd at 128 px, 8 synthetic images, 2 epochs. Before the fix this exited 143 in 4
    of 5 runs (or hung)."""
    out = tmp_path / 'run'
    code, text, pids, wall = _run_launcher(
        tmp_path, ['-n', '2', '-s', '1', '--timeout', '180', '--grace', '3'],
        [PY, str(REPO / 'train_ssd.py'), '--kvstore', 'dist_sync', '--network', 'tiny_ssd',
         '--data-shape', '128', '--num-train', '8', '--num-val', '4', '--batch-size', '2',
         '--epochs', '2', '--no-progress', '--num-samples-viz', '1', '-j', '4',
         '--dataset-root', str(tmp_path / 'data'), '--out-dir', str(out)], 240)
    assert code == 0, text[-4000:]
    assert re.search(r'"num_workers": 4\b', (out / 'config.json').read_text())
    assert len(pids) == 4 and not _groups_alive(set(pids)), text[-2000:]
    assert re.search(r'^\[worker\d\] run directory: ', text, re.M), text[-2000:]
    assert '[launch] all workers finished' in text
    print('2 workers, -j 4: %.1f s' % wall)


# ---------------------------------------------------------------- stalls (case 2)

@pytest.mark.slow
def test_frozen_worker_is_named_and_job_stopped(tmp_path):
    """Rank 1 of the toy SIGSTOPs itself at step 3: before, every process waited forever (only
    --timeout ended it, without saying why); now the stall check names it and stops the job."""
    code, text, pids, wall = _run_launcher(
        tmp_path, ['-n', '2', '-s', '1', '--timeout', '120', '--stall-timeout', '3',
                   '--grace', '2'],
        [PY, str(TOY), '--out', str(tmp_path / 'out'), '--stop-at-step', '3'], 150)
    assert code == launch.EXIT_STALLED, text
    frozen = re.search(r'toy freeze \(SIGSTOP\) on rank 1 at step 3, pid (\d+)', text)
    assert frozen, text
    lines = [l for l in text.splitlines() if l.startswith('[launch] stalled:')]
    assert len(lines) == 1, text
    assert re.match(r'\[launch\] stalled: worker\d \(pid %s, kvstore rank 1\) is stopped '
                    r'\(SIGSTOP or a debugger\) for \d+ s \(--stall-timeout 3\); stopping '
                    r'everything$' % frozen.group(1), lines[0]), lines[0]
    assert len(pids) == 4 and not _groups_alive(set(pids)), text
    assert wall < 60, text


@pytest.mark.slow
def test_no_progress_is_a_stall_but_a_busy_worker_is_not(tmp_path):
    """Workers that sleep without output or CPU time for --stall-timeout: stall (exit 125, the
    line names a worker). A worker computing (CPU) for longer than --stall-timeout while the other
    idles: no stall, exit 0."""
    code, text, pids, wall = _run_launcher(
        tmp_path, ['-n', '2', '-s', '1', '--timeout', '60', '--stall-timeout', '2',
                   '--grace', '1'],
        [PY, '-c', 'import time; time.sleep(60)'], 90)
    assert code == launch.EXIT_STALLED, text
    assert re.search(r'^\[launch\] stalled: no worker made progress \(CPU time, output, '
                     r'heartbeat\) for \d+ s \(--stall-timeout 2\); worker\d \(pid \d+\) stalled '
                     r'first; stopping everything$', text, re.M), text
    assert len(pids) == 4 and not _groups_alive(set(pids)), text
    assert wall < 40, text

    busy = ('import os, time\n'
            'if os.environ["GLUON_SSD_LAUNCH_INDEX"] == "0":\n'
            '    end = time.time() + 6\n'
            '    while time.time() < end:\n'
            '        sum(range(1000))\n'
            'else:\n'
            '    time.sleep(6)\n')
    code, text, pids, wall = _run_launcher(
        tmp_path, ['-n', '2', '-s', '1', '--timeout', '60', '--stall-timeout', '2',
                   '--grace', '1'], [PY, '-c', busy], 90)
    assert code == 0, text
    assert 'stalled' not in text
    assert len(pids) == 4 and not _groups_alive(set(pids)), text


# ---------------------------------------------------------------- launcher killed (case 3)

def _start_launcher(tmp_path, command, extra=()):
    log = tmp_path / 'launch.log'
    argv = [PY, '-m', 'gluon_ssd.launch', '-n', '2', '-s', '1', '--grace', '2', *extra, '--'] \
        + command
    with open(log, 'wb') as out:
        proc = subprocess.Popen(argv, cwd=str(REPO), env=_child_env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    pids, text = [], ''
    while len(pids) < 4 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        text = log.read_text(errors='replace')
        pids = [int(p) for p in STARTED.findall(text)]
    watchdog = re.search(r'^\[launch\] watchdog pid=(\d+)$', text, re.M)
    return proc, log, pids, int(watchdog.group(1)) if watchdog else None


def _cleanup(proc, pids, watchdog):
    kill_launch_groups(proc, pids)
    if watchdog and _pids_alive([watchdog]):
        os.kill(watchdog, signal.SIGKILL)


FORKING_WORKER = [PY, '-c', 'import os, time; os.fork(); time.sleep(120)']  # + a grandchild


@pytest.mark.slow
def test_sigkill_of_launcher_kills_children_and_grandchildren(tmp_path):
    """Before: scheduler, server and workers ran on after ``kill -9`` of the launcher."""
    proc, log, pids, watchdog = _start_launcher(tmp_path, FORKING_WORKER)
    try:
        assert len(pids) == 4 and watchdog, log.read_text()
        time.sleep(1.0)
        assert len(_groups_alive(set(pids))) >= 6, log.read_text()  # 4 children + 2 grandchildren
        proc.kill()                     # SIGKILL to the launcher only
        proc.wait(timeout=10)
        alive, waited = _wait_gone(lambda: _groups_alive(set(pids)), 10)
        assert not alive and waited < 5, (alive, waited, log.read_text())
        alive, _ = _wait_gone(lambda: _pids_alive([watchdog]), 5)
        assert not alive, 'the watchdog did not exit'
        assert 'launcher pid %d is gone' % proc.pid in log.read_text()
    finally:
        _cleanup(proc, pids, watchdog)


@pytest.mark.slow
def test_children_die_with_launcher_even_without_watchdog(tmp_path):
    """Second line of defence: PR_SET_PDEATHSIG kills the direct children by itself."""
    proc, log, pids, watchdog = _start_launcher(tmp_path,
                                                [PY, '-c', 'import time; time.sleep(120)'])
    try:
        assert len(pids) == 4 and watchdog, log.read_text()
        with open('/proc/%d/cmdline' % watchdog, 'rb') as fh:
            state_dir = fh.read().split(b'\0')[-2].decode()   # the watchdog would remove it
        assert os.path.basename(state_dir).startswith('gluon_ssd_launch_'), state_dir
        os.kill(watchdog, signal.SIGKILL)
        _wait_gone(lambda: _pids_alive([watchdog]), 5)
        proc.kill()
        proc.wait(timeout=10)
        alive, waited = _wait_gone(lambda: _pids_alive(pids), 10)
        assert not alive and waited < 5, (alive, waited, log.read_text())
        shutil.rmtree(state_dir, ignore_errors=True)
    finally:
        _cleanup(proc, pids, watchdog)


# ---------------------------------------------------------------- port in use (case 4)

@pytest.fixture
def busy_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        sock.listen(1)
        yield sock.getsockname()[1]


def test_scheduler_port_in_use_is_one_line(busy_port, capsys, monkeypatch):
    """Before: the scheduler died with ps-lite's 'bind failed' traceback, exit 1."""
    monkeypatch.delenv('DMLC_PS_ROOT_PORT', raising=False)
    code = launch.main(['-n', '1', '-s', '1', '--port', str(busy_port), '--', 'true'])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ''      # nothing was started
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith('python -m gluon_ssd.launch: error: ')
    assert 'port %d' % busy_port in lines[0] and '--port' in lines[0] and 'in use' in lines[0]

    monkeypatch.setenv('DMLC_PS_ROOT_PORT', str(busy_port))
    code = launch.main(['-n', '1', '-s', '1', '--', 'true'])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1
    assert 'port %d' % busy_port in err and '$DMLC_PS_ROOT_PORT' in err


@pytest.mark.slow
def test_scheduler_port_in_use_command_line(busy_port):
    res = subprocess.run([PY, '-m', 'gluon_ssd.launch', '-n', '2', '-s', '1', '--port',
                          str(busy_port), '--', PY, '-c', 'pass'], cwd=str(REPO),
                         env=_child_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert 'Traceback' not in res.stdout + res.stderr and 'started' not in res.stdout
    assert len(res.stderr.splitlines()) == 1 and str(busy_port) in res.stderr, res.stderr
