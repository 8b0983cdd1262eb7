"""Build the tutorial notebooks from their sources in ``notebooks/src/``.

The sources are plain Python files in the "percent" cell format, easy to review and diff::

    # %% [markdown]
    # # A title
    # Some text.

    # %%
    print("a code cell")

Running this script rewrites every ``notebooks/NN_*.ipynb`` from ``notebooks/src/NN_*.py`` with no
outputs (the committed notebooks stay small). ``--check`` only reports notebooks that are out of
date (exit status 1), which the test suite uses.

    python notebooks/build_notebooks.py            # rebuild all
    python notebooks/build_notebooks.py --check    # verify they are in sync
"""
import argparse
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
SRC = HERE / 'src'
KERNELSPEC = {'display_name': 'Python 3 (ipykernel)', 'language': 'python', 'name': 'python3'}


def parse_cells(text):
    """Split a percent-format source into ``[(kind, source)]`` with kind 'code' or 'markdown'."""
    cells, kind, lines = [], None, []

    def flush():
        if kind is None:
            return
        body = '\n'.join(lines).strip('\n')
        if kind == 'markdown':
            body = '\n'.join(ln[2:] if ln.startswith('# ') else ln.lstrip('#')
                             for ln in body.split('\n'))
        if body.strip():
            cells.append((kind, body))

    for line in text.split('\n'):
        if line.startswith('# %%'):
            flush()
            kind, lines = ('markdown' if '[markdown]' in line else 'code'), []
        elif kind is not None:
            lines.append(line)
    flush()
    return cells


def build(src_path):
    """The notebook (``nbformat`` v4 node, no outputs) for one source file."""
    nb = nbformat.v4.new_notebook()
    nb.metadata['kernelspec'] = dict(KERNELSPEC)
    nb.metadata['language_info'] = {'name': 'python'}
    for i, (kind, body) in enumerate(parse_cells(src_path.read_text())):
        make = nbformat.v4.new_code_cell if kind == 'code' else nbformat.v4.new_markdown_cell
        cell = make(body)
        cell['id'] = f'{src_path.stem[:2]}-{i:03d}'   # stable ids: rebuilds give identical files
        nb.cells.append(cell)
    return nb


def render(src_path):
    return nbformat.writes(build(src_path)) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--check', action='store_true', help='only check that notebooks are in sync')
    args = parser.parse_args(argv)
    stale = []
    for src in sorted(SRC.glob('[0-9][0-9]_*.py')):
        out = HERE / (src.stem + '.ipynb')
        text = render(src)
        if args.check:
            if not out.is_file() or out.read_text() != text:
                stale.append(out.name)
        else:
            out.write_text(text)
            print(f'wrote {out.relative_to(HERE.parent)}')
    if stale:
        print('out of date (run python notebooks/build_notebooks.py):', ', '.join(stale))
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
