import gluon_ssd


def test_version_is_set():
    assert gluon_ssd.__version__.count(".") == 2
