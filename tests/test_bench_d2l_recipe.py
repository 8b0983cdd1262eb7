"""bench.d2l_recipe: d2l's TinySSD recipe end to end on a few synthetic images, and its flag
errors."""
import json
import math

import pytest

from bench import d2l_recipe


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private synthetic-data cache (never the user's ~/.cache)."""
    monkeypatch.setenv('GLUON_SSD_HOME', str(tmp_path / 'home'))
    return tmp_path / 'home'


def test_recipe_runs_on_synthetic_and_reports_map_and_time(home):
    result = d2l_recipe.run('synthetic', str(home / 'synthetic'), None, None, epochs=2, seed=0,
                            num_train=16, num_val=8, val_interval=1, log=None)
    assert (result['train_images'], result['val_images']) == (16, 8)
    assert result['recipe'] == 'd2l' and result['epochs'] == 2
    assert result['map_epochs'] == [1, 2] and len(result['maps']) == 2
    final = result['final_map']
    assert final is not None and math.isfinite(final) and 0 <= final <= 1
    assert final == result['maps'][-1]
    assert result['cpu_s'] > 0 and result['wall_s'] > 0
    json.dumps(result)   # JSON-ready


def test_last_epoch_is_the_only_evaluation_by_default(home):
    result = d2l_recipe.run('synthetic', str(home / 'synthetic'), None, None, epochs=1, seed=0,
                            num_train=16, num_val=8, log=None)
    assert result['map_epochs'] == [1] and len(result['maps']) == 1


def test_resize_item_normalises_boxes_for_multibox_target():
    import mxnet as mx
    import numpy as np
    image = mx.nd.zeros((100, 200, 3), dtype='uint8')
    label = np.array([[20, 10, 120, 60, 0, 1]], np.float32)
    data, target, gt, hw = d2l_recipe.resize_item(image, label)
    assert data.shape == (3, 256, 256) and data.dtype == np.float32
    np.testing.assert_allclose(target, [[0, 0.1, 0.1, 0.6, 0.6]])
    np.testing.assert_array_equal(gt, label)
    np.testing.assert_array_equal(hw, [100, 200])
    batch = d2l_recipe.batchify([(data, target, gt, hw),
                                 d2l_recipe.resize_item(image, np.zeros((0, 6), np.float32))])
    assert batch[1].shape == (2, 1, 5) and batch[1][1].asnumpy().tolist() == [[-1] * 5]


@pytest.mark.parametrize('argv, flag', [
    (['--dataset', 'voc'], '--dataset-root'),
    (['--dataset', 'coco', '--dataset-root', '.'], '--dataset'),
    (['--dataset', 'synthetic', '--epochs', '0'], '--epochs'),
    (['--dataset', 'synthetic', '-j', '-1'], '-j/--num-workers'),
])
def test_bad_flags_exit_2_with_one_line(argv, flag, capsys):
    assert d2l_recipe.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0]
