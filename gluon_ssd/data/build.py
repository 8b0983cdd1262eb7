"""The one dataset opener: dataset kind, root and splits to datasets, subsets, samplers, loaders.

Training (:mod:`gluon_ssd.engine`), evaluation (:mod:`gluon_ssd.eval`), the ablation runner and
the notebooks open their data here. Raw items are ``(image (H, W, 3) uint8 NDArray, label (M, 6)
float32 [xmin, ymin, xmax, ymax, class_id, difficult] original pixels)``.

Training batches are deterministic: the shuffling of epoch ``e`` and the augmentation of item
``i`` in epoch ``e`` are seeded from ``(seed, e, i)`` (:class:`SeededItems`,
:class:`EpochBatchSampler`), whichever worker process runs them, so a resumed run sees exactly
the batches of an uninterrupted one. Worker *processes* are required for that (each has its own
global RNG); never use ``thread_pool`` loaders for training.

Bad images (the policy of :mod:`gluon_ssd.data._validate`) never stop a run: an image that must
be skipped is replaced, in training, by another item chosen from ``(seed, epoch, index)`` (so
batches keep their size and stay deterministic); the evaluator leaves it out. Every item and
batch the loaders produce is an :class:`Item` / :class:`Batch`: a plain tuple (``data, label =
batch`` works as before) that also carries ``events``, what was skipped or repaired to produce it,
so that the main process can count (:class:`LoadProblems`) what happened in worker processes,
and with ``--strict-data`` turn the first event into a :class:`DatasetError`.
"""
import os
import random

import mxnet as mx
import numpy as np
from mxnet import gluon

from gluon_ssd.data._validate import (REPAIRED, SKIPPED, DatasetError, ImageDecodeError,
                                      load_item)

#: Event kind of an item that could not be made (raised by :meth:`LoadProblems.add`).
FATAL = 'fatal'

__all__ = ['DATASETS', 'DEFAULT_SPLITS', 'DATA_COUNT_KEYS', 'FATAL', 'check_dataset',
           'split_names', 'open_split', 'open_datasets', 'Subset', 'Transformed', 'Item', 'Batch',
           'LoadProblems', 'SeededItems', 'EpochBatchSampler', 'pad_label', 'max_objects_of',
           'train_loader', 'val_loader']

DATASETS = ('synthetic', 'voc', 'coco', 'rec')
#: ``--dataset`` -> (default training split(s), default validation split)
DEFAULT_SPLITS = {
    'synthetic': ('train', 'val'),
    'voc': ('2007_trainval,2012_trainval', '2007_test'),
    'coco': ('instances_train2017', 'instances_val2017'),
    'rec': ('train.rec', 'val.rec'),
}
SYNTHETIC_SIZES = (1000, 200)    # generated train / val images of the built-in dataset
_DEFAULT_MAX_OBJECTS = 100       # label padding when a dataset cannot list its labels cheaply
#: Epoch-record keys of :meth:`LoadProblems.as_record` (``val_`` prefixed for validation).
DATA_COUNT_KEYS = ('skipped_images', 'repaired_images')
#: Other items tried in place of an unreadable training item before giving up.
MAX_REPLACEMENT_TRIES = 20


def check_dataset(dataset, root):
    """Check ``--dataset`` and ``--dataset-root`` before anything heavy; raise
    :class:`DatasetError` naming the flag."""
    if dataset not in DATASETS:
        raise DatasetError(f"--dataset: unknown dataset {dataset!r}; choose one of "
                           f"{', '.join(DATASETS)}")
    if dataset == 'synthetic':
        return
    if not root:
        raise DatasetError(f"--dataset-root is required for --dataset {dataset}")
    if not os.path.isdir(os.path.expanduser(root)):
        raise DatasetError(f"--dataset-root: {root} is not a directory")


def split_names(text, root):
    """VOC splits: ``'train'`` (a single VOC-format folder) -> ``['train']``;
    ``'2007_trainval,2012_trainval'`` (a VOCdevkit) -> ``[(2007, 'trainval'), (2012, 'trainval')]``."""
    single = os.path.isdir(os.path.join(root, 'Annotations'))
    out = []
    for part in (p.strip() for p in text.split(',') if p.strip()):
        year, _, name = part.partition('_')
        out.append((int(year), name) if (not single and year.isdigit() and name) else part)
    return out


def _synthetic_root(root, num_train, num_val):
    from gluon_ssd.data.synthetic import synthetic_voc
    return str(synthetic_voc(root=root, num_train=num_train or SYNTHETIC_SIZES[0],
                             num_val=num_val or SYNTHETIC_SIZES[1]))


def open_split(dataset, root, split, classes=None, training=False, num_train=0, num_val=0,
               strict=False):
    """One split as a dataset of raw items with ``.classes``.

    Parameters
    ----------
    dataset : one of :data:`DATASETS`; root : its folder (synthetic: the cache folder or None).
    split : split name(s) (see :data:`DEFAULT_SPLITS`).
    classes : class names to keep (VOC, synthetic, rec: objects of other classes are dropped);
        ``None`` takes the dataset's own.
    training : COCO only: images without boxes are skipped for training, kept for evaluation.
    num_train, num_val : synthetic only: the generated sizes (they name the cached dataset).
    strict : every counted annotation problem is a :class:`DatasetError` (``--strict-data``).

    Raises :class:`DatasetError` (a :class:`~gluon_ssd.errors.UserError`) naming the file.
    """
    check_dataset(dataset, root)
    root = os.path.expanduser(root) if root else None
    try:
        if dataset == 'synthetic':
            root = _synthetic_root(root, num_train, num_val)
        if dataset in ('synthetic', 'voc'):
            from gluon_ssd.data.voc import VOCDetection
            return VOCDetection(root, split_names(split, root), classes=classes, strict=strict)
        if dataset == 'coco':
            from gluon_ssd.data.coco import COCODetection
            return COCODetection(os.path.join(root, 'annotations', split + '.json'),
                                 os.path.join(root, split.split('_')[-1]), skip_empty=training,
                                 strict=strict)
        from gluon_ssd.data.recordio import RecordDetection
        return RecordDetection(os.path.join(root, split), classes=classes, strict=strict)
    except DatasetError:
        raise
    except (OSError, ValueError, RuntimeError) as exc:
        raise DatasetError(f"--dataset {dataset}: {exc}") from None


def open_datasets(dataset, root, train_split=None, val_split=None, num_train=0, num_val=0,
                  strict=False):
    """``(train, val, classes)`` for training: the validation split uses the training split's
    classes; ``num_train``/``num_val`` keep the first N images (0 = all); ``strict``: see
    :func:`open_split`."""
    check_dataset(dataset, root)
    train_split = train_split or DEFAULT_SPLITS[dataset][0]
    val_split = val_split or DEFAULT_SPLITS[dataset][1]
    sizes = {'num_train': num_train, 'num_val': num_val, 'strict': strict}
    train = open_split(dataset, root, train_split, training=True, **sizes)
    classes = list(train.classes)
    val = open_split(dataset, root, val_split, classes=None if dataset == 'coco' else classes,
                     **sizes)
    train, val = Subset.first(train, num_train), Subset.first(val, num_val)
    for name, ds, split in (('training', train, train_split), ('validation', val, val_split)):
        if len(ds) == 0:
            raise DatasetError(f"--dataset {dataset}: the {name} split {split!r} has no images")
    return train, val, classes


class Subset(gluon.data.Dataset):
    """The first ``n`` items of ``dataset``; keeps ``classes``, ``label(i)`` and the COCO
    attributes (``coco``, ``contiguous_id_to_json``, ``image_ids`` cut to ``n``)."""

    def __init__(self, dataset, n):
        self._dataset, self._n = dataset, min(int(n), len(dataset))
        self.classes = dataset.classes
        for attr in ('coco', 'contiguous_id_to_json'):
            if hasattr(dataset, attr):
                setattr(self, attr, getattr(dataset, attr))
        if hasattr(dataset, 'image_ids'):
            self.image_ids = list(dataset.image_ids)[:self._n]

    @classmethod
    def first(cls, dataset, n):
        """``dataset`` itself when ``n`` is 0 or covers it, else its first ``n`` items."""
        return dataset if not n or n >= len(dataset) else cls(dataset, n)

    def __len__(self):
        return self._n

    def __getitem__(self, index):
        if not 0 <= index < self._n:
            raise IndexError(index)
        return self._dataset[index]

    def label(self, index):
        """Label of item ``index`` (delegated; no image decoding)."""
        return self._dataset.label(index)

    def load(self, index):
        """``(image, label, events)`` of item ``index`` (see
        :func:`gluon_ssd.data._validate.load_item`)."""
        if not 0 <= index < self._n:
            raise IndexError(index)
        return load_item(self._dataset, index)


class Transformed(gluon.data.Dataset):
    """``dataset`` with ``transform(image, label)`` applied (no randomness: validation)."""

    def __init__(self, dataset, transform):
        self._dataset, self._transform = dataset, transform

    def __len__(self):
        return len(self._dataset)

    def __getitem__(self, index):
        return self._transform(*self._dataset[index])


# ----------------------------------------------------------------------------------------------
# items and batches that carry what was skipped or repaired, and the count of it
# ----------------------------------------------------------------------------------------------
class Item(tuple):
    """A dataset item (a tuple of its fields) with ``events``: a tuple of ``(kind, message)``,
    ``kind`` in ``('skipped', 'repaired')``, the message naming the file; ``()`` when clean."""

    def __new__(cls, fields, events=()):
        self = super().__new__(cls, fields)
        self.events = tuple(events)
        return self


class Batch(tuple):
    """A loader batch (a tuple of batched fields) with ``events``: one tuple of ``(kind,
    message)`` per item (see :class:`Item`); ``events`` survives the pickling from a loader
    worker process to the main process."""

    def __new__(cls, fields, events=()):
        self = super().__new__(cls, fields)
        self.events = list(events)
        return self

    @property
    def skipped(self):
        """``(B,)`` bool: the items that stand in for a skipped image."""
        return np.array([any(kind == SKIPPED for kind, _ in ev) for ev in self.events],
                        dtype=bool).reshape(-1)


class _EventBatchify:
    """``batchify_fn``: ``fields_fn`` (e.g. gluoncv's ``Tuple``) on the items, wrapped in a
    :class:`Batch` with each item's ``events``."""

    def __init__(self, fields_fn):
        self._fields_fn = fields_fn

    def __call__(self, items):
        return Batch(self._fields_fn(items), [getattr(it, 'events', ()) for it in items])


class LoadProblems:
    """Counts, in the main process, the events carried by :class:`Batch` es (also those made in
    loader worker processes).

    ``add(batch)`` counts its events, or with ``strict=True`` raises :class:`DatasetError` with
    the first event's message (naming the file); a ``'fatal'`` event is raised in any case;
    ``as_record(prefix)`` gives ``{prefix + 'skipped_images': n, prefix + 'repaired_images':
    m}``; ``summary(what)`` one line naming the first file of each kind, or None when nothing
    happened.
    """

    def __init__(self, strict=False):
        self.strict = strict
        self.counts = {SKIPPED: 0, REPAIRED: 0}
        self.first = {}

    def add(self, batch):
        """Count the events of one batch (raise the first one when strict)."""
        for item_events in getattr(batch, 'events', None) or ():
            for kind, message in item_events:
                if kind == FATAL:
                    raise DatasetError(message)
                if self.strict:
                    what = 'unreadable' if kind == SKIPPED else 'repaired'
                    raise DatasetError(f"{message} (--strict-data: {what} images are errors)")
                self.counts[kind] = self.counts.get(kind, 0) + 1
                self.first.setdefault(kind, message)

    def __bool__(self):
        return any(self.counts.values())

    def as_record(self, prefix=''):
        """``{prefix + 'skipped_images': n, prefix + 'repaired_images': m}``."""
        return {prefix + DATA_COUNT_KEYS[0]: self.counts.get(SKIPPED, 0),
                prefix + DATA_COUNT_KEYS[1]: self.counts.get(REPAIRED, 0)}

    def summary(self, what):
        """``'<what>: N images skipped (first: ...); M images repaired (first: ...)'`` or None."""
        parts = [f"{self.counts[kind]} images {label} (first: {self.first[kind]})"
                 for kind, label in ((SKIPPED, 'skipped'), (REPAIRED, 'repaired'))
                 if self.counts.get(kind)]
        return f"{what}: {'; '.join(parts)}" if parts else None


# ----------------------------------------------------------------------------------------------
# training: deterministic per-item augmentation, epoch-seeded batches, fixed label padding
# ----------------------------------------------------------------------------------------------
def _item_seed(seed, epoch, index):
    return (int(seed) * 1000003 + int(epoch) * 7919 + int(index) * 104729) % (2 ** 31 - 1)


def pad_label(label, max_objects):
    """(M, K) label -> (max_objects, K) float32, extra rows -1; raises :class:`DatasetError` (a
    ``ValueError`` and a ``UserError``) if M > max_objects."""
    label = np.asarray(label, dtype=np.float32)
    if label.ndim != 2:
        label = label.reshape(-1, 6)
    if label.shape[0] > max_objects:
        raise DatasetError(f"an image has {label.shape[0]} objects, more than --max-objects "
                           f"{max_objects}; raise --max-objects")
    out = np.full((max_objects, label.shape[1]), -1, dtype=np.float32)
    out[:label.shape[0]] = label
    return out


def max_objects_of(dataset):
    """Most objects in any image of ``dataset`` (via its cheap ``label(i)``), else a default."""
    if not hasattr(dataset, 'label'):
        return _DEFAULT_MAX_OBJECTS
    return max(1, max(dataset.label(i).shape[0] for i in range(len(dataset))))


#: Bytes of decoded training images a loader process keeps (uint8 pixels; per worker).
DECODED_CACHE_BYTES = 512 << 20


class SeededItems(gluon.data.Dataset):
    """Training items whose augmentation depends only on ``(seed, epoch, index)``.

    ``key = epoch * len(dataset) + index`` (as produced by :class:`EpochBatchSampler`). Before
    calling ``transform(image, label)``, Python's and NumPy's global RNGs are seeded from
    ``(seed, epoch, index)``: the result is the same in any worker process, in any order.
    Items: :class:`Item` ``(image (3, H, W) float32, label (max_objects, 6) float32 padded with
    -1)`` with ``events`` (see :func:`gluon_ssd.data._validate.load_item`).

    An image that must be skipped (:class:`~gluon_ssd.data._validate.ImageDecodeError`) is
    replaced by another item drawn from ``(seed, epoch, index)`` (augmented with the seed of the
    skipped one) and the item carries a ``('skipped', message)`` event.

    Nothing here raises for bad data: an exception in a DataLoader worker process makes MXNet
    terminate its ``multiprocessing`` pool, which can hang. An item that cannot be made (the
    :data:`MAX_REPLACEMENT_TRIES` replacements unreadable too, or more objects than
    ``max_objects``) is a stand-in of the right shape with a ``('fatal', message)`` event, which
    :meth:`LoadProblems.add` raises as :class:`DatasetError` in the main process.
    """

    def __init__(self, dataset, transform, seed, max_objects):
        self._dataset = dataset
        self._transform = transform
        self._seed = seed
        self._max_objects = max_objects
        # decoded images kept by this process (each loader worker fills its own), up to
        # DECODED_CACHE_BYTES: a small dataset is decoded once, not once per epoch
        self._decoded, self._decoded_bytes = {}, 0
        self._owner, self._settled = os.getpid(), None

    def __len__(self):
        return len(self._dataset)

    def _settle_worker(self):
        """In a loader worker (a process forked from the one that made this object), once: the
        lowest CPU priority. The workers then fill the training step's idle moments instead of
        taking a core from its OpenMP threads: a worker that preempts one of them stalls all of
        them at the next barrier (the default first run on 2 cores: 54 -> 69 images/s). When the
        step waits for a batch its threads sleep, so the workers still get the cores they need.
        (Not ``cv2.setNumThreads`` here: in a child forked after OpenCV ran threads, it hangs.)"""
        pid = os.getpid()
        if self._settled == pid:
            return
        self._settled = pid
        if pid != self._owner:
            try:
                os.nice(19 - os.nice(0))
            except OSError:            # not permitted here: keep the priority we have
                pass

    def __getitem__(self, key):
        self._settle_worker()
        epoch, index = divmod(int(key), len(self._dataset))
        item_seed = _item_seed(self._seed, epoch, index)
        img, label, events = self._load(index, item_seed)
        random.seed(item_seed)
        np.random.seed(item_seed)
        img, label = self._transform(img, label)
        try:
            label = pad_label(label, self._max_objects)
        except DatasetError as err:
            label = pad_label(np.asarray(label)[:self._max_objects], self._max_objects)
            events += ((FATAL, str(err)),)
        return Item((img, label), events)

    def _load(self, index, item_seed):
        """``(image, label, events)`` of ``index``, or of its deterministic replacement (or a
        blank stand-in with a fatal event)."""
        if index in self._decoded:
            return self._decoded[index]
        try:
            item = load_item(self._dataset, index)
        except ImageDecodeError as err:
            skipped = str(err)
        else:
            # only clean items: a repaired image reports its event every time it is loaded
            size = getattr(item[0], 'size', 0)
            if not item[2] and self._decoded_bytes + size <= DECODED_CACHE_BYTES:
                self._decoded[index] = item
                self._decoded_bytes += size
            return item
        n = len(self._dataset)
        rng = np.random.RandomState(item_seed)   # a private RNG: the global ones stay untouched
        tries = min(n - 1, MAX_REPLACEMENT_TRIES)
        for _ in range(tries):
            other = int(rng.randint(n - 1))
            other += other >= index               # any item but the skipped one
            try:
                img, label, _ = load_item(self._dataset, other)
            except ImageDecodeError:
                continue
            return img, label, ((SKIPPED, skipped),)
        blank = mx.nd.zeros((64, 64, 3), dtype='uint8')  # the transform resizes it to the input
        return blank, np.zeros((0, 6), np.float32), (
            (FATAL, f"{skipped}; and the {tries} training images tried in its place were "
                    "unreadable too: check the dataset"),)


class EpochBatchSampler(gluon.data.Sampler):
    """Fixed-size batches of keys ``epoch * n + index``, shuffled per ``(seed, epoch)``.

    Each worker of a distributed run takes its shard (:func:`gluon_ssd.distributed.shard_indices`);
    the incomplete last batch is dropped so every batch has the same shape. Call
    :meth:`set_epoch` before iterating.
    """

    def __init__(self, n, batch_size, seed, rank=0, num_workers=1):
        self._n, self._batch_size, self._seed = n, batch_size, seed
        self._rank, self._num_workers = rank, num_workers
        self._epoch = 0

    def set_epoch(self, epoch):
        """Select the permutation of ``epoch``."""
        self._epoch = int(epoch)

    def _indices(self):
        from gluon_ssd.distributed import shard_indices
        return shard_indices(self._n, self._rank, self._num_workers, seed=self._seed,
                             epoch=self._epoch, remainder='pad')

    def __iter__(self):
        keys = self._indices() + self._epoch * self._n
        for start in range(0, len(self) * self._batch_size, self._batch_size):
            yield keys[start:start + self._batch_size].tolist()

    def __len__(self):
        return len(self._indices()) // self._batch_size


def train_loader(dataset, transform, batch_size, seed, max_objects, num_workers=0, rank=0,
                 world_size=1):
    """``(loader, sampler)`` of augmented training batches ``(data (B, 3, S, S), label (B,
    max_objects, 6) padded -1)`` (each a :class:`Batch`: count its ``events`` with
    :class:`LoadProblems`); call ``sampler.set_epoch(e)`` before each epoch.
    ``rank``/``world_size``: this worker's shard of a distributed run."""
    from gluoncv.data.batchify import Stack, Tuple
    items = SeededItems(dataset, transform, seed, max_objects)
    sampler = EpochBatchSampler(len(dataset), batch_size, seed, rank, world_size)
    if len(sampler) == 0:
        raise DatasetError(f"--batch-size {batch_size} is larger than this worker's "
                           f"{len(dataset) // world_size} training images")
    loader = gluon.data.DataLoader(items, batch_sampler=sampler,
                                   batchify_fn=_EventBatchify(Tuple(Stack(), Stack())),
                                   num_workers=num_workers)
    return loader, sampler


def val_loader(items, batch_size, label_fields=(1,), num_workers=0, width=None):
    """:class:`Batch` es of ``items`` in order, the last one kept: every field stacked, except
    the ``label_fields`` (2-D labels) padded with -1 rows to the batch's most objects; each
    batch's ``events`` collects its items' (:class:`Item`). ``width``: the number of fields
    (default: read from ``items[0]``)."""
    from gluoncv.data.batchify import Stack, Tuple
    from gluon_ssd.data.transforms import PadLabels
    if width is None:
        width = len(items[0]) if len(items) else 2
    fields = [PadLabels() if i in label_fields else Stack() for i in range(width)]
    return gluon.data.DataLoader(items, batch_size=batch_size, shuffle=False, last_batch='keep',
                                 batchify_fn=_EventBatchify(Tuple(*fields)),
                                 num_workers=num_workers)
