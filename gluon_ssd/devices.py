"""Devices of a run: ``--gpus`` text to MXNet contexts, checked against the installed MXNet."""
import mxnet as mx

from gluon_ssd.errors import UserError

__all__ = ['parse_gpus', 'make_contexts']


def parse_gpus(text, flag='--gpus'):
    """``'0,1'`` -> ``[0, 1]``; empty or ``None`` means CPU only. Raises :class:`UserError`."""
    text = (text or '').strip()
    if not text:
        return []
    try:
        ids = [int(t) for t in text.split(',') if t.strip()]
    except ValueError:
        raise UserError(f"{flag}: expected comma-separated GPU ids such as 0,1, got {text!r}") \
            from None
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise UserError(f"{flag}: GPU ids must be distinct and non-negative, got {text!r}")
    return ids


def make_contexts(gpus='', cpu_contexts=1, flag='--gpus'):
    """List of ``mx.Context``: the GPUs named by ``gpus`` (text or list of ids), else
    ``cpu_contexts`` CPU contexts. Raises :class:`UserError` naming ``flag`` when this MXNet
    build or machine has fewer GPUs than asked for."""
    ids = parse_gpus(gpus, flag) if isinstance(gpus, (str, type(None))) else list(gpus)
    if not ids:
        return [mx.cpu(i) for i in range(cpu_contexts)]
    try:
        available = mx.context.num_gpus()
    except mx.base.MXNetError:
        available = 0
    if max(ids) >= available:
        where = ('this MXNet build has no GPU support (install mxnet-cu112 for CUDA 11.2)'
                 if available == 0 else f'this machine has {available} GPU(s)')
        raise UserError(f"{flag} {','.join(map(str, ids))}: {where}; leave {flag} empty to run "
                        "on the CPU")
    return [mx.gpu(i) for i in ids]
