"""Datasets: CIFAR-100 from the official archive, synthetic data, user .npz files and their errors."""

import io
import pickle
import socket
import tarfile
import threading

import numpy as np
import pytest

from datasets import ARCHIVES, DatasetError, load_dataset, make_synthetic, source_problem


def write_cifar100_archive(path, n_train=300, n_test=60, folder="cifar-100-python"):
    """A small cifar-100-python.tar.gz in the official format; pixel 0 encodes the image index."""
    rng = np.random.default_rng(0)
    expected = {}
    with tarfile.open(path, "w:gz") as tar:
        for split, n in (("train", n_train), ("test", n_test)):
            data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            data[:, 0] = np.arange(n) % 256  # red channel of the top-left pixel
            data[:, 1] = np.arange(n) // 256
            fine = rng.permutation(np.arange(n) % 100)
            coarse = fine // 5
            batch = {b"batch_label": split.encode(), b"filenames": [b"x.png"] * n, b"data": data,
                     b"fine_labels": fine.tolist(), b"coarse_labels": coarse.tolist()}
            blob = pickle.dumps(batch, protocol=4)
            info = tarfile.TarInfo(f"{folder}/{split}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
            expected[split] = (data, fine, coarse)
    return expected


def write_cifar10_archive(path, n_batch=40, n_test=30):
    """A small cifar-10-python.tar.gz in the official format: five training batches and a test batch."""
    rng = np.random.default_rng(1)
    expected = {}
    with tarfile.open(path, "w:gz") as tar:
        for file, n, offset in [(f"data_batch_{i}", n_batch, (i - 1) * n_batch) for i in range(1, 6)] + [("test_batch", n_test, 0)]:
            data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            data[:, 0] = (offset + np.arange(n)) % 256
            data[:, 1] = (offset + np.arange(n)) // 256
            labels = rng.permutation(np.arange(n) % 10)
            blob = pickle.dumps({b"batch_label": file.encode(), b"labels": labels.tolist(), b"data": data,
                                 b"filenames": [b"x.png"] * n}, protocol=4)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{file}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
            expected[file] = (data, labels)
    return expected


def image_index(x):
    # The index was written into pixel (0, 0) and (0, 1)'s red values (channel-first layout).
    return x[:, 0, 0, 0].astype(int) + 256 * x[:, 0, 1, 0].astype(int)


@pytest.fixture
def offline(monkeypatch):
    """Keras's CIFAR loaders fail as they do without a network, whatever this machine's network and Keras cache hold."""
    def no_network(origin, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] Temporary failure in name resolution")

    for name in ARCHIVES:
        monkeypatch.setattr(f"keras.src.datasets.{name}.get_file", no_network)


def test_cifar100_loads_from_official_archive_in_keras_home(tmp_path, monkeypatch, capsys, offline):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "datasets").mkdir()
    expected = write_cifar100_archive(tmp_path / "datasets" / "cifar-100-python.tar.gz")
    data = load_dataset("cifar100")
    assert data.x_train.dtype == np.uint8 and data.x_train.shape[1:] == (32, 32, 3)
    assert len(data.x_train) + len(data.x_val) == 300 and len(data.x_val) == 30
    assert data.x_test.shape == (60, 32, 32, 3)
    assert data.num_fine == 100 and data.num_coarse == 20
    _, fine, coarse = expected["train"]
    for x, yf, yc in ((data.x_train, data.y_train_fine, data.y_train_coarse), (data.x_val, data.y_val_fine, data.y_val_coarse)):
        idx = image_index(x)
        np.testing.assert_array_equal(yf, fine[idx])
        np.testing.assert_array_equal(yc, coarse[idx])
    data_t, fine_t, _ = expected["test"]
    np.testing.assert_array_equal(data.y_test_fine, fine_t)
    # Channel-first rows of the archive become channel-last images.
    np.testing.assert_array_equal(data.x_test[3], data_t[3].reshape(3, 32, 32).transpose(1, 2, 0))
    assert "warning" not in capsys.readouterr().err  # each coarse class groups 5 fine ones


@pytest.mark.parametrize("folder", ["cifar-100-python", "./cifar-100-python"])  # as the official archive, or as `tar czf` of ./
def test_cifar100_from_data_dir(tmp_path, folder):
    write_cifar100_archive(tmp_path / "cifar-100-python.tar.gz", folder=folder)
    data = load_dataset("cifar100", data_dir=str(tmp_path))
    assert len(data.x_test) == 60
    assert data.digest is None  # the official archive is what it is: no digest for a resume to compare


def test_the_archive_itself_given_as_data_dir_asks_for_its_folder(tmp_path):
    archive = tmp_path / "cifar-100-python.tar.gz"
    write_cifar100_archive(archive)
    assert source_problem("cifar100", str(archive)) == (f"--data-dir {archive} is a file: give the folder that holds "
                                                        "cifar-100-python.tar.gz")


def test_cifar100_through_keras_loader_is_channels_last_whatever_keras_config_says(tmp_path, monkeypatch):
    import keras

    expected = write_cifar100_archive(tmp_path / "cifar-100-python.tar.gz")
    with tarfile.open(tmp_path / "cifar-100-python.tar.gz") as tar:
        tar.extractall(tmp_path / "cache")
    # Keras's own loader, reading the extracted archive where its cache would have it.
    monkeypatch.setattr("keras.src.datasets.cifar100.get_file", lambda **kwargs: str(tmp_path / "cache"))
    keras.config.set_image_data_format("channels_first")  # as a ~/.keras/keras.json can say
    try:
        data = load_dataset("cifar100")
        assert keras.config.image_data_format() == "channels_first"  # left as the user set it
    finally:
        keras.config.set_image_data_format("channels_last")
    assert data.input_shape == (32, 32, 3)
    data_t, fine_t, coarse_t = expected["test"]
    np.testing.assert_array_equal(data.x_test[3], data_t[3].reshape(3, 32, 32).transpose(1, 2, 0))
    np.testing.assert_array_equal(data.y_test_coarse, coarse_t)


def test_cifar10_loads_from_its_official_archive_in_data_dir(tmp_path):
    expected = write_cifar10_archive(tmp_path / "cifar-10-python.tar.gz")
    data = load_dataset("cifar10", data_dir=str(tmp_path))
    assert len(data.x_train) + len(data.x_val) == 200 and data.x_test.shape == (30, 32, 32, 3)
    assert (data.num_fine, data.num_coarse) == (10, 2)
    fine = np.concatenate([expected[f"data_batch_{i}"][1] for i in range(1, 6)])
    for x, yf, yc in ((data.x_train, data.y_train_fine, data.y_train_coarse), (data.x_val, data.y_val_fine, data.y_val_coarse)):
        idx = image_index(x)  # across the five batches
        np.testing.assert_array_equal(yf, fine[idx])
        np.testing.assert_array_equal(yc, np.isin(fine[idx], [0, 1, 8, 9]) == 0)  # vehicles 0, animals 1
    data_t, labels_t = expected["test_batch"]
    np.testing.assert_array_equal(data.y_test_fine, labels_t)
    np.testing.assert_array_equal(data.x_test[5], data_t[5].reshape(3, 32, 32).transpose(1, 2, 0))


def test_missing_cifar100_names_where_to_put_it(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar100")
    message = str(err.value)
    assert message.startswith("CIFAR-100 could not be downloaded ([Errno -3] Temporary failure in name resolution) and "
                              f"{tmp_path / 'datasets' / 'cifar-100-python.tar.gz'} does not exist: put the official "
                              "cifar-100-python.tar.gz there")
    assert "--dataset synthetic" in message and "\n" not in message


def test_a_download_that_gets_no_answer_gives_up_and_says_where_the_archive_goes(tmp_path, monkeypatch):
    import datasets

    # Keras's own cache is a new folder: a CIFAR-10 that this machine has cached is not found there.
    monkeypatch.setattr("keras.src.backend.config._KERAS_DIR", str(tmp_path))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(datasets, "DOWNLOAD_TIMEOUT_S", 1)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    # The download goes through a proxy that takes the connection and never answers, as a firewall that drops
    # packets does; after 30 s it hangs up, so that a loader without a timeout fails this test rather than hangs.
    with socket.create_server(("127.0.0.1", 0)) as blackhole:
        monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{blackhole.getsockname()[1]}")
        hang_up = threading.Timer(30, blackhole.close)
        hang_up.start()
        try:
            with pytest.raises(DatasetError, match=r"^CIFAR-10 could not be downloaded \(timed out\) and "):
                load_dataset("cifar10")
        finally:
            hang_up.cancel()


def test_where_home_cannot_be_written_cifar_is_looked_for_where_keras_keeps_it_then(tmp_path, monkeypatch, offline):
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "no-home"))  # as a read-only home on a cluster: Keras uses /tmp/.keras
    with pytest.raises(DatasetError, match=r"and /tmp/\.keras/datasets/cifar-10-python\.tar\.gz does not exist: put"):
        load_dataset("cifar10")


def test_cifar100_archive_reads_on_a_python_without_tar_extraction_filters(tmp_path, monkeypatch):
    # As on Debian 12's Python 3.11.2: tarfile's extraction filters came with 3.11.4.
    methods = {name: getattr(tarfile.TarFile, name) for name in ("extract", "extractall")}
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    monkeypatch.setattr(tarfile.TarFile, "extract", lambda self, member, path="", set_attrs=True, *, numeric_owner=False:
                        methods["extract"](self, member, path, set_attrs))
    monkeypatch.setattr(tarfile.TarFile, "extractall", lambda self, path=".", members=None, *, numeric_owner=False:
                        methods["extractall"](self, path, members))
    write_cifar100_archive(tmp_path / "cifar-100-python.tar.gz")
    assert len(load_dataset("cifar100", data_dir=str(tmp_path)).x_test) == 60


def test_cifar100_archive_without_its_test_batch_is_refused_naming_it(tmp_path):
    write_cifar100_archive(tmp_path / "full.tar.gz")
    with tarfile.open(tmp_path / "full.tar.gz") as full, tarfile.open(tmp_path / "cifar-100-python.tar.gz", "w:gz") as tar:
        train = full.getmember("cifar-100-python/train")
        tar.addfile(train, full.extractfile(train))
    with pytest.raises(DatasetError, match=r"is not a readable CIFAR-100 archive \(it lacks cifar-100-python/test\)$"):
        load_dataset("cifar100", data_dir=str(tmp_path))


@pytest.mark.parametrize("damage", ["cut short", "not gzip"])
def test_damaged_cifar100_archive_is_refused_in_one_line(tmp_path, damage):
    archive = tmp_path / "cifar-100-python.tar.gz"
    write_cifar100_archive(archive)
    blob = archive.read_bytes()
    archive.write_bytes(blob[: len(blob) // 2] if damage == "cut short" else b"<html>404</html>" * 50)
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar100", data_dir=str(tmp_path))
    message = str(err.value)
    assert "is not a readable CIFAR-100 archive" in message and "\n" not in message


def test_validation_split_is_stratified_and_disjoint():
    data = load_dataset("synthetic", synthetic_size=2000)
    assert len(data.x_val) == 200
    assert np.bincount(data.y_val_fine, minlength=100).tolist() == [2] * 100
    train_rows = {row.tobytes() for row in data.x_train}
    assert not any(row.tobytes() in train_rows for row in data.x_val)


def test_train_subset_is_stratified(capsys):
    data = load_dataset("synthetic", synthetic_size=2000, train_subset=500)
    assert len(data.x_train) == 500
    assert np.bincount(data.y_train_fine, minlength=100).tolist() == [5] * 100
    assert capsys.readouterr().err == ""


def test_a_train_subset_too_small_for_every_class_is_warned_about(capsys):
    data = load_dataset("synthetic", train_subset=60)
    assert len(np.unique(data.y_train_fine)) == 60
    assert capsys.readouterr().err == ("warning: --train-subset 60 leaves 40 fine classes without a training image: "
                                       "a smoke test, whose accuracies say little about the networks\n")


def test_selecting_on_test_trains_on_every_training_image_or_the_subset_asked_and_says_so():
    data = load_dataset("synthetic", train_subset=300)
    assert data.summary().startswith("synthetic: 300 train / 300 validation / 600 test images of 32x32x3")
    on_test = load_dataset("synthetic", select_on="test")
    assert len(on_test.x_train) == 3000  # the validation split's images train too
    assert np.array_equal(on_test.x_val, data.x_test) and np.array_equal(on_test.y_val_fine, data.y_test_fine)
    assert on_test.summary() == ("synthetic: 3000 train (no validation split) / 600 test images of 32x32x3, "
                                 "100 fine classes, 20 coarse classes; the test images select epochs and trials")
    subset = load_dataset("synthetic", select_on="test", train_subset=300)
    assert len(subset.x_train) == 300 and np.bincount(subset.y_train_fine, minlength=100).tolist() == [3] * 100


def test_synthetic_is_deterministic_per_seed_and_grouped_5_per_coarse():
    a, b, c = make_synthetic(300, seed=1), make_synthetic(300, seed=1), make_synthetic(300, seed=2)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    x, fine, coarse = a[:3]
    assert x.shape == (300, 32, 32, 3) and x.dtype == np.uint8
    np.testing.assert_array_equal(coarse, fine // 5)
    assert set(fine.tolist()) == set(range(100)) and set(coarse.tolist()) == set(range(20))


def write_npz(path, coarse=True, **overrides):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (200, 20, 24), dtype=np.uint8),  # grayscale, no channel axis
        "y_train_fine": np.arange(200) % 10,
        "x_test": rng.integers(0, 256, (40, 20, 24), dtype=np.uint8),
        "y_test_fine": np.arange(40) % 10,
    }
    if coarse:
        arrays["y_train_coarse"] = arrays["y_train_fine"] // 5
        arrays["y_test_coarse"] = arrays["y_test_fine"] // 5
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return str(path)


def test_npz_with_coarse_labels(tmp_path, capsys):
    data = load_dataset(write_npz(tmp_path / "d.npz"))
    assert data.input_shape == (20, 24, 1)
    assert (data.num_fine, data.num_coarse) == (10, 2)
    assert len(data.x_train) == 180 and len(data.x_val) == 20
    assert data.horizontal_flip is False
    assert capsys.readouterr().err == ""


def test_npz_whose_coarse_labels_do_not_group_its_fine_ones_is_warned_about(tmp_path, capsys):
    coarse = np.arange(200) % 10 // 5
    coarse[[3, 17, 63]] = 1 - coarse[[3, 17, 63]]  # fine classes 3 and 7, a coarse label out of order
    data = load_dataset(write_npz(tmp_path / "d.npz", y_train_coarse=coarse))
    assert data.num_coarse == 2
    assert capsys.readouterr().err == ("warning: d.npz: fine classes with more than one coarse label: 2 of 10 (3, 7); the "
                                       "coarse classes are meant as groups of fine ones: are the coarse labels in the images' order?\n")


def test_npz_whose_labels_skip_values_is_warned_of_the_heads_outputs_that_no_image_has(tmp_path, capsys):
    fine = {"y_train_fine": np.arange(200) % 10 * 4, "y_test_fine": np.arange(40) % 10 * 4}  # 0, 4, ... 36
    data = load_dataset(write_npz(tmp_path / "d.npz", coarse=False, **fine))
    assert data.num_fine == 37
    assert capsys.readouterr().err == ("warning: d.npz: its images have 10 of the fine labels 0-36, so 27 of the fine head's "
                                       "37 outputs are for no image; number the classes 0-9 for a head of 10\n")
    load_dataset(write_npz(tmp_path / "d.npz", y_train_coarse=np.arange(200) % 10 // 5 * 2,
                           y_test_coarse=np.arange(40) % 10 // 5 * 2))
    assert "of the coarse labels 0-2, so 1 of the coarse head's 3 outputs" in capsys.readouterr().err


def test_npz_without_coarse_labels_has_no_coarse_head(tmp_path):
    data = load_dataset(write_npz(tmp_path / "d.npz", coarse=False))
    assert data.num_coarse is None and data.y_train_coarse is None and not data.has_coarse


def test_npz_images_of_integers_0_to_255_in_a_wider_type_are_read_as_the_uint8_images_they_are(tmp_path):
    path = write_npz(tmp_path / "d.npz")
    with np.load(path) as f:
        as_saved = dict(f)
    wide = write_npz(tmp_path / "wide.npz", x_train=as_saved["x_train"].astype(np.int64),
                     x_test=as_saved["x_test"].astype(np.int16))
    data, expected = load_dataset(wide), load_dataset(path)
    assert data.x_train.dtype == np.uint8 and np.array_equal(data.x_train, expected.x_train)
    assert data.x_test.dtype == np.uint8 and np.array_equal(data.x_test, expected.x_test)


def test_a_npz_datasets_digest_tells_other_images_labels_or_flips_apart_however_the_file_was_saved(tmp_path):
    digest = load_dataset(write_npz(tmp_path / "d.npz")).digest
    with np.load(tmp_path / "d.npz") as f:
        arrays = dict(f)
    # Compressed, labels as int32 and in an N x 1 column: the same images and labels.
    np.savez_compressed(tmp_path / "same.npz", **arrays | {"y_train_fine": arrays["y_train_fine"].astype(np.int32)[:, None]})
    assert load_dataset(str(tmp_path / "same.npz")).digest == digest and len(digest) == 16
    # Whatever --train-subset or --seed draw from it: those the search compares itself.
    assert load_dataset(str(tmp_path / "d.npz"), train_subset=100, seed=4).digest == digest
    pixel, label = arrays["x_test"].copy(), arrays["y_train_coarse"].copy()
    pixel[0, 0, 0] ^= 1
    label[0] = 1 - label[0]
    others = [write_npz(tmp_path / "pixel.npz", x_test=pixel), write_npz(tmp_path / "label.npz", y_train_coarse=label,
                                                                          y_train_fine=arrays["y_train_fine"]),
              write_npz(tmp_path / "flip.npz", horizontal_flip=np.array(True)), write_npz(tmp_path / "fine.npz", coarse=False)]
    assert len({digest, *(load_dataset(path).digest for path in others)}) == 5
    # The synthetic images, drawn from the seed, have none (nor CIFAR's archives: test_cifar100_from_data_dir).
    assert load_dataset("synthetic", synthetic_size=200).digest is None


def test_npz_can_ask_for_horizontal_flips(tmp_path):
    assert load_dataset(write_npz(tmp_path / "d.npz", horizontal_flip=np.array(True))).horizontal_flip


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"y_test_fine": None}, "lacks the key(s) y_test_fine"),
        ({"x_train": np.zeros((200, 20, 24), np.float32)},
         "x_train must be uint8 images (0-255), got dtype float32 (values 0 to 0: save (x * 255).round().astype(numpy.uint8) "
         "for images of 0-1, x.round().astype(numpy.uint8) for 0-255)"),
        ({"x_test": np.full((40, 20, 24), 256)}, "x_test must be uint8 images (0-255), got dtype int64 (values 256 to 256)"),
        ({"y_train_fine": np.arange(199) % 10}, "one label per image"),
        ({"y_train_fine": np.arange(200) % 10 - 1}, "negative labels"),
        ({"y_test_fine": np.arange(40) % 10 + 5}, "out of the training labels' range"),
        ({"y_train_fine": (np.arange(200) % 10).astype(float)}, "integer labels"),
        ({"x_test": np.zeros((40, 21, 24), np.uint8)}, "x_test images are"),
        ({"x_train": np.zeros((200, 20, 24, 2), np.uint8)}, "C 1 or 3"),
        ({"y_test_coarse": None}, "both y_train_coarse and y_test_coarse"),
        ({"y_train_fine": np.zeros(200, int), "y_test_fine": np.zeros(40, int)}, "y_train_fine needs at least 2 classes"),
        # One coarse class: a head whose softmax is always 1, and whose accuracy Keras reported as 0.
        ({"y_train_coarse": np.zeros(200, int), "y_test_coarse": np.zeros(40, int)},
         "y_train_coarse needs at least 2 classes, or none (a fine head alone): leave the coarse labels out"),
        ({"x_test": np.zeros((0, 20, 24), np.uint8), "y_test_fine": np.zeros(0, int), "y_test_coarse": np.zeros(0, int)},
         "x_test holds no images"),
        ({"horizontal_flip": np.array([True, False])}, "horizontal_flip must be one true or false value, got shape (2,)"),
    ],
)
def test_bad_npz_gets_a_one_line_error(tmp_path, overrides, message):
    path = write_npz(tmp_path / "d.npz", **overrides)
    with pytest.raises(DatasetError) as err:
        load_dataset(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_or_unreadable_npz_and_unknown_names(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(str(tmp_path / "nope.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a readable .npz"):
        load_dataset(str(tmp_path / "junk.npz"))
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("imagenet")
    with pytest.raises(DatasetError, match="--data-dir is where the official CIFAR archives lie; synthetic does not read it"):
        load_dataset("synthetic", data_dir=str(tmp_path))
    with pytest.raises(DatasetError, match="cifar-10-python.tar.gz does not exist: put the official"):
        load_dataset("cifar10", data_dir=str(tmp_path))
