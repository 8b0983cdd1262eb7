"""Execute the tutorial notebooks top to bottom and save the executed copies (with outputs).

    python notebooks/run_notebooks.py                  # all five, full mode, into runs/notebooks/
    python notebooks/run_notebooks.py --quick 01 03    # quick mode (GLUON_SSD_QUICK=1), two of them
    python notebooks/run_notebooks.py --out-dir /tmp/nb 05

Each notebook runs in a fresh kernel of *this* interpreter (a private kernelspec, so it works in
the project's virtualenv without registering a kernel), with the working directory set to
``--out-dir`` (training runs go to ``<out-dir>/runs/``). Prints the wall time of each notebook.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def kernel_manager(spec_root):
    """A KernelManager whose 'python3' kernel is ``sys.executable``."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    spec = Path(spec_root) / 'kernels' / 'python3'
    spec.mkdir(parents=True, exist_ok=True)
    (spec / 'kernel.json').write_text(json.dumps({
        'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
        'display_name': 'gluon-ssd', 'language': 'python'}))
    return KernelManager(kernel_name='python3',
                         kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]))


def execute(path, workdir, quick=False, timeout=7200):
    """Execute notebook ``path`` with cwd ``workdir``; returns (executed notebook, seconds)."""
    import nbformat
    from nbclient import NotebookClient
    os.environ['GLUON_SSD_QUICK'] = '1' if quick else '0'
    repo = str(HERE.parent)
    paths = [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]
    if repo not in paths:
        os.environ['PYTHONPATH'] = os.pathsep.join([repo] + paths)
    nb = nbformat.read(str(path), as_version=4)
    with tempfile.TemporaryDirectory() as spec_root:
        client = NotebookClient(nb, timeout=timeout, kernel_name='python3',
                                km=kernel_manager(spec_root),
                                resources={'metadata': {'path': str(workdir)}})
        tic = time.time()
        client.execute()
    return nb, time.time() - tic


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('names', nargs='*', help='notebook numbers or names (default: all)')
    p.add_argument('--quick', action='store_true', help='GLUON_SSD_QUICK=1: tiny training runs')
    p.add_argument('--out-dir', default=str(HERE.parent / 'runs' / 'notebooks'),
                   help='where executed notebooks (and their runs/) go')
    args = p.parse_args(argv)
    import nbformat
    books = sorted(HERE.glob('[0-9][0-9]_*.ipynb'))
    if args.names:
        books = [b for b in books if any(b.name.startswith(n) or b.stem == n
                                         for n in args.names)]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = 0.0
    for book in books:
        nb, seconds = execute(book, out, quick=args.quick)
        nbformat.write(nb, str(out / book.name))
        total += seconds
        print(f'{book.name}: {seconds:.0f} s ({"quick" if args.quick else "full"} mode)',
              flush=True)
    print(f'total: {total:.0f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
