"""The part every file-backed detection dataset shares: images on disk, labels in memory."""
from mxnet import gluon

from gluon_ssd.data._validate import ImageDecodeError, decode_image


class AnnotatedImages(gluon.data.Dataset):
    """Images read from disk with labels parsed once at construction.

    Subclasses fill, in their constructor, ``self._classes`` (tuple of names, index = class id),
    ``self._items`` (list of ``(image path, width, height)`` from the annotations),
    ``self._labels`` (list of float32 ``(M, 6)`` arrays ``[xmin, ymin, xmax, ymax, class_id,
    difficult]`` in pixels) and ``self._transform`` (callable ``(img, label) -> ...`` or None).
    ``_annotation_name`` names the annotation source in error messages.

    Items are ``(image HWC uint8 RGB NDArray, label)``, or whatever the transform returns.
    """

    _annotation_name = "its annotation"

    @property
    def classes(self):
        """Class names, tuple of str; index = class id."""
        return self._classes

    def __len__(self):
        return len(self._items)

    def image_path(self, idx):
        """Path of image ``idx`` (str)."""
        return self._items[idx][0]

    def image_size(self, idx):
        """``(width, height)`` of image ``idx`` in pixels, from the annotation."""
        return self._items[idx][1:]

    def label(self, idx):
        """Label of image ``idx`` without decoding the image: float32 ``(M, 6)`` pixels (a copy)."""
        return self._labels[idx].copy()

    def __getitem__(self, idx):
        path, width, height = self._items[idx]
        img = decode_image(path)
        if img.shape[0] != height or img.shape[1] != width:
            raise ImageDecodeError("%s: image is %dx%d but %s says %dx%d"
                                   % (path, img.shape[1], img.shape[0], self._annotation_name,
                                      width, height))
        label = self._labels[idx].copy()
        if self._transform is not None:
            return self._transform(img, label)
        return img, label
