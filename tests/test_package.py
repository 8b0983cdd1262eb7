"""The public API: importable from the top level, our own classes, GluonCV's call conventions."""
import inspect

import gluon_ssd


def test_version_is_set():
    assert gluon_ssd.__version__.count(".") == 2


def test_public_api_is_importable_and_ours():
    required = ['get_model', 'SSD', 'SSDTargetGenerator', 'SSDMultiBoxLoss', 'MultiClassDecoder',
                'MultiPerClassDecoder']
    for name in required + gluon_ssd.__all__:
        obj = getattr(gluon_ssd, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__.startswith('gluon_ssd.'), (name, obj.__module__)
            # our own code, not subclasses of GluonCV's blocks
            if inspect.isclass(obj):
                assert not any(base.__module__.startswith('gluoncv') for base in obj.__mro__)


def test_gluoncv_call_conventions_match():
    """Constructor keywords GluonCV users pass must be accepted by ours."""
    from gluoncv.loss import SSDMultiBoxLoss as GcvLoss
    from gluoncv.model_zoo.ssd.target import SSDTargetGenerator as GcvTarget
    from gluoncv.nn.coder import MultiClassDecoder as GcvMC, MultiPerClassDecoder as GcvMPC
    pairs = [(gluon_ssd.SSDMultiBoxLoss, GcvLoss), (gluon_ssd.SSDTargetGenerator, GcvTarget),
             (gluon_ssd.MultiClassDecoder, GcvMC), (gluon_ssd.MultiPerClassDecoder, GcvMPC)]
    for ours, theirs in pairs:
        ours_params = set(inspect.signature(ours.__init__).parameters)
        theirs_params = set(inspect.signature(theirs.__init__).parameters) - {'kwargs'}
        assert theirs_params <= ours_params, (ours.__name__, theirs_params - ours_params)
