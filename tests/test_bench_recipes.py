"""bench/recipes.py: trains each (recipe, dataset, seed) once, resumes a table, summarises."""
import json

from bench import recipes


def test_two_seeds_train_once_and_make_one_table_row(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('GLUON_SSD_HOME', str(tmp_path / 'home'))   # the synthetic set's cache
    out = tmp_path / 'table'
    argv = ['--recipes', 'tiny_ssd_128', '--datasets', 'synthetic', '--seeds', '0,1', '--jobs',
            '2', '--out-dir', str(out), '--', '--epochs', '1', '--num-train', '16', '--num-val',
            '8', '--batch-size', '8', '--num-samples-viz', '1']
    assert recipes.main(argv) == 0
    results = [json.loads(line) for line in (out / 'results.jsonl').read_text().splitlines()]
    assert sorted(r['seed'] for r in results) == [0, 1]
    for r in results:
        assert (r['recipe'], r['dataset'], r['epochs']) == ('tiny_ssd_128', 'synthetic', 1)
        assert 0 <= r['final_map'] <= r['best_map'] <= 1 and r['cpu_s'] > 0
        assert '--network tiny_ssd --data-shape 128' in r['command']
    rows = [line for line in (out / 'table.md').read_text().splitlines()
            if line.startswith('| tiny_ssd_128')]
    mean = sum(r['final_map'] for r in results) / 2
    assert len(rows) == 1 and f'{mean:.3f} ± ' in rows[0] and '| 0, 1 |' in rows[0]
    capsys.readouterr()
    # a second call finds both runs done: nothing is trained again
    assert recipes.main(argv) == 0
    assert len((out / 'results.jsonl').read_text().splitlines()) == 2
    assert '"seed"' not in capsys.readouterr().out.split('| recipe')[0]


def test_unknown_recipe_is_one_line(capsys):
    try:
        recipes.main(['--recipes', 'nope'])
    except SystemExit as exc:
        assert exc.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert '--recipes: unknown nope' in err[-1]
