"""The package's imports go downwards only, and inference never imports the training engine."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'gluon_ssd'

#: Layer of each module (higher may import lower or equal, never higher). Sub-packages count as
#: their modules; the package ``__init__`` files only re-export.
LAYERS = [
    ('errors',),
    ('anchors', 'coder', 'target', 'loss', 'precision'),
    ('model', 'data', 'metrics', 'viz', 'devices', 'distributed'),
    ('engine', 'evaluate', 'rundir', 'checkpoint', 'deploy'),
    ('config',),
    ('cli', 'predict', 'eval', 'export', 'quantize', 'ablation', 'launch'),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _top(module):
    """``gluon_ssd.model.zoo`` -> ``model``; non-package imports -> None."""
    parts = module.split('.')
    return parts[1] if parts[0] == 'gluon_ssd' and len(parts) > 1 else None


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == 'gluon_ssd':
                for alias in node.names:
                    yield f'gluon_ssd.{alias.name}'
            else:
                yield node.module


def _modules():
    for path in sorted(PACKAGE.rglob('*.py')):
        rel = path.relative_to(PACKAGE).with_suffix('')
        if rel.name == '__init__':
            continue
        yield '.'.join(('gluon_ssd',) + rel.parts), path


def test_every_module_has_a_layer():
    tops = {_top(name) for name, _ in _modules()}
    assert tops <= set(RANK), sorted(tops - set(RANK))


@pytest.mark.parametrize('name, path', list(_modules()), ids=lambda v: str(v))
def test_imports_go_downwards_only(name, path):
    own = RANK[_top(name)]
    upward = sorted({imp for imp in _imports(path)
                     if _top(imp) in RANK and RANK[_top(imp)] > own})
    assert not upward, f'{name} (layer {own}) imports {upward}'


def test_inference_does_not_import_the_training_engine():
    code = ('import sys, gluon_ssd.predict, gluon_ssd.eval, gluon_ssd.export, gluon_ssd.model.io, '
            'gluon_ssd.model.runtime\n'
            'print(sorted(m for m in sys.modules if m in ("gluon_ssd.engine", "gluon_ssd.config")))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120,
                         cwd=str(PACKAGE.parent))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '[]'
