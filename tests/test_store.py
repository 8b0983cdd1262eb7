"""gluon_ssd.model.store: naming, cache reuse and failure-safe downloads from a loopback server."""
import hashlib
import http.server
import io
import os
import socket
import threading
import zipfile

import mxnet as mx
import pytest

from gluon_ssd.errors import UserError
from gluon_ssd.model import store

NAME = 'test_mobilenet0.25'


def _small_net():
    from gluoncv.model_zoo import get_model
    net = get_model('mobilenet0.25', pretrained=False, classes=10)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 32, 32)))     # settle deferred shapes
    return net


def _zip(member, data):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w', zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, data)
    return buf.getvalue()


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    """A small GluonCV network, its saved ``.params`` bytes and their SHA-1."""
    net = _small_net()
    path = tmp_path_factory.mktemp('src') / 'net.params'
    net.save_parameters(str(path))
    data = path.read_bytes()
    return {'net': net, 'data': data, 'sha1': hashlib.sha1(data).hexdigest()}


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        server = self.server
        server.requests.append(self.path)
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header('Content-Type', 'application/zip')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        # a truncated file: announce the whole length, send half, hang up
        self.wfile.write(body[:len(body) // 2] if self.path in server.truncate else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    """Loopback HTTP server: ``files`` {url path: bytes}, ``truncate`` set, ``requests`` log."""
    httpd = http.server.HTTPServer(('127.0.0.1', 0), _Handler)
    httpd.files, httpd.truncate, httpd.requests = {}, set(), []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={'poll_interval': 0.05},
                              daemon=True)
    thread.start()
    monkeypatch.setenv('MXNET_GLUON_REPO', f'http://127.0.0.1:{httpd.server_address[1]}')
    monkeypatch.setattr(store, 'DOWNLOAD_TIMEOUT', 5)
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def registered():
    """``registered(name, sha1)``: a store entry removed again after the test."""
    names = []

    def add(name, sha1):
        store.register(name, sha1)
        names.append(name)
    yield add
    for name in names:
        store.unregister(name)


def _url_path(name):
    return '/' + store.model_url(name).split('/', 3)[3]


def _publish(server, name, payload):
    server.files[_url_path(name)] = payload


@pytest.fixture
def published(server, registered, weights):
    """``NAME`` registered with the real SHA-1 and served as a GluonCV zip."""
    registered(NAME, weights['sha1'])
    _publish(server, NAME, _zip(f"{NAME}-{weights['sha1'][:8]}.params", weights['data']))
    return server


def test_download_checks_sha1_and_loads_into_the_network(published, weights, tmp_path):
    from gluoncv.utils import check_sha1
    path = store.get_weights(NAME, root=str(tmp_path))
    assert path == store.cache_path(NAME, root=str(tmp_path))
    assert os.listdir(tmp_path) == [os.path.basename(path)]      # no temp files left
    assert check_sha1(path, weights['sha1'])
    assert published.requests == [_url_path(NAME)]
    net = _small_net()
    net.load_parameters(path)
    for mine, theirs in zip(net.collect_params().values(),
                            weights['net'].collect_params().values()):
        assert (mine.data().asnumpy() == theirs.data().asnumpy()).all(), mine.name


def test_cached_file_is_reused_without_a_request(published, tmp_path, monkeypatch):
    monkeypatch.setenv('MXNET_HOME', str(tmp_path))               # root from $MXNET_HOME
    first = store.get_weights(NAME)
    assert first == str(tmp_path / 'models' / os.path.basename(first))
    assert store.get_weights(NAME) == first
    assert len(published.requests) == 1


def test_damaged_cached_file_is_downloaded_again(published, weights, tmp_path):
    target = store.cache_path(NAME, root=str(tmp_path))
    tmp_path.joinpath(os.path.basename(target)).write_bytes(b'damaged')
    assert store.get_weights(NAME, root=str(tmp_path)) == target
    assert open(target, 'rb').read() == weights['data']
    assert len(published.requests) == 1


def test_corrupt_zip_keeps_nothing(server, registered, weights, tmp_path):
    registered(NAME, weights['sha1'])
    _publish(server, NAME, b'PK\x03\x04 this is not really a zip archive')
    with pytest.raises(UserError, match='not a valid zip.*not kept') as err:
        store.get_weights(NAME, root=str(tmp_path))
    assert store.model_url(NAME) in str(err.value)
    assert os.listdir(tmp_path) == []


def test_sha1_mismatch_keeps_nothing(server, registered, weights, tmp_path):
    wrong = 'deadbeef' * 5
    registered(NAME, wrong)
    _publish(server, NAME, _zip(f'{NAME}-deadbeef.params', weights['data']))
    with pytest.raises(UserError, match='SHA-1.*not kept') as err:
        store.get_weights(NAME, root=str(tmp_path))
    assert store.model_url(NAME) in str(err.value)
    assert os.listdir(tmp_path) == []


def test_interrupted_download_keeps_nothing(published, tmp_path):
    published.truncate.add(_url_path(NAME))
    with pytest.raises(UserError, match=r'cannot download .*connection closed after') as err:
        store.get_weights(NAME, root=str(tmp_path), skip_hint='--no-pretrained-base')
    assert store.cache_path(NAME, root=str(tmp_path)) in str(err.value)
    assert os.listdir(tmp_path) == []


def test_http_error_is_one_line(server, registered, weights, tmp_path):
    registered(NAME, weights['sha1'])              # registered but not served: 404
    with pytest.raises(UserError, match='HTTP 404') as err:
        store.get_weights(NAME, root=str(tmp_path))
    assert '\n' not in str(err.value)
    assert os.listdir(tmp_path) == []


def test_server_down_is_one_line_with_url_path_and_hint(registered, weights, tmp_path,
                                                       monkeypatch):
    with socket.socket() as sock:                  # a port nobody listens on
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv('MXNET_GLUON_REPO', f'http://127.0.0.1:{port}/')
    monkeypatch.setattr(store, 'DOWNLOAD_TIMEOUT', 5)
    registered(NAME, weights['sha1'])
    with pytest.raises(UserError) as err:
        store.get_weights(NAME, root=str(tmp_path), skip_hint='--no-pretrained-base')
    message = str(err.value)
    assert '\n' not in message
    assert message.startswith(f'cannot download {NAME} weights from {store.model_url(NAME)} (')
    assert f'put the file at {store.cache_path(NAME, root=str(tmp_path))}' in message
    assert message.endswith('or pass --no-pretrained-base')
    assert os.listdir(tmp_path) == []


def test_local_paths_and_unknown_names(tmp_path, monkeypatch):
    local = tmp_path / 'mine.params'
    local.write_bytes(b'x')
    assert store.get_weights(str(local)) == str(local)
    monkeypatch.setenv('HOME', str(tmp_path))
    assert store.get_weights('~/mine.params') == str(local)
    with pytest.raises(UserError, match='not found: .*missing.params'):
        store.get_weights(str(tmp_path / 'missing.params'))
    with pytest.raises(UserError, match="'no_such_model' is neither a weights file nor"):
        store.get_weights('no_such_model', root=str(tmp_path))
    assert os.listdir(tmp_path) == ['mine.params']


def test_naming_follows_gluoncv(monkeypatch, tmp_path):
    from gluoncv.model_zoo import model_store as gcv
    name = 'vgg16_atrous'
    file_name = f'{name}-{gcv.short_hash(name)}'
    monkeypatch.delenv('MXNET_GLUON_REPO', raising=False)
    assert store.model_url(name) == gcv._url_format.format(repo_url=gcv.apache_repo_url,
                                                           file_name=file_name)
    monkeypatch.setenv('MXNET_GLUON_REPO', 'http://mirror.example/mx')
    assert store.model_url(name) == f'http://mirror.example/mx/gluon/models/{file_name}.zip'
    assert store.cache_path(name, root=str(tmp_path)) == str(tmp_path / f'{file_name}.params')
    monkeypatch.delenv('MXNET_HOME', raising=False)
    monkeypatch.setenv('HOME', str(tmp_path))
    assert store.cache_dir() == str(tmp_path / '.mxnet' / 'models')
    monkeypatch.setenv('MXNET_HOME', str(tmp_path / 'home'))
    assert store.cache_dir() == str(tmp_path / 'home' / 'models')


def test_register_and_unregister(registered):
    assert store.is_store_name('resnet50_v1') and not store.is_store_name(NAME)
    registered(NAME, 'ABCDEF0123456789')
    assert store.is_store_name(NAME)
    assert store.cache_path(NAME, root='/r') == f'/r/{NAME}-abcdef01.params'
    store.unregister(NAME)
    assert not store.is_store_name(NAME)
    with pytest.raises(ValueError):
        store.register(NAME, 'xyz')
    with pytest.raises(ValueError):
        store.cache_path('no_such_model')


def test_ctrl_c_during_download_leaves_no_temp_files(published, tmp_path, monkeypatch):
    def interrupted(url, dest):
        with open(dest, 'wb') as out:
            out.write(b'PK partial')
        raise KeyboardInterrupt
    monkeypatch.setattr(store, '_fetch', interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.get_weights(NAME, root=str(tmp_path))
    assert os.listdir(tmp_path) == []
