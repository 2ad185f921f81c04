"""companion.data: the 8x8 digits, dequantisation and the IDX parser (no download)."""

import gzip
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from companion import data


def test_digits_split_is_fixed_disjoint_and_complete():
    tr, ytr = data.load_digits("train")
    te, yte = data.load_digits("test")
    every, y_all = data.load_digits("all")
    assert tr.shape == (1437, 8, 8, 1) and te.shape == (360, 8, 8, 1) and every.shape == (1797, 8, 8, 1)
    assert tr.dtype == np.int32 and ytr.dtype == np.int32
    assert tr.min() == 0 and tr.max() == data.DIGITS_LEVELS - 1
    # the two splits together are the whole data set, each image once
    key = lambda a, y: sorted(map(bytes, np.concatenate([a.reshape(len(a), -1), y[:, None]], 1).astype(np.int8)))
    assert key(np.concatenate([tr, te]), np.concatenate([ytr, yte])) == key(every, y_all)
    again, _ = data.load_digits("test")
    np.testing.assert_array_equal(te, again)
    other, _ = data.load_digits("test", seed=1)
    assert not np.array_equal(te, other)
    # every class is in the test split, roughly 36 each
    assert np.bincount(yte, minlength=10).min() >= 20


@pytest.mark.parametrize("bad", [{"split": "valid"}, {"n_test": 0}, {"n_test": 1797}, {"seed": 1.5}])
def test_digits_bad_arguments(bad):
    with pytest.raises((ValueError, TypeError), match=next(iter(bad))):
        data.load_digits(**bad)


def test_dequantize_stays_in_the_bin_and_to_levels_inverts_it():
    levels = jnp.arange(17).reshape(1, 17, 1, 1) * jnp.ones((200, 1, 1, 1), jnp.int32)
    x = data.dequantize(jax.random.key(0), levels)
    assert x.dtype == jnp.float32 and x.shape == levels.shape
    lo = -1 + 2 * levels / 17
    assert jnp.all(x >= lo) and jnp.all(x < lo + 2 / 17)
    np.testing.assert_array_equal(data.to_levels(x), levels)
    np.testing.assert_array_equal(data.to_levels(data.scale(levels)), levels)
    # uniform within the bin: the mean offset is 1/2 of a bin (200*17 draws, sd 0.29/sqrt(3400))
    offset = (x - lo) * 17 / 2
    assert abs(float(offset.mean()) - 0.5) < 4 * 0.29 / np.sqrt(offset.size)
    assert jnp.all(data.to_levels(jnp.array([[-5.0, 5.0]])) == jnp.array([[0, 16]]))


def test_dequantize_rejects_bad_levels():
    with pytest.raises(ValueError, match="n_levels"):
        data.dequantize(jax.random.key(0), jnp.zeros((2, 3)), n_levels=1)
    with pytest.raises(ValueError, match="levels"):
        data.scale(jnp.zeros((3,)))


def _idx_bytes(array: np.ndarray, code: int, dtype: str) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def test_read_idx_of_a_tiny_file(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 10
    labels = np.array([7, 3], np.uint8)
    (tmp_path / "img.idx").write_bytes(_idx_bytes(images, 0x08, ">u1"))
    (tmp_path / "lab.idx.gz").write_bytes(gzip.compress(_idx_bytes(labels, 0x08, ">u1")))
    got = data.read_idx(tmp_path / "img.idx")
    assert got.dtype == np.uint8 and got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(data.read_idx(str(tmp_path / "lab.idx.gz")), labels)
    # big-endian multi-byte types come back in native order with the right values
    ints = np.array([[1, -2, 300000]], np.int32)
    np.testing.assert_array_equal(data.read_idx(_idx_bytes(ints, 0x0C, ">i4")), ints)
    floats = np.array([1.5, -0.25], np.float64)
    np.testing.assert_array_equal(data.read_idx(_idx_bytes(floats, 0x0E, ">f8")), floats)
    with open(tmp_path / "img.idx", "rb") as f:
        np.testing.assert_array_equal(data.read_idx(f), images)


def test_read_idx_rejects_corrupt_files():
    good = _idx_bytes(np.zeros((2, 2), np.uint8), 0x08, ">u1")
    with pytest.raises(ValueError, match="two zero bytes"):
        data.read_idx(b"\x01" + good[1:])
    with pytest.raises(ValueError, match="type code"):
        data.read_idx(good[:2] + b"\x07" + good[3:])
    with pytest.raises(ValueError, match="bytes"):
        data.read_idx(good[:-1])
    with pytest.raises(TypeError, match="source"):
        data.read_idx(3)


def test_load_mnist_reads_a_cache_without_downloading(tmp_path):
    """The MNIST loader on two tiny IDX files already in its cache: no network."""
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    labels = np.array([0, 1, 2, 3, 4], np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images, 0x08, ">u1")))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(labels, 0x08, ">u1")))
    x, y = data.load_mnist("test", cache_dir=tmp_path, url="http://invalid.invalid/")
    assert x.shape == (5, 28, 28, 1) and y.dtype == np.int32
    np.testing.assert_array_equal(x[..., 0], images)
    with pytest.raises(ValueError, match="split"):
        data.load_mnist("valid", cache_dir=tmp_path)


# --------------------------------------------------------------------------- discrete baselines


def test_pixel_histogram_is_a_smoothed_frequency_table():
    levels = np.array([[[0], [1]], [[0], [2]], [[0], [1]]])[..., None].reshape(3, 2, 1, 1)  # 3 images, 2 pixels
    probs = data.pixel_histogram(levels, 3, alpha=0.5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    # pixel 0: three 0s -> (3.5, 0.5, 0.5) / 4.5; pixel 1: one 2, two 1s -> (0.5, 2.5, 1.5) / 4.5
    np.testing.assert_allclose(probs, np.array([[3.5, 0.5, 0.5], [0.5, 2.5, 1.5]]) / 4.5)
    bits = data.categorical_mixture_bits([1.0], probs[None], levels, 3)
    expected = -(np.log2(3.5 / 4.5) + np.log2(2.5 / 4.5)) / 2  # image 0: levels (0, 1)
    np.testing.assert_allclose(bits[0], expected)


def test_categorical_mixture_bits_is_the_log_of_the_mixture():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=(2, 3))  # K = 2 components, D = 3 pixels, L = 4
    weights = np.array([0.25, 0.75])
    levels = rng.integers(0, 4, size=(5, 3, 1))
    p = sum(w * np.prod(probs[k, np.arange(3), levels[..., 0]], axis=1) for k, w in enumerate(weights))
    np.testing.assert_allclose(data.categorical_mixture_bits(weights, probs, levels, 4), -np.log2(p) / 3)
    with pytest.raises(ValueError, match="levels"):
        data.categorical_mixture_bits(weights, probs, levels + 4, 4)


def test_em_finds_two_clusters_and_beats_one_histogram():
    """Two kinds of 'images' (all pixels low or all high): EM separates them, and the mixture
    codes held-out images in fewer bits than one histogram."""
    rng = np.random.default_rng(1)
    kind = rng.integers(0, 2, size=400)
    levels = np.where(kind[:, None] == 0, rng.integers(0, 3, (400, 16)), rng.integers(5, 8, (400, 16)))
    levels = levels.reshape(400, 4, 4, 1)
    train, test = levels[:300], levels[300:]
    weights, probs = data.fit_categorical_mixture(train, 2, 8, seed=0)
    np.testing.assert_allclose(np.sort(weights), np.sort([np.mean(kind[:300] == k) for k in (0, 1)]), atol=0.01)
    one = data.categorical_mixture_bits([1.0], data.pixel_histogram(train, 8)[None], test, 8).mean()
    two = data.categorical_mixture_bits(weights, probs, test, 8).mean()
    assert two < one - 0.5  # the histogram pays about a bit per pixel for not knowing the kind
    np.testing.assert_allclose(two, np.log2(3), atol=0.1)  # then uniform over 3 levels per pixel


def test_digit_baselines_on_the_test_set():
    """The figures chapter 7 quotes: per-pixel histogram 2.430 and a mixture of 10 about 2.21
    bits/dim on all 360 test digits (deterministic: fixed split and EM seed)."""
    train, _ = data.load_digits("train")
    test, _ = data.load_digits("test")
    hist = data.categorical_mixture_bits([1.0], data.pixel_histogram(train)[None], test)
    assert hist.shape == (360,) and abs(hist.mean() - 2.430) < 0.002
    mixture = data.categorical_mixture_bits(*data.fit_categorical_mixture(train, 10), test)
    assert abs(mixture.mean() - 2.211) < 0.005
