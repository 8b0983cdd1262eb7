"""Weight files of a whole SSD: GluonCV 0.10.5's layout translated to ours, or our own.

An SSD ``.params`` file comes in one of two layouts:

* **ours**: what ``SSD.save_parameters`` writes (``features.stage_a.0.weight``,
  ``class_predictors.0.predictor.weight``, ...): loaded as is;
* **GluonCV's**: what GluonCV's ``SSD.save_parameters`` writes (its model-store files, or a
  net trained with GluonCV). Class and box predictors have our names. The feature extractor's
  names depend on how GluonCV builds it, one **layout** per backbone family (a backbone's
  ``gluoncv_layout``), each translated by one rule table of :data:`NAME_MAPS`:

  - ``'vgg16_atrous'``: GluonCV's VGG16-atrous block; ours has the same attribute names, so
    every name is kept;
  - ``'expanded'``: GluonCV's ``FeatureExpander`` (ResNet-v1/v2, MobileNet bases), a
    ``SymbolBlock`` keyed by global parameter names: the classification network's as
    ``features.<net><n>_<name>`` (``resnetv10_stage3_conv0_weight``; ``<n>`` counts the
    networks built in the process that saved the file, so any ``<n>`` is accepted), matched to
    our base parameter of the same ``<name>`` (ours come from the same GluonCV network, see
    ``ExpandedBackboneFeatures.base_prefix``), and the extra layers by their symbol names
    (``expand_trans_conv0_weight``, ``expand_bn0_moving_mean``, ...);
  - ``'resnet_v1b'``: GluonCV's ``ResNetV1bSSD`` (``stage1``, ``stage2``, ``more_stages``) ->
    our ``ResNetV1bFeatures`` (``stage_a``, ``stage_b``, ``extras``; same layer indices).

  GluonCV's files also hold the anchors it precomputes as constants
  (``anchor_generators.<i>.anchors``); ours are computed from the preset, so exactly those keys
  (:data:`GLUONCV_EXTRAS`) are dropped.

A file is read as GluonCV's when it holds those anchor constants or when most of its keys are
not ours; any key that no rule maps (or that maps to no parameter of ours) and any parameter of
ours that the file leaves without weights is a :class:`~gluon_ssd.errors.UserError` naming the
file and the first such key.
"""
import re

from gluon_ssd.errors import UserError

__all__ = ['GLUONCV_EXTRAS', 'NAME_MAPS', 'BASE_TARGET', 'translate_keys', 'load_ssd_weights']

#: Keys of GluonCV's SSD files that are no weights of ours: its precomputed anchor constants,
#: one per feature map (group 1: the map index, which must be one of the model's).
GLUONCV_EXTRAS = (r'anchor_generators\.(\d+)\.anchors',)

#: Prefix of a rule target naming one of our base-network parameters by its Gluon name (after
#: the base network's own prefix) instead of by its key.
BASE_TARGET = 'base:'

# class / box predictors: the same names in GluonCV's files and ours
_PREDICTORS = [(r'((?:class|box)_predictors\.\d+\.predictor\.(?:weight|bias))', r'\1')]

#: GluonCV layout -> ordered ``(pattern, target)`` rules over GluonCV's keys: the first pattern
#: that matches a whole key gives its target (``re`` template; see :data:`BASE_TARGET`).
NAME_MAPS = {
    'vgg16_atrous': [
        (r'(features\..+)', r'\1'),
    ] + _PREDICTORS,
    'expanded': [
        (r'features\.expand_trans_conv(\d+)_weight', r'features.extras.\1.0.weight'),
        (r'features\.expand_trans_bn(\d+)_(gamma|beta)', r'features.extras.\1.1.\2'),
        (r'features\.expand_trans_bn(\d+)_moving_(mean|var)', r'features.extras.\1.1.running_\2'),
        (r'features\.expand_conv(\d+)_weight', r'features.extras.\1.3.weight'),
        (r'features\.expand_bn(\d+)_(gamma|beta)', r'features.extras.\1.4.\2'),
        (r'features\.expand_bn(\d+)_moving_(mean|var)', r'features.extras.\1.4.running_\2'),
        (r'features\.(?:resnetv1|resnetv2|mobilenet)\d+_(.+)', BASE_TARGET + r'\1'),
    ] + _PREDICTORS,
    'resnet_v1b': [
        (r'features\.stage1\.(.+)', r'features.stage_a.\1'),
        (r'features\.stage2\.(.+)', r'features.stage_b.\1'),
        (r'features\.more_stages\.(\d+)\.([02])\.(weight|bias)', r'features.extras.\1.\2.\3'),
    ] + _PREDICTORS,
}


class _Mismatch(Exception):
    """A key that does not fit: ``kind`` is 'unexpected', 'duplicate' or 'missing'."""

    def __init__(self, kind, key):
        super().__init__(kind, key)
        self.kind, self.key = kind, key


def _is_extra(key, num_layers=None):
    for pattern in GLUONCV_EXTRAS:
        match = re.fullmatch(pattern, key)
        if match and (num_layers is None or int(match.group(1)) < num_layers):
            return True
    return False


def translate_keys(keys, layout, our_keys, base_names=None, num_layers=None):
    """Map the keys of a GluonCV SSD file to our parameter keys.

    Parameters
    ----------
    keys : iterable of str
        The file's keys, in file order.
    layout : str
        Key of :data:`NAME_MAPS`.
    our_keys : collection of str
        Our SSD's parameter keys (``_collect_params_with_prefix``).
    base_names : dict or None
        ``{base parameter name without the base network's prefix: our key}`` for rules whose
        target starts with :data:`BASE_TARGET`.
    num_layers : int or None
        The model's number of feature maps (the extras of other maps are unexpected).

    Returns ``{file key: our key}`` without :data:`GLUONCV_EXTRAS`. Raises ``_Mismatch`` for
    the first key no rule maps onto a parameter of ours (or onto one already taken), then for
    the first of ``our_keys`` left without a file key.
    """
    rules = NAME_MAPS[layout]
    base_names = base_names or {}
    mapping, taken = {}, set()
    for key in keys:
        if _is_extra(key, num_layers):
            continue
        target = None
        for pattern, template in rules:
            match = re.fullmatch(pattern, key)
            if match:
                target = match.expand(template)
                break
        if target is not None and target.startswith(BASE_TARGET):
            target = base_names.get(target[len(BASE_TARGET):])
        if target is None or target not in our_keys:
            raise _Mismatch('unexpected', key)
        if target in taken:
            raise _Mismatch('duplicate', key)
        taken.add(target)
        mapping[key] = target
    for key in our_keys:
        if key not in taken:
            raise _Mismatch('missing', key)
    return mapping


def _base_names(net, ours):
    """``{name without the base prefix: our key}`` of the base-network parameters."""
    prefix = getattr(net.features, 'base_prefix', None)
    if not prefix:
        return {}
    return {param.name[len(prefix):]: key for key, param in ours.items()
            if key.startswith('features.') and param.name.startswith(prefix)}


def _read(path):
    import mxnet as mx
    try:
        loaded = mx.nd.load(path)
    except (mx.base.MXNetError, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"{path}: not a readable MXNet .params file ({first})") from None
    if not isinstance(loaded, dict) or not loaded:
        raise UserError(f"{path}: not an SSD weights file (no named parameters)")
    if not any('.' in key for key in loaded):
        raise UserError(f"{path}: saved in MXNet's legacy save_params layout (keys such as "
                        f"{next(iter(loaded))!r}), which is not supported; load it in GluonCV "
                        "and save it again with save_parameters()")
    return loaded


def _message(path, what, layout_name, mismatch):
    if mismatch.kind == 'missing':
        return (f"{path}: no weights for parameter {mismatch.key!r} of {what} in this "
                f"{layout_name} file")
    if mismatch.kind == 'duplicate':
        return f"{path}: parameter {mismatch.key!r} duplicates another one ({layout_name} file)"
    return (f"{path}: unexpected parameter {mismatch.key!r} for {what} ({layout_name} file: "
            f"no parameter of the model matches it)")


def load_ssd_weights(net, path, what='the model', ctx=None):
    """Load the weight file ``path`` (GluonCV's layout or ours) into the SSD ``net``.

    Parameters
    ----------
    net : gluon_ssd.model.ssd.SSD
        The detector (initialised or not); every parameter gets the file's values on ``ctx``.
    path : str
        The ``.params`` file.
    what : str
        How errors name the model (e.g. the zoo name).
    ctx : Context or list of Context
        Default: where each parameter already is (initialised or pending), else CPU.

    Returns ``'gluoncv'`` or ``'gluon-ssd'``, the layout found. Raises :class:`UserError` (one
    line naming ``path``): unreadable file or MXNet's legacy ``save_params`` layout; unexpected, duplicate or missing key (the first,
    see :func:`translate_keys`); class predictors for another number of classes (both counts);
    any other shape that differs (the key and both shapes).
    """
    loaded = _read(path)
    ours = net._collect_params_with_prefix()  # pylint: disable=protected-access
    keys = list(loaded)
    own = sum(key in ours for key in keys)
    layout = getattr(net.features, 'gluoncv_layout', None)
    if set(keys) == set(ours):
        found, mapping = 'gluon-ssd', {key: key for key in keys}
    elif any(_is_extra(key) for key in keys) or own * 2 < len(keys):
        found = 'gluoncv'
        if layout is None:
            raise UserError(f"{path}: looks like a GluonCV SSD file, but GluonCV has no "
                            f"weights for {what}")
        try:
            mapping = translate_keys(keys, layout, ours, _base_names(net, ours),
                                     len(net.anchor_generators))
        except _Mismatch as exc:
            raise UserError(_message(path, what, f"GluonCV ({layout})", exc)) from None
    else:
        found = 'gluon-ssd'
        extra = [key for key in keys if key not in ours]
        if extra:
            raise UserError(_message(path, what, 'gluon-ssd', _Mismatch('unexpected', extra[0])))
        missing = next(key for key in ours if key not in loaded)
        raise UserError(_message(path, what, 'gluon-ssd', _Mismatch('missing', missing)))
    _check_shapes(net, path, what, loaded, mapping, ours)
    for key, target in mapping.items():
        try:
            ours[target]._load_init(loaded[key], ctx)  # pylint: disable=protected-access
        except AssertionError as exc:   # dtype (or context) mismatch
            first = (str(exc).strip().splitlines() or ['incompatible'])[0][:200]
            raise UserError(f"{path}: parameter {key!r} does not fit {what} ({first})") from None
    net._clear_cached_op()  # pylint: disable=protected-access
    return found


def _check_shapes(net, path, what, loaded, mapping, ours):
    """Class predictors first (a class-count error names both counts), then every shape."""
    def fits(expected, got):
        return len(expected) == len(got) and all(e in (0, g) for e, g in zip(expected, got))

    order = sorted(mapping.items(), key=lambda kv: not kv[1].startswith('class_predictors.'))
    for key, target in order:
        expected, got = tuple(ours[target].shape or ()), tuple(loaded[key].shape)
        if fits(expected, got):
            continue
        match = re.fullmatch(r'class_predictors\.(\d+)\.predictor\.(?:weight|bias)', target)
        if match and fits(expected[1:], got[1:]):
            anchors = net.num_anchors[int(match.group(1))]
            if got[0] % anchors == 0:
                counted = got[0] // anchors - 1
                raise UserError(
                    f"{path}: its class predictors are for {counted} classes but {what} was "
                    f"built with {net.num_classes}; pass classes= with {counted} names (or a "
                    f"file for {net.num_classes} classes)")
        raise UserError(f"{path}: parameter {key!r} has shape {got}, {what} needs {expected}")
