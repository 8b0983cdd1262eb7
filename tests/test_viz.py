"""gluon_ssd.viz: PNGs are written with the expected size and boxes really drawn."""
import json

import matplotlib
import matplotlib.backends.backend_agg
import mxnet as mx
import numpy as np
import pytest
from matplotlib.image import imread

from gluon_ssd.viz import (class_color, draw_detections, plot_curves, save_detections,
                           save_detections_grid)

NAMES = ['cat', 'dog', 'bird']


def gray_image(h=120, w=160):
    return np.full((h, w, 3), 128, dtype=np.uint8)


def read_png(path):
    """PNG -> (H, W, 3|4) floats 0-1."""
    assert path.is_file() and path.stat().st_size > 0
    with open(path, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    return imread(str(path))


def test_agg_canvas_only_never_pyplot():
    import inspect

    import gluon_ssd.viz as viz
    src = inspect.getsource(viz)
    assert 'pyplot' not in src.replace('no pyplot', '') and 'FigureCanvasAgg' in src
    ax = draw_detections(gray_image(), [[1, 1, 9, 9]], [1.0], [0], NAMES)
    assert isinstance(ax.figure.canvas, matplotlib.backends.backend_agg.FigureCanvasAgg)


def test_draw_detections_changes_pixels_on_the_box_edge_only(tmp_path):
    img = gray_image()
    box = np.array([[40., 30., 120., 90.]])
    path = save_detections(img, box, [0.9], [1], NAMES, tmp_path / 'one.png')
    out = read_png(path)
    assert out.shape[:2] == (120, 160)
    drawn = np.abs(out[..., :3] - 128 / 255).max(axis=-1) > 0.05
    assert drawn[60, 38:43].any() and drawn[60, 118:123].any()   # left / right edges
    assert drawn[88:93, 80].any()                                  # bottom edge
    assert not drawn[55:65, 70:90].any()                           # inside stays the image
    assert not drawn[100:, :30].any()                              # far away untouched
    # the edge colour is the class colour
    r, g, b = class_color(1)
    edge = out[60, 38:43, :3]
    assert np.abs(edge - [r, g, b]).sum(axis=-1).min() < 0.15


def test_threshold_padding_and_ground_truth(tmp_path):
    img = gray_image()
    plain = read_png(save_detections(img, np.zeros((0, 4)), [], [], NAMES, tmp_path / 'a.png'))
    np.testing.assert_allclose(plain[..., :3], 128 / 255, atol=0.01)    # nothing to draw
    low = read_png(save_detections(img, [[10, 10, 50, 50], [60, 60, 100, 100]], [0.1, 0.9],
                                   [0, -1], NAMES, tmp_path / 'b.png', thresh=0.3))
    np.testing.assert_allclose(low[..., :3], 128 / 255, atol=0.01)      # below thresh / padding
    gt = read_png(save_detections(img, np.zeros((0, 4)), [], [], NAMES, tmp_path / 'c.png',
                                  gt_bboxes=[[20, 20, 140, 100], [0, 0, 0, 0]],
                                  gt_labels=[2, -1]))
    drawn = np.abs(gt[..., :3] - 128 / 255).max(axis=-1) > 0.05
    assert drawn[60, 18:23].any()                      # gt drawn (dashed, so check a span)
    top = drawn[17:24, 25:135].sum(axis=1).max()       # best row along the top edge
    assert 0.3 * 110 < top < 0.95 * 110                # dashed: drawn, but with gaps


def test_draw_detections_accepts_ndarrays_and_returns_axes():
    ax = draw_detections(mx.nd.array(gray_image(), dtype='uint8'),
                         mx.nd.array([[[5, 5, 50, 50]]]), mx.nd.array([[[0.8]]]),
                         mx.nd.array([[[2]]]), NAMES)
    assert ax.figure.get_size_inches().tolist() == [1.6, 1.2]
    assert len(ax.patches) == 1 and 'bird 0.80' in ax.texts[0].get_text()


def test_grid_png_size_and_cells(tmp_path):
    rng = np.random.RandomState(0)
    images = [rng.randint(0, 255, (100, 120, 3)).astype(np.uint8) for _ in range(5)]
    dets = [(np.array([[10, 10, 60, 70]]), np.array([0.9]), np.array([i % 3])) for i in range(5)]
    gts = [np.array([[12, 8, 62, 72, i % 3, 0]]) for i in range(5)]   # dataset label rows
    path = save_detections_grid(images, dets, gts, NAMES, tmp_path / 'sub' / 'grid.png',
                                ncols=3)
    out = read_png(path)
    assert out.shape[:2] == (200, 360)                          # 2 rows x 3 columns
    # the empty sixth cell is blank background, the first cell shows the image
    assert out[150, 300:, :3].std() < 0.01 and out[50, 100:110, :3].std() > 0.1


def test_bad_inputs_raise(tmp_path):
    img = gray_image()
    with pytest.raises(ValueError, match=r'HWC RGB with shape \(H, W, 3\)'):
        draw_detections(img.transpose(2, 0, 1), [[0, 0, 1, 1]], [1], [0], NAMES)
    with pytest.raises(ValueError, match='uint8'):
        draw_detections(img.astype(np.float32), [[0, 0, 1, 1]], [1], [0], NAMES)
    with pytest.raises(ValueError, match=r'bboxes must have shape \(N, 4\)'):
        draw_detections(img, [[0, 0, 1]], [1], [0], NAMES)
    with pytest.raises(ValueError, match='scores has 2 entries but there are 1 boxes'):
        draw_detections(img, [[0, 0, 1, 1]], [1, 1], [0], NAMES)
    with pytest.raises(ValueError, match='scores contains NaN'):
        draw_detections(img, [[0, 0, 1, 1]], [np.nan], [0], NAMES)
    with pytest.raises(ValueError, match='gt_labels is required'):
        draw_detections(img, [[0, 0, 1, 1]], [1], [0], NAMES, gt_bboxes=[[0, 0, 1, 1]])
    with pytest.raises(ValueError, match='2 images but 1 detection entries'):
        save_detections_grid([img, img], [([], [], [])], None, NAMES, tmp_path / 'g.png')
    with pytest.raises(ValueError, match='images is empty'):
        save_detections_grid([], [], None, NAMES, tmp_path / 'g.png')


def test_plot_curves_writes_png(tmp_path):
    records = [{'epoch': e, 'loss': 5.0 / (e + 1), 'cls_loss': 3.0 / (e + 1),
                'box_loss': 2.0 / (e + 1), 'lr': 0.001, 'time': 12.5} for e in range(6)]
    for e in (1, 3, 5):
        records[e]['map'] = 0.1 * e                 # evaluated every other epoch
    records[0]['map'] = None                        # as JSON null
    path = tmp_path / 'metrics.jsonl'
    path.write_text('\n'.join(json.dumps(r) for r in records))
    loaded = [json.loads(line) for line in path.read_text().splitlines()]
    out = read_png(plot_curves(loaded, tmp_path / 'curves.png', title='tiny_ssd'))
    assert out.shape[:2] == (450, 1200)
    # both panels contain coloured plot lines (not only black/white axes)
    sat = out[..., :3].max(-1) - out[..., :3].min(-1)
    assert (sat[:, :600] > 0.3).sum() > 100 and (sat[:, 600:] > 0.3).sum() > 50


def test_plot_curves_bad_records(tmp_path):
    with pytest.raises(ValueError, match='records is empty'):
        plot_curves([], tmp_path / 'c.png')
    with pytest.raises(ValueError, match=r"records\[1\] must be a dict with a numeric 'epoch'"):
        plot_curves([{'epoch': 0, 'loss': 1}, {'loss': 2}], tmp_path / 'c.png')
    with pytest.raises(ValueError, match='no loss'):
        plot_curves([{'epoch': 0, 'lr': 0.1}], tmp_path / 'c.png')
