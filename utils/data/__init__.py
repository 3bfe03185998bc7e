"""The data sets (the paper code's, plus the bundled Digits), read from their real on-disk formats into tensors
resident on the device.

    spec.py           DatasetSpec: what a data set is (name, shape, classes, stats, files)
    table.py          the data sets: one DatasetSpec each, names, lookup
    raw.py            what readers return, and their shared error plumbing
    idx.py  pickles.py  svhn.py  medmnist.py  image_folders.py  digits.py   one reader per format family
    imageset.py       ImageSet: one split on the device plus a per-class index
    load.py           load_dataset: find or download, read, check, copy to the device
"""

from networks.foundation import IMAGENET_MEAN, IMAGENET_STD
from utils.data.imageset import ImageSet
from utils.data.load import DOWNLOAD_SOCKET_TIMEOUT_S, FLOAT_STORAGE_LIMIT_BYTES, LoadedDataset, load_dataset
from utils.data.spec import DatasetSpec
from utils.data.table import dataset_names, default_data_path, get_dataset_spec

__all__ = [
    "DOWNLOAD_SOCKET_TIMEOUT_S",
    "FLOAT_STORAGE_LIMIT_BYTES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DatasetSpec",
    "ImageSet",
    "LoadedDataset",
    "dataset_names",
    "default_data_path",
    "get_dataset_spec",
    "load_dataset",
]
