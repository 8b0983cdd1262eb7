"""Where weight files come from: a local path, or a model-store name resolved GluonCV's way.

A store name (``'vgg16_atrous'``, ``'mobilenet1.0'``, ...) maps to a SHA-1 (GluonCV's list plus
:func:`register`); its file lives at ``<cache>/<name>-<hash8>.params`` and is downloaded from
``$MXNET_GLUON_REPO`` when absent or damaged. Downloads go through temporary files and land with
``os.replace``, so the cache never holds a partial or unchecked file.
"""
import http.client
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib

from gluon_ssd.errors import UserError

__all__ = ['cache_dir', 'is_store_name', 'register', 'unregister', 'cache_path', 'model_url',
           'get_weights']

LOG = logging.getLogger(__name__)

#: Seconds to wait for the server to connect or send the next block.
DOWNLOAD_TIMEOUT = 30

_CHUNK = 1 << 20
_registered = {}    # name -> sha1, consulted before GluonCV's list


def _gluoncv_store():
    """GluonCV's ``model_store`` module (imported on first use: it pulls in all of GluonCV)."""
    from gluoncv.model_zoo import model_store
    return model_store


def _sha1(name):
    """The full SHA-1 recorded for ``name``, or ``None`` when the store does not know it."""
    if name in _registered:
        return _registered[name]
    return _gluoncv_store()._model_sha1.get(name)  # pylint: disable=protected-access


def _known_sha1(name):
    sha1 = _sha1(name) if isinstance(name, str) else None
    if sha1 is None:
        raise ValueError(f"{name!r} is not a model-store name")
    return sha1


def cache_dir(root=None):
    """The weight cache directory (not created here).

    ``root`` (``~`` expanded) if given, else ``$MXNET_HOME/models``, else ``~/.mxnet/models``.
    """
    if root is None:
        root = os.path.join(os.environ.get('MXNET_HOME', os.path.join('~', '.mxnet')), 'models')
    return os.path.expanduser(os.fspath(root))


def is_store_name(name):
    """Whether ``name`` is in GluonCV's model store or was added with :func:`register`."""
    return isinstance(name, str) and _sha1(name) is not None


def register(name, sha1):
    """Add (or override) the store entry ``name`` with the SHA-1 of its ``.params`` file.

    ``sha1`` is hexadecimal, at least 8 digits (the file-name hash); raises ``ValueError``
    otherwise. Undo with :func:`unregister`.
    """
    sha1 = str(sha1).lower()
    if len(sha1) < 8 or any(c not in '0123456789abcdef' for c in sha1):
        raise ValueError(f"sha1 must be at least 8 hexadecimal digits, got {sha1!r}")
    _registered[name] = sha1


def unregister(name):
    """Remove an entry added with :func:`register` (GluonCV's own list is untouched).

    A name that was never registered is ignored.
    """
    _registered.pop(name, None)


def cache_path(name, root=None):
    """``<cache_dir(root)>/<name>-<first 8 hex of its sha1>.params`` (GluonCV's file name).

    Raises ``ValueError`` if ``name`` is not a store name.
    """
    return os.path.join(cache_dir(root), f'{name}-{_known_sha1(name)[:8]}.params')


def model_url(name):
    """``{repo}gluon/models/{name}-{hash8}.zip``, repo = ``$MXNET_GLUON_REPO`` or Apache's.

    Raises ``ValueError`` if ``name`` is not a store name.
    """
    repo = os.environ.get('MXNET_GLUON_REPO') or _gluoncv_store().apache_repo_url
    if not repo.endswith('/'):
        repo += '/'
    return f'{repo}gluon/models/{name}-{_known_sha1(name)[:8]}.zip'


def get_weights(spec, root=None, skip_hint=None):
    """Path of the weight file ``spec`` names, downloading it into the cache if needed.

    Parameters
    ----------
    spec : str or os.PathLike
        An existing file (returned as is, ``~`` expanded), or a model-store name: the cached
        file when its SHA-1 matches, else a fresh download (a damaged cached file is replaced).
    root : str, optional
        Cache directory (see :func:`cache_dir`).
    skip_hint : str, optional
        What the user can pass instead of downloading (e.g. ``'--no-pretrained-base'``);
        quoted in the download-failure message.

    Raises
    ------
    UserError
        One line: ``spec`` is neither an existing file nor a store name (naming it); the
        download failed (naming the URL, the cache path to fill by hand and ``skip_hint``); or
        the downloaded archive is corrupt or its SHA-1 is wrong (naming the URL; nothing kept).
    """
    path = os.path.expanduser(os.fspath(spec))
    if os.path.isfile(path):
        return path
    if not is_store_name(spec):
        if os.sep in path or '/' in path or path.endswith('.params'):
            raise UserError(f"weights file not found: {path}")
        raise UserError(f"{spec!r} is neither a weights file nor a model-store name")
    from gluoncv.utils import check_sha1
    target = cache_path(spec, root)
    sha1 = _known_sha1(spec)
    if os.path.isfile(target):
        if check_sha1(target, sha1):
            return target
        LOG.warning("%s has the wrong SHA-1; downloading it again", target)
    _download(spec, target, sha1, skip_hint)
    return target


def _one_line(reason):
    return ' '.join(str(reason).split()) or type(reason).__name__


def _download(name, target, sha1, skip_hint):
    """Fetch ``model_url(name)``, check it and move its ``.params`` to ``target``."""
    from gluoncv.utils import check_sha1
    url = model_url(name)
    folder = os.path.dirname(target)
    member = os.path.basename(target)
    hint = f" or pass {skip_hint}" if skip_hint else ""
    temps = []
    try:
        try:
            os.makedirs(folder, exist_ok=True)
            for suffix in ('.zip.part', '.params.part'):
                fd, temp = tempfile.mkstemp(prefix=f'.{member}.', suffix=suffix, dir=folder)
                os.close(fd)
                temps.append(temp)
        except OSError as err:
            raise UserError(f"cannot write to the model cache {folder} ({_one_line(err)}); "
                            f"put the {name} weights at {target}{hint}") from None
        zip_temp, params_temp = temps
        LOG.info("downloading %s weights from %s", name, url)
        try:
            _fetch(url, zip_temp)
        except (OSError, ValueError, http.client.HTTPException) as err:  # incl. timeouts
            reason = err.reason if isinstance(err, urllib.error.URLError) else err
            if isinstance(err, urllib.error.HTTPError):
                reason = f"HTTP {err.code} {err.reason}"
            raise UserError(f"cannot download {name} weights from {url} ({_one_line(reason)}); "
                            f"put the file at {target}{hint}") from None
        try:
            with zipfile.ZipFile(zip_temp) as archive:
                names = [n for n in archive.namelist() if n.endswith('.params')]
                chosen = member if member in names else (names[0] if len(names) == 1 else None)
                if chosen is None:
                    raise UserError(f"the archive downloaded from {url} holds no {member}; "
                                    "the file was not kept")
                with archive.open(chosen) as src, open(params_temp, 'wb') as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
                    dst.flush()
                    os.fsync(dst.fileno())
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as err:
            raise UserError(f"the file downloaded from {url} is not a valid zip archive "
                            f"({_one_line(err)}); the file was not kept") from None
        if not check_sha1(params_temp, sha1):
            raise UserError(f"the weights downloaded from {url} do not match SHA-1 {sha1}; "
                            "the file was not kept")
        os.chmod(params_temp, 0o644)     # mkstemp made it owner-only
        os.replace(params_temp, target)
        temps.remove(params_temp)
    finally:
        for temp in temps:
            try:
                os.remove(temp)
            except OSError:
                pass


def _fetch(url, dest):
    """Stream ``url`` to ``dest``; raises ``OSError`` on network errors or a short body."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response, \
            open(dest, 'wb') as out:
        expected = response.headers.get('Content-Length')
        received = 0
        while True:
            block = response.read(_CHUNK)
            if not block:
                break
            out.write(block)
            received += len(block)
    if expected is not None and expected.isdigit() and received != int(expected):
        raise OSError(f"connection closed after {received} of {expected} bytes")
