"""The one user-error type of gluon-ssd and the one way a command-line tool reports it.

A :class:`UserError` is a problem the user can fix (a bad flag, a missing or malformed file);
its message is one line naming the flag or file, and it carries the tool's exit code. Every CLI
catches it at the top with :func:`fail`, so a user error never ends in a traceback.
"""
import sys
import warnings

__all__ = ['UserError', 'EXIT_USAGE', 'EXIT_DIVERGED', 'fail', 'one_line_warnings']

EXIT_USAGE = 2       # bad flags, files or data: nothing was trained or written
EXIT_DIVERGED = 3    # the loss became NaN/inf: the last good checkpoint is kept


class UserError(Exception):
    """A problem the user can fix; ``str(exc)`` is one line naming the flag or file.

    ``exit_code`` is what a command-line tool returns for it (:data:`EXIT_USAGE` unless given).
    Subclasses name a family (e.g. ``gluon_ssd.data.DatasetError``) without a second type to catch.
    """
    exit_code = EXIT_USAGE

    def __init__(self, message, exit_code=None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


def fail(prog, exc):
    """Write ``prog: error: <message>`` (one line) to stderr; return the error's exit code."""
    message = ' '.join(str(exc).split('\n')).strip() or type(exc).__name__
    sys.stderr.write(f"{prog}: error: {message}\n")
    return getattr(exc, 'exit_code', EXIT_USAGE)


def one_line_warnings(prog):
    """Show gluon-ssd's own warnings (categories defined in the package, e.g. ``DatasetWarning``,
    ``AmpWarning``) as ``prog: warning: <message>``, one line without Python's source excerpt;
    other warnings keep Python's format. Command-line tools call it once at start."""
    default = warnings.formatwarning

    def fmt(message, category, filename, lineno, line=None):
        if category.__module__.startswith('gluon_ssd'):
            return f"{prog}: warning: {' '.join(str(message).split())}\n"
        return default(message, category, filename, lineno, line)
    if getattr(warnings.formatwarning, '__qualname__', '') != fmt.__qualname__:
        warnings.formatwarning = fmt
