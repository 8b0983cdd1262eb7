"""The public API: importable from the top level, our own classes, GluonCV's call conventions."""
import inspect

import pytest

import gluon_ssd

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)

# Every public name with a GluonCV twin: ours -> (GluonCV module, GluonCV name).
_TWINS = {
    'MultiClassDecoder': ('gluoncv.nn.coder', 'MultiClassDecoder'),
    'MultiPerClassDecoder': ('gluoncv.nn.coder', 'MultiPerClassDecoder'),
    'BoxEncoder': ('gluoncv.nn.coder', 'NormalizedBoxCenterEncoder'),
    'BoxDecoder': ('gluoncv.nn.coder', 'NormalizedBoxCenterDecoder'),
    'SSDTargetGenerator': ('gluoncv.model_zoo.ssd.target', 'SSDTargetGenerator'),
    'SSDMultiBoxLoss': ('gluoncv.loss', 'SSDMultiBoxLoss'),
    'get_model': ('gluoncv.model_zoo', 'get_model'),
}

# Defaults that differ from GluonCV on purpose (documented in the README), pinned below:
# (class, parameter) -> (our default, GluonCV's default).
_KNOWN_DEFAULT_DIFFERENCES = {
    # ours only supports -1: hard negative mining is the loss's job (GluonCV's OHEM sampler in the
    # target generator fails on MXNet 1.9.1)
    ('SSDTargetGenerator', 'negative_mining_ratio'): (-1, 3),
}


def _pair(name):
    module, attr = _TWINS[name]
    return getattr(gluon_ssd, name), getattr(pytest.importorskip(module), attr)


def _parameters(obj):
    """Call parameters of a function, or of a class's constructor (without ``self``)."""
    return list(inspect.signature(obj).parameters.values())


def _signature_problems(ours, theirs, skip_defaults=()):
    """Why a call written for ``theirs`` could bind differently (or fail) with ``ours``."""
    problems = []
    our_params, their_params = _parameters(ours), _parameters(theirs)
    our_pos = [p for p in our_params if p.kind in _POSITIONAL]
    their_pos = [p for p in their_params if p.kind in _POSITIONAL]
    by_name = {p.name: p for p in our_params if p.kind not in _VARIADIC}
    # 1. GluonCV's positional parameters: same slot, same name, same default
    for index, theirs_p in enumerate(their_pos):
        if index >= len(our_pos):
            problems.append(f"position {index}: GluonCV has {theirs_p.name!r}, ours has none")
            continue
        ours_p = our_pos[index]
        if ours_p.name != theirs_p.name:
            problems.append(f"position {index}: GluonCV has {theirs_p.name!r}, "
                            f"ours has {ours_p.name!r}")
        elif theirs_p.name not in skip_defaults and ours_p.default != theirs_p.default:
            problems.append(f"{theirs_p.name!r}: GluonCV's default is {theirs_p.default!r}, "
                            f"ours is {ours_p.default!r}")
    # 2. GluonCV's keyword-only parameters: accepted by name, same default
    for theirs_p in their_params:
        if theirs_p.kind != inspect.Parameter.KEYWORD_ONLY:
            continue
        ours_p = by_name.get(theirs_p.name)
        if ours_p is None or ours_p.kind == inspect.Parameter.POSITIONAL_ONLY:
            problems.append(f"keyword {theirs_p.name!r} of GluonCV is not accepted")
        elif ours_p.default != theirs_p.default:
            problems.append(f"{theirs_p.name!r}: GluonCV's default is {theirs_p.default!r}, "
                            f"ours is {ours_p.default!r}")
    # 3. *args / **kwargs of GluonCV must be taken too
    our_kinds = {p.kind for p in our_params}
    for kind in _VARIADIC:
        if kind in {p.kind for p in their_params} and kind not in our_kinds:
            problems.append(f"GluonCV takes {kind.description}, ours does not")
    # 4. parameters ours adds must be optional (a GluonCV call does not pass them)
    their_names = {p.name for p in their_params}
    for ours_p in our_params:
        if (ours_p.name not in their_names and ours_p.kind not in _VARIADIC
                and ours_p.default is inspect.Parameter.empty):
            problems.append(f"ours requires {ours_p.name!r}, which GluonCV does not have")
    return problems


def test_version_is_set():
    assert gluon_ssd.__version__.count(".") == 2


def test_public_api_is_importable_and_ours():
    required = ['get_model', 'list_models', 'SSD'] + sorted(_TWINS)
    for name in required + gluon_ssd.__all__:
        obj = getattr(gluon_ssd, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__.startswith('gluon_ssd.'), (name, obj.__module__)
            # our own code, not subclasses of GluonCV's blocks
            if inspect.isclass(obj):
                assert not any(base.__module__.startswith('gluoncv') for base in obj.__mro__)


@pytest.mark.parametrize('name', sorted(_TWINS))
def test_signature_is_a_drop_in_for_gluoncv(name):
    """GluonCV's positional parameters at the same positions with the same names and defaults;
    ours may only add optional parameters after them, or keyword-only ones."""
    ours, theirs = _pair(name)
    skip = {param for twin, param in _KNOWN_DEFAULT_DIFFERENCES if twin == name}
    assert _signature_problems(ours, theirs, skip) == [], (
        f"gluon_ssd.{name}{inspect.signature(ours)} vs GluonCV{inspect.signature(theirs)}")


@pytest.mark.parametrize('name, param', sorted(_KNOWN_DEFAULT_DIFFERENCES))
def test_deliberate_default_differences(name, param):
    ours, theirs = _pair(name)
    assert (inspect.signature(ours).parameters[param].default,
            inspect.signature(theirs).parameters[param].default) == \
        _KNOWN_DEFAULT_DIFFERENCES[(name, param)]


def test_signature_checker_catches_a_shifted_parameter():
    """The checker itself: the old ``MultiClassDecoder(num_class, axis, thresh)`` must fail."""
    def old(num_class, axis=-1, thresh=0.01, **kwargs):
        pass

    def gluoncv(axis=-1, thresh=0.01):
        pass

    def extra_after(axis=-1, thresh=0.01, num_class=None, **kwargs):
        pass

    def other_default(axis=-1, thresh=0.05):
        pass

    assert any('position 0' in p for p in _signature_problems(old, gluoncv))
    assert _signature_problems(extra_after, gluoncv) == []
    assert _signature_problems(gluoncv, extra_after) == [
        "position 2: GluonCV has 'num_class', ours has none",
        "GluonCV takes variadic keyword, ours does not"]
    assert _signature_problems(other_default, gluoncv) == [
        "'thresh': GluonCV's default is 0.01, ours is 0.05"]


@pytest.mark.parametrize('name', ['MultiClassDecoder', 'MultiPerClassDecoder', 'BoxEncoder',
                                  'BoxDecoder', 'SSDTargetGenerator', 'SSDMultiBoxLoss'])
def test_forward_takes_as_many_inputs_as_gluoncv(name):
    def inputs(cls):
        method = 'hybrid_forward' if 'hybrid_forward' in vars(cls) else 'forward'
        params = [p for p in _parameters(getattr(cls, method))[1:]  # self
                  if p.kind in _POSITIONAL]
        return params[1:] if method == 'hybrid_forward' else params  # F
    ours, theirs = _pair(name)
    assert len(inputs(ours)) == len(inputs(theirs))


def test_get_model_list_covers_list_models():
    """``get_model_list()`` (GluonCV's name) lists every model ``list_models()`` does."""
    names = gluon_ssd.get_model_list()
    assert isinstance(names, list) and all(isinstance(n, str) for n in names)
    assert set(gluon_ssd.list_models()) <= set(names)
