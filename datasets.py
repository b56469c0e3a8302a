"""Load a dataset as uint8 images with fine and coarse labels, split train/validation/test."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import socket
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from cli import keras_home

# The official archives, as their site and Keras's cache name them.
ARCHIVES = {"cifar100": "cifar-100-python.tar.gz", "cifar10": "cifar-10-python.tar.gz"}
TITLES = {"cifar100": "CIFAR-100", "cifar10": "CIFAR-10"}
# Their training and test batches.
CIFAR_BATCHES = {
    "cifar100": (["cifar-100-python/train"], ["cifar-100-python/test"]),
    "cifar10": ([f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)], ["cifar-10-batches-py/test_batch"]),
}
# 10% of the training images: 5,000 for CIFAR.
VALIDATION_FRACTION = 0.1
SYNTHETIC_DEFAULT_SIZE = 3000

CIFAR10_VEHICLES = (0, 1, 8, 9)  # airplane, automobile, ship, truck
# A download that gets no byte for this long gives up: behind a firewall that drops packets (a cluster's
# compute node) it would otherwise wait for ever.
DOWNLOAD_TIMEOUT_S = 60


class DatasetError(ValueError):
    """A dataset that cannot be loaded; its message is one line meant for the user."""


@dataclasses.dataclass
class Dataset:
    """Images (uint8, N x H x W x C) and integer labels of one dataset, split three ways."""

    name: str
    x_train: np.ndarray
    y_train_fine: np.ndarray
    y_train_coarse: np.ndarray | None
    x_val: np.ndarray
    y_val_fine: np.ndarray
    y_val_coarse: np.ndarray | None
    x_test: np.ndarray
    y_test_fine: np.ndarray
    y_test_coarse: np.ndarray | None
    num_fine: int
    num_coarse: int | None
    horizontal_flip: bool = True
    selects_on: str = "validation"  # what x_val holds: the validation split, or the test set (2017's protocol)
    digest: str | None = None  # a .npz file's content_digest: the same name may come to hold other images or labels

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one image, H x W x C."""
        return tuple(self.x_train.shape[1:])

    @property
    def has_coarse(self) -> bool:
        """Whether the dataset has coarse labels (and the model a coarse head)."""
        return self.num_coarse is not None

    def summary(self) -> str:
        """One line: sizes and classes."""
        coarse = f", {self.num_coarse} coarse classes" if self.has_coarse else ", no coarse labels"
        if self.selects_on == "test":
            split, selection = f"{len(self.x_train)} train (no validation split)", "; the test images select epochs and trials"
        else:
            split, selection = f"{len(self.x_train)} train / {len(self.x_val)} validation", ""
        return (f"{self.name}: {split} / {len(self.x_test)} test images of {'x'.join(map(str, self.input_shape))}, "
                f"{self.num_fine} fine classes{coarse}{selection}")


def stratified_split(labels: np.ndarray, n_first: int, rng: np.random.Generator):
    """Indices (first, rest) with `n_first` items drawn per class in proportion to its size."""
    classes, counts = np.unique(labels, return_counts=True)
    wanted = np.floor(counts * n_first / len(labels)).astype(int)
    # Hand the rounding remainder to the largest classes so exactly n_first are drawn.
    remainder = n_first - wanted.sum()
    wanted[np.argsort(-counts, kind="stable")[:remainder]] += 1
    first, rest = [], []
    for c, n in zip(classes, wanted):
        idx = rng.permutation(np.flatnonzero(labels == c))
        first.append(idx[:n])
        rest.append(idx[n:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(rest))


def load_dataset(
    name: str = "cifar100",
    *,
    train_subset: int | None = None,
    seed: int = 0,
    data_dir: str | None = None,
    synthetic_size: int = SYNTHETIC_DEFAULT_SIZE,
    horizontal_flip: bool | None = None,
    select_on: str = "validation",
) -> Dataset:
    """Load `cifar100`, `cifar10`, `synthetic` or a `.npz` file, with a stratified validation split.

    `select_on="test"` is the 2017 protocol: no validation split, every training image trains
    (`train_subset` of them), and the test set selects epochs and trials.
    """
    if select_on not in ("validation", "test"):
        raise ValueError(f"select_on must be 'validation' or 'test', got {select_on!r}")
    if problem := source_problem(name, data_dir):
        raise DatasetError(problem)
    if name in ARCHIVES:
        arrays, flip = _load_cifar(name, data_dir), True
    elif name == "synthetic":
        arrays, flip = make_synthetic(synthetic_size, seed=seed), True
    else:
        arrays, flip = _load_npz(name)
    if horizontal_flip is not None:
        flip = horizontal_flip
    x_train, yf_train, yc_train, x_test, yf_test, yc_test = arrays
    label = os.path.basename(name)
    _check_arrays(label, x_train, yf_train, yc_train, x_test, yf_test, yc_test)
    from utils import warn

    fine = np.concatenate([yf_train, yf_test])
    coarse = None if yc_train is None else np.concatenate([yc_train, yc_test])
    num_fine = int(fine.max()) + 1
    num_coarse = None if coarse is None else int(coarse.max()) + 1
    for head, count, labels in (("fine", num_fine, fine), ("coarse", num_coarse, coarse)):
        # A head has an output per label up to the largest: labels such as 3, 17, 42 made a head of 43, 40 of them dead.
        if count and (used := len(np.unique(labels))) < count:
            warn(f"{label}: its images have {used} of the {head} labels 0-{count - 1}, so {count - used} of the {head} "
                 f"head's {count} outputs are for no image; number the classes 0-{used - 1} for a head of {used}")
    if coarse is not None and len(split := split_fine_classes(fine, coarse)):
        shown = ", ".join(map(str, split[:5])) + (", ..." if len(split) > 5 else "")
        warn(f"{label}: fine classes with more than one coarse label: {len(split)} of {num_fine} ({shown}); the coarse "
             "classes are meant as groups of fine ones: are the coarse labels in the images' order?")

    # CIFAR's archives are what they are, and synthetic images are drawn from the seed; a user's own file may be remade.
    digest = None if name in ARCHIVES or name == "synthetic" else content_digest(arrays, flip)

    def take(a, idx):
        return None if a is None else a[idx]

    rng = np.random.default_rng(seed)
    if select_on == "test":
        train_idx = np.arange(len(x_train))
        x_val, yf_val, yc_val = x_test, yf_test, yc_test
    else:
        n_val = max(1, round(len(x_train) * VALIDATION_FRACTION))
        val_idx, train_idx = stratified_split(yf_train, n_val, rng)
        x_val, yf_val, yc_val = x_train[val_idx], yf_train[val_idx], take(yc_train, val_idx)
    if train_subset is not None:
        if not 0 < train_subset <= len(train_idx):
            raise DatasetError(f"--train-subset must be between 1 and {len(train_idx)}, got {train_subset}")
        keep, _ = stratified_split(yf_train[train_idx], train_subset, rng)
        if (unseen := len(np.unique(yf_train[train_idx])) - len(np.unique(yf_train[train_idx[keep]]))) > 0:
            warn(f"--train-subset {train_subset} leaves {unseen} fine classes without a training image: a smoke test, "
                 "whose accuracies say little about the networks")
        train_idx = train_idx[keep]
    return Dataset(
        name=label,
        x_train=x_train[train_idx],
        y_train_fine=yf_train[train_idx],
        y_train_coarse=take(yc_train, train_idx),
        x_val=x_val,
        y_val_fine=yf_val,
        y_val_coarse=yc_val,
        x_test=x_test,
        y_test_fine=yf_test,
        y_test_coarse=yc_test,
        num_fine=num_fine,
        num_coarse=num_coarse,
        horizontal_flip=flip,
        selects_on=select_on,
        digest=digest,
    )


def content_digest(arrays: tuple, horizontal_flip: bool) -> str:
    """16 hex digits that differ between two datasets of other images, labels or flips, however their files were saved
    (the labels' integer type aside)."""
    digest = hashlib.blake2b(digest_size=8)
    for array in arrays:  # images, fine and coarse labels of the training set, then of the test set
        if array is None:  # no coarse labels
            digest.update(b"none")
            continue
        array = np.ascontiguousarray(array if array.dtype == np.uint8 else array.astype(np.int64))
        digest.update(f"{array.dtype.str} {array.shape}".encode())
        digest.update(array.data)
    digest.update(b"flip" if horizontal_flip else b"no flip")
    return digest.hexdigest()


def split_fine_classes(fine: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """The fine classes whose images carry more than one coarse label: none where coarse classes group fine ones."""
    pairs = np.unique(np.stack([fine, coarse], axis=1), axis=0)
    classes, counts = np.unique(pairs[:, 0], return_counts=True)
    return classes[counts > 1]


def source_problem(name: str, data_dir: str | None = None) -> str | None:
    """Why a dataset cannot load whatever its content (checked before a search claims a folder), or None."""
    if data_dir is not None and name not in ARCHIVES:
        return f"--data-dir is where the official CIFAR archives lie; {name} does not read it"
    if data_dir is not None and os.path.isfile(data_dir):  # the archive itself, say
        return f"--data-dir {data_dir} is a file: give the folder that holds {ARCHIVES[name]}"
    if data_dir is not None and not (archive := Path(data_dir) / ARCHIVES[name]).is_file():
        return f"{archive} does not exist: put the official {ARCHIVES[name]} there, or try --dataset synthetic"
    if name.endswith(".npz"):
        return None if os.path.isfile(name) else f"dataset file {name} does not exist"
    if name not in (*ARCHIVES, "synthetic"):
        return f"unknown dataset {name!r}: use cifar100, cifar10, synthetic or a path to a .npz file"
    return None


def _load_cifar(name: str, data_dir: str | None):
    """The official archive in `data_dir` (source_problem checked that it is there), else Keras's loader (its cache, or
    a download), else the official archive in Keras's cache folder."""
    if data_dir is None:
        try:
            return _keras_cifar(name)
        except Exception as err:
            data_dir = keras_cache()
            if not (archive := data_dir / ARCHIVES[name]).is_file():
                # Keras says "URL fetch failure on <url>: <errno> -- <reason>"; a bad download, why the file is bad.
                why = (str(err).rpartition(" -- ")[2].splitlines() or [type(err).__name__])[0]
                raise DatasetError(
                    f"{TITLES[name]} could not be downloaded ({why}) and {archive} does not exist: put "
                    f"the official {ARCHIVES[name]} there (or pass --data-dir DIR), or try --dataset synthetic"
                ) from None
    return read_cifar_archive(Path(data_dir) / ARCHIVES[name], name)


def keras_cache() -> Path:
    """The folder where Keras's loaders keep their downloads, found as keras.utils.get_file finds it."""
    home = keras_home()
    return Path(home if os.access(home, os.W_OK) else os.path.join("/tmp", ".keras")) / "datasets"


def _keras_cifar(name: str):
    """CIFAR-100 or CIFAR-10 through Keras's loader, channels-last whatever ~/.keras/keras.json says."""
    import keras

    # Keras's loaders return channels-first images where its config says channels_first, which the
    # networks, always built channels-last, would read as 3 rows of 32 channels.
    data_format, timeout = keras.config.image_data_format(), socket.getdefaulttimeout()
    keras.config.set_image_data_format("channels_last")
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        if name == "cifar10":
            (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
            y_train, y_test = y_train.ravel(), y_test.ravel()
            return x_train, y_train, _cifar10_coarse(y_train), x_test, y_test, _cifar10_coarse(y_test)
        (x_train, yf_train), (x_test, yf_test) = keras.datasets.cifar100.load_data("fine")
        (_, yc_train), (_, yc_test) = keras.datasets.cifar100.load_data("coarse")
        return x_train, yf_train.ravel(), yc_train.ravel(), x_test, yf_test.ravel(), yc_test.ravel()
    finally:
        keras.config.set_image_data_format(data_format)
        socket.setdefaulttimeout(timeout)


def _cifar10_coarse(labels: np.ndarray) -> np.ndarray:
    """CIFAR-10's two superclasses: vehicle (0) and animal (1)."""
    return np.where(np.isin(labels, CIFAR10_VEHICLES), 0, 1)


def read_cifar_archive(archive: str | os.PathLike, name: str = "cifar100"):
    """Parse the official archive of `cifar100` or `cifar10` with Keras's own batch reader."""
    from keras.src.datasets.cifar import load_batch

    fine_key = "fine_labels" if name == "cifar100" else "labels"
    try:
        # "r:gz", the official format: auto-detection would list one failure per compression.
        with tempfile.TemporaryDirectory() as tmp, tarfile.open(archive, "r:gz") as tar:
            # The batches alone, by name, "./" or not, in one pass through the stream; Python's extraction
            # filters where it has them (from 3.11.4: Debian 12's 3.11.2 lacks them).
            missing = [file for files in CIFAR_BATCHES[name] for file in files]
            for member in tar:
                if (file := os.path.normpath(member.name)) in missing:
                    tar.extract(member, tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
                    missing.remove(file)
            if missing:
                raise DatasetError(f"it lacks {', '.join(missing)}")
            arrays = []
            for files in CIFAR_BATCHES[name]:
                paths = [os.path.join(tmp, file) for file in files]
                batches = [load_batch(path, label_key=fine_key) for path in paths]
                fine = np.concatenate([np.ravel(y) for _, y in batches])
                coarse = (np.concatenate([np.ravel(load_batch(path, label_key="coarse_labels")[1]) for path in paths])
                          if name == "cifar100" else _cifar10_coarse(fine))
                # The archives hold each image's rows channel by channel.
                arrays.append((np.concatenate([x for x, _ in batches]).transpose(0, 2, 3, 1), fine, coarse))
    except (OSError, tarfile.TarError, KeyError, pickle.UnpicklingError, ValueError, EOFError) as err:
        raise DatasetError(f"{archive} is not a readable {TITLES[name]} archive ({err})") from None
    (x_train, yf_train, yc_train), (x_test, yf_test, yc_test) = arrays
    return x_train, yf_train, yc_train, x_test, yf_test, yc_test


def _load_npz(path: str):
    try:
        with np.load(path, allow_pickle=False) as npz:
            contents = {key: npz[key] for key in npz.files}
    except Exception as err:
        raise DatasetError(f"{path} is not a readable .npz file ({err})") from None
    missing = [k for k in ("x_train", "y_train_fine", "x_test", "y_test_fine") if k not in contents]
    if missing:
        raise DatasetError(f"{path} lacks the key(s) {', '.join(missing)}")
    has_coarse = ["y_train_coarse" in contents, "y_test_coarse" in contents]
    if any(has_coarse) and not all(has_coarse):
        raise DatasetError(f"{path} must have both y_train_coarse and y_test_coarse, or neither")

    def images(key):
        x = contents[key]
        # Integers of 0-255 in a wider type (numpy's default int64, say) are uint8 images that lose nothing as such.
        if np.issubdtype(x.dtype, np.integer) and x.dtype != np.uint8 and x.size and 0 <= x.min() and x.max() <= 255:
            x = x.astype(np.uint8)
        return x[..., None] if x.ndim == 3 else x

    def labels(key):
        y = contents.get(key)
        return None if y is None else (y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y)

    flip = contents.get("horizontal_flip", np.array(False))
    if flip.shape != ():
        raise DatasetError(f"{path}: horizontal_flip must be one true or false value, got shape {flip.shape}")
    arrays = (
        images("x_train"), labels("y_train_fine"), labels("y_train_coarse"),
        images("x_test"), labels("y_test_fine"), labels("y_test_coarse"),
    )
    return arrays, bool(flip)


def _check_arrays(name, x_train, yf_train, yc_train, x_test, yf_test, yc_test):
    """Raise DatasetError naming the first problem with the arrays."""
    for key, x in (("x_train", x_train), ("x_test", x_test)):
        if not len(x):
            raise DatasetError(f"{name}: {key} holds no images")
        if x.dtype != np.uint8:
            # Floats may be 0-1 or 0-255: which, the file's maker knows.
            values = f"values {x.min():.3g} to {x.max():.3g}" if np.issubdtype(x.dtype, np.number) else ""
            how = (f" ({values}: save (x * 255).round().astype(numpy.uint8) for images of 0-1, x.round().astype(numpy.uint8) "
                   "for 0-255)" if np.issubdtype(x.dtype, np.floating) else f" ({values})" if values else "")
            raise DatasetError(f"{name}: {key} must be uint8 images (0-255), got dtype {x.dtype}{how}")
        if x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise DatasetError(f"{name}: {key} must have shape N x H x W x C with C 1 or 3, got {x.shape}")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetError(f"{name}: x_train images are {x_train.shape[1:]} but x_test images are {x_test.shape[1:]}")
    for key, y, x in (
        ("y_train_fine", yf_train, x_train), ("y_test_fine", yf_test, x_test),
        ("y_train_coarse", yc_train, x_train), ("y_test_coarse", yc_test, x_test),
    ):
        if y is None:
            continue
        if not np.issubdtype(y.dtype, np.integer):
            raise DatasetError(f"{name}: {key} must hold integer labels, got dtype {y.dtype}")
        if y.ndim != 1 or len(y) != len(x):
            raise DatasetError(f"{name}: {key} must have one label per image ({len(x)}), got shape {y.shape}")
        if len(y) and y.min() < 0:
            raise DatasetError(f"{name}: {key} has negative labels (min {y.min()})")
    for key, y_test, y_train in (("y_test_fine", yf_test, yf_train), ("y_test_coarse", yc_test, yc_train)):
        if y_test is not None and y_test.max() > y_train.max():
            raise DatasetError(
                f"{name}: {key} has label {y_test.max()}, out of the training labels' range 0-{y_train.max()}"
            )
    if len(np.unique(yf_train)) < 2:
        raise DatasetError(f"{name}: y_train_fine needs at least 2 classes")
    if yc_train is not None and len(np.unique(yc_train)) < 2:
        raise DatasetError(f"{name}: y_train_coarse needs at least 2 classes, or none (a fine head alone): leave the coarse "
                           "labels out")


def make_synthetic(n_train: int = SYNTHETIC_DEFAULT_SIZE, *, seed: int = 0, n_test: int | None = None):
    """A learnable offline stand-in for CIFAR-100: coarse = shape x background texture, fine = colour.

    Twenty coarse classes (5 shapes x 4 background textures) of 5 fine classes each (5 hues of the
    shape); the shape is drawn at a random position and scale, the background at a random grey
    level, and every pixel gets noise.
    """
    n_test = max(100, n_train // 5) if n_test is None else n_test
    root = np.random.SeedSequence(seed)
    train_rng, test_rng = (np.random.default_rng(s) for s in root.spawn(2))
    x_train, yf_train = _synthetic_images(n_train, train_rng)
    x_test, yf_test = _synthetic_images(n_test, test_rng)
    return x_train, yf_train, yf_train // 5, x_test, yf_test, yf_test // 5


_HUES = np.array([[230, 40, 40], [40, 200, 60], [50, 80, 240], [240, 220, 40], [210, 60, 220]], np.float32)


def _synthetic_images(n: int, rng: np.random.Generator):
    fine = rng.permutation(np.arange(n) % 100).astype(np.int64)
    coarse, hue = fine // 5, fine % 5
    shape, texture = coarse % 5, coarse // 5
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    cx, cy = (rng.uniform(10, 22, n).astype(np.float32)[:, None, None] for _ in range(2))
    r = rng.uniform(6, 11, n).astype(np.float32)[:, None, None]
    dx, dy = xx - cx, yy - cy
    dist = np.sqrt(dx**2 + dy**2)
    masks = np.stack([
        dist <= r,  # disc
        np.maximum(abs(dx), abs(dy)) <= 0.75 * r,  # square
        (dy <= 0.7 * r) & (abs(dx) <= (dy + 0.7 * r) * 0.6),  # triangle
        ((abs(dx) <= r / 3) & (abs(dy) <= r)) | ((abs(dy) <= r / 3) & (abs(dx) <= r)),  # cross
        (dist <= r) & (dist >= 0.55 * r),  # ring
    ])
    mask = masks[shape, np.arange(n)]
    patterns = np.stack([
        np.ones_like(xx),  # flat
        0.4 + 0.6 * ((yy // 2) % 2),  # horizontal stripes
        0.4 + 0.6 * ((xx // 2) % 2),  # vertical stripes
        0.4 + 0.6 * (((xx // 2) + (yy // 2)) % 2),  # checker
    ])
    # The texture covers the background, so that it is seen at every position.
    background = rng.uniform(50, 130, n).astype(np.float32)[:, None, None] * patterns[texture]
    images = np.where(mask[..., None], _HUES[hue][:, None, None, :], background[..., None])
    images += rng.normal(0, 12, images.shape).astype(np.float32)
    return np.clip(images, 0, 255).astype(np.uint8), fine
