"""The tutorial notebooks execute top to bottom (quick mode) and produce their key outputs.

Each notebook runs with nbclient in a fresh kernel started from *this* interpreter (a private
kernelspec pointing at ``sys.executable``, so a ``python3`` kernel registered elsewhere on the
machine is never picked up), in a temporary working copy, with ``GLUON_SSD_QUICK=1``. The notebook
leaves its measured numbers in ``nbNN_results.json`` under ``GLUON_SSD_NB_RESULTS``; the test checks
a few of them and that the expected figures were drawn.

The committed notebooks must be in sync with their sources in ``notebooks/src`` (fast test) and
carry no outputs.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / 'notebooks'
TIMEOUT = 600   # per cell, seconds

nbformat = pytest.importorskip('nbformat')


def _kernel_manager(kernel_dir):
    """A KernelManager whose 'python3' kernel is this interpreter."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    spec_dir = kernel_dir / 'kernels' / 'python3'
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / 'kernel.json').write_text(json.dumps({
        'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
        'display_name': 'gluon-ssd test kernel', 'language': 'python'}))
    ksm = KernelSpecManager(kernel_dirs=[str(kernel_dir / 'kernels')])
    return KernelManager(kernel_name='python3', kernel_spec_manager=ksm)


def execute_notebook(name, tmp_path, monkeypatch, quick=True):
    """Execute ``notebooks/<name>`` in a copy under ``tmp_path``; return (notebook, results)."""
    from nbclient import NotebookClient
    work = tmp_path / 'work'
    work.mkdir()
    shutil.copy(NOTEBOOKS / name, work / name)
    results_dir = tmp_path / 'results'
    results_dir.mkdir()
    monkeypatch.setenv('GLUON_SSD_QUICK', '1' if quick else '0')
    monkeypatch.setenv('GLUON_SSD_NB_RESULTS', str(results_dir))
    monkeypatch.setenv('MPLBACKEND', 'module://matplotlib_inline.backend_inline')
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
    monkeypatch.setenv('OMP_NUM_THREADS', os.environ.get('OMP_NUM_THREADS', '2'))
    nb = nbformat.read(str(work / name), as_version=4)
    client = NotebookClient(nb, timeout=TIMEOUT, kernel_name='python3',
                            km=_kernel_manager(tmp_path / 'kernelspec'),
                            resources={'metadata': {'path': str(work)}})
    tic = time.time()
    client.execute()
    print(f'{name}: executed in {time.time() - tic:.1f} s')
    nbformat.write(nb, str(work / name))   # kept in tmp_path for inspection on failure
    files = sorted(results_dir.glob('*.json'))
    assert len(files) == 1, f'{name} did not write its results json: {files}'
    return nb, json.loads(files[0].read_text())


def count_images(nb):
    return sum(1 for cell in nb.cells if cell.cell_type == 'code'
               for out in cell.get('outputs', []) if 'image/png' in out.get('data', {}))


def all_text(nb):
    parts = []
    for cell in nb.cells:
        for out in cell.get('outputs', []):
            parts.append(out.get('text', ''))
            parts.extend(str(v) for k, v in out.get('data', {}).items() if k.startswith('text/'))
    return '\n'.join(parts)


# ---------------------------------------------------------------------------------- fast checks
def test_notebooks_in_sync_with_sources():
    out = subprocess.run([sys.executable, str(NOTEBOOKS / 'build_notebooks.py'), '--check'],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_committed_notebooks_have_no_outputs():
    names = sorted(NOTEBOOKS.glob('[0-9][0-9]_*.ipynb'))
    assert len(names) == 6, names
    for path in names:
        nb = nbformat.read(str(path), as_version=4)
        for cell in nb.cells:
            if cell.cell_type == 'code':
                assert not cell.outputs and cell.execution_count is None, path.name


# ---------------------------------------------------------------------------- executed notebooks
@pytest.mark.slow
def test_01_tiny_ssd(tmp_path, monkeypatch):
    nb, res = execute_notebook('01_tiny_ssd_from_scratch.ipynb', tmp_path, monkeypatch)
    assert res['concat_shape'] == [2, 25300]
    assert res['base_shape'] == [2, 64, 32, 32]
    assert res['num_anchors'] == 5444
    assert 0 <= res['class_err'] <= 1 and res['bbox_mae'] >= 0
    f = res['focal_p09']
    assert f['0'] > f['1'] > f['5'] > 0
    assert count_images(nb) >= 6
    assert 'this run' in all_text(nb)


@pytest.mark.slow
def test_04_ssd300_anatomy(tmp_path, monkeypatch):
    nb, res = execute_notebook('04_ssd300_anatomy.ipynb', tmp_path, monkeypatch)
    assert res['map_sizes'] == [38, 19, 10, 5, 3, 1]
    assert res['boxes_per_location'] == [4, 6, 6, 6, 4, 4]
    assert res['num_anchors'] == 8732
    assert res['channels'] == [512, 1024, 512, 256, 256, 256]
    assert abs(res['l2_norm_min'] - 20) < 0.05 and abs(res['l2_norm_max'] - 20) < 0.05
    assert res['num_positives'] >= res['objects'] >= 4
    assert count_images(nb) >= 5


@pytest.mark.slow
def test_03_loss_step_by_step(tmp_path, monkeypatch):
    nb, res = execute_notebook('03_loss_step_by_step.ipynb', tmp_path, monkeypatch)
    assert res['every_object_matched'] and res['positives'] >= res['objects'] >= 3
    assert res['decode_error'] < 1e-2
    assert res['kept_negatives'] == min(3 * res['num_pos'], res['num_negatives'])
    assert res['kept_are_hardest']
    assert abs(res['loss'] - res['loss_by_hand']) < 1e-3 * max(1.0, res['loss'])
    assert res['nms_rows'] <= 200 and res['after_nms'] <= res['candidates']
    assert count_images(nb) >= 3


@pytest.mark.slow
def test_02_training_tips(tmp_path, monkeypatch):
    monkeypatch.delenv('GLUON_SSD_ABLATION_DIR', raising=False)
    nb, res = execute_notebook('02_ssd_training_tips.ipynb', tmp_path, monkeypatch)
    n1, n2 = res['positives']
    assert 1 <= n1 < n2
    # batch-wise: both images share one divisor; sample-wise: each its own
    assert res['loss_sample'][0] > res['loss_batch'][0]
    assert abs(res['toy_cat_ap']['per_class'] - 1) < 1e-6 and res['toy_cat_ap']['argmax'] == 0
    (effects,) = res['ablation'].values()
    assert set(effects) == {'batch-wise loss normalisation', 'Xavier initialisation',
                            'per-class decoding'}
    abl = tmp_path / 'work' / res['ablation_dirs'][0]
    for name in ('results.csv', 'summary.csv', 'summary.md', 'ablation.png'):
        assert (abl / name).is_file(), name
    assert count_images(nb) >= 4


@pytest.mark.slow
def test_05_your_own_data(tmp_path, monkeypatch):
    nb, res = execute_notebook('05_your_own_data.ipynb', tmp_path, monkeypatch)
    run = tmp_path / 'work' / 'runs' / 'nb05_quick'
    for name in ('config.json', 'metrics.jsonl', 'best.params', 'curves.png', 'detections.png',
                 'eval.json', 'export/detector-symbol.json', 'export/detector-0000.params'):
        assert (run / name).is_file(), name
    assert json.loads((run / 'model.json').read_text())['model'] == 'scratch_ssd_192'
    assert 0 <= res['map']['voc07'] <= 1
    # the headline is the final epoch's: eval.json evaluated last.params
    evaluated = json.loads((run / 'eval.json').read_text())['weights']
    assert evaluated.endswith('nb05_quick/last.params')
    # ... and the same weights are exported
    exported = json.loads((run / 'export' / 'detector-meta.json').read_text())['source_params']
    assert exported.endswith('nb05_quick/last.params')
    assert res['predicted_images'] == 3
    assert res['export_same_ids'] and res['export_max_box_diff'] < 1e-3
    assert count_images(nb) >= 4


@pytest.mark.slow
def test_06_finetune_pretrained(tmp_path, monkeypatch):
    monkeypatch.delenv('GLUON_SSD_NB06_PRETRAINED', raising=False)
    nb, res = execute_notebook('06_finetune_pretrained.ipynb', tmp_path, monkeypatch)
    assert res['mode'] == 'self-trained'          # quick mode never downloads
    runs = tmp_path / 'work' / 'runs' / 'nb06_quick'
    assert res['pretrained'].endswith('best.params')
    assert (runs / 'pretrain' / 'model.json').is_file()
    for name in ('config.json', 'metrics.jsonl', 'best.params', 'model.json', 'curves.png',
                 'detections.png', 'eval.json'):
        assert (runs / 'finetune' / name).is_file(), name
    assert (runs / 'scratch' / 'metrics.jsonl').is_file()
    # the fine-tuned detector predicts the dataset's classes, not the stand-in's shapes
    ft_meta = json.loads((runs / 'finetune' / 'model.json').read_text())
    assert ft_meta['classes'] == res['classes'] == res['finetune_meta']['classes']
    assert ft_meta['model'] == json.loads((runs / 'pretrain' / 'model.json').read_text())['model']
    assert res['reset_background_kept'] is True     # fine-tuning keeps the background rows
    assert res['epochs'] == 1
    assert 0 <= res['finetune_map'] <= 1 and 0 <= res['scratch_map'] <= 1
    assert res['eval_images'] == 4 and 0 <= res['eval_map']['voc07'] <= 1
    assert res['predicted_images'] == 3 and res['prediction_files'] == 6
    assert res['api_matches_cli']
    assert count_images(nb) >= 5
    assert "MODE = 'self-trained'" in all_text(nb)
