"""The ablation runner (``python -m gluon_ssd.ablation``): tables, plot and a tiny real grid."""
import csv
import json

import pytest

from gluon_ssd import ablation

SETTINGS = [(n, i, d) for n in ablation.NORMS for i in ablation.INITS for d in ablation.DECODERS]


def _rows(seeds=(0, 1, 2)):
    """Made-up results: sample -1.5 points, uniform -1, argmax -0.6, plus a per-seed offset."""
    rows = []
    for seed in seeds:
        for norm, init, dec in SETTINGS:
            m = 0.30 + 0.01 * seed - (0.015 if norm == 'sample' else 0) \
                - (0.01 if init == 'uniform' else 0) - (0.006 if dec == 'argmax' else 0)
            rows.append({'norm': norm, 'init': init, 'decoder': dec, 'seed': seed, 'map': m,
                         'train_seconds': 1.0})
    return rows


def test_summarize_deltas_and_claims():
    settings, effects = ablation.summarize(_rows())
    assert (settings[0]['norm'], settings[0]['init'], settings[0]['decoder']) == ablation.DEFAULT
    assert len(settings) == 8
    by_key = {(s['norm'], s['init'], s['decoder']): s for s in settings}
    s = by_key[('sample', 'xavier', 'per_class')]
    assert s['n'] == 3 and s['mean'] == pytest.approx(0.295)
    assert s['std'] == pytest.approx(0.01)            # the seed offset
    assert s['delta'] == pytest.approx(-0.015)
    assert s['paired_mean'] == pytest.approx(-0.015)
    assert s['paired_std'] == pytest.approx(0, abs=1e-9)
    assert effects['batch-wise loss normalisation']['mean'] == pytest.approx(1.5)
    assert effects['Xavier initialisation']['mean'] == pytest.approx(1.0)
    assert effects['per-class decoding']['mean'] == pytest.approx(0.6)
    assert all(e['direction_holds'] and e['within_claim'] for e in effects.values())


def test_write_outputs(tmp_path):
    meta = {'dataset': 'synthetic', 'network': 'tiny_ssd', 'epochs': 1, 'seeds': '0,1',
            'trainings': 8, 'wall_minutes': 1.0}
    ablation.write_outputs(_rows((0, 1)), str(tmp_path), meta)
    with open(tmp_path / 'results.csv') as f:
        assert len(list(csv.DictReader(f))) == 16
    with open(tmp_path / 'summary.csv') as f:
        assert len(list(csv.DictReader(f))) == 8
    md = (tmp_path / 'summary.md').read_text()
    assert 'batch (default) | xavier | per_class' in md and "tutorial's claims" in md
    assert (tmp_path / 'ablation.png').stat().st_size > 5000
    assert set(json.loads((tmp_path / 'summary.json').read_text())) == {'meta', 'settings',
                                                                         'effects'}


def test_bad_flags(tmp_path, capsys):
    assert ablation.main(['--norms', 'batch,nope', '--out-dir', str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().endswith("--norms: expected a comma-separated subset "
                                                    "of batch, sample, got 'batch,nope'")
    assert ablation.main(['--dataset', 'voc']) == 2
    assert '--dataset-root' in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_grid_end_to_end(tmp_path):
    out = tmp_path / 'abl'
    argv = ['--out-dir', str(out), '--epochs', '1', '--seeds', '0', '--num-train', '4',
            '--num-val', '2', '--batch-size', '2', '--dataset-root', str(tmp_path / 'synth')]
    assert ablation.main(argv) == 0
    with open(out / 'results.csv') as f:
        rows = list(csv.DictReader(f))
    assert sorted((r['norm'], r['init'], r['decoder']) for r in rows) == sorted(SETTINGS)
    assert all(0.0 <= float(r['map']) <= 1.0 for r in rows)
    with open(out / 'summary.csv') as f:
        assert len(list(csv.DictReader(f))) == 8
    assert (out / 'summary.md').is_file() and (out / 'ablation.png').is_file()
    for norm in ablation.NORMS:
        for init in ablation.INITS:
            assert (out / 'runs' / f'{norm}_{init}_seed0' / 'ablation_result.json').is_file()
    # a second call reuses the finished runs instead of training again
    first = (out / 'runs' / 'batch_xavier_seed0' / 'last.params').stat().st_mtime
    assert ablation.main(argv) == 0
    assert (out / 'runs' / 'batch_xavier_seed0' / 'last.params').stat().st_mtime == first
