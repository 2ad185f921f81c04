"""companion.nets.UNet: shapes, time conditioning, independence of samples, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from companion import nets
from companion.sde import VP


def _random_unet(shape=(8, 8, 1), seed=0, **kwargs):
    """A UNet with every parameter drawn at random, built from its shapes (running the real
    initialisers eagerly takes seconds): the zero-initialised output convolutions would
    otherwise make the output 0 whatever the input and the time."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: nets.UNet(shape, **kwargs, rngs=nnx.Rngs(0))))
    leaves, tree = jax.tree.flatten(state)
    sizes = [int(np.prod(leaf.shape)) for leaf in leaves]
    flat = 0.2 * jax.random.normal(jax.random.key(seed), (sum(sizes),))
    parts = jnp.split(flat, np.cumsum(sizes)[:-1])
    return nnx.merge(graphdef, jax.tree.unflatten(tree, [p.reshape(l.shape) for p, l in zip(parts, leaves)]))


SMALL = dict(features=(8, 16), embed_dim=16, groups=4)


@pytest.fixture(scope="module")
def unet():
    return _random_unet(**SMALL)


# one compilation per input shape instead of hundreds of eager operations
run = nnx.jit(lambda model, x, t: model(x, t))


def test_shapes_and_dtype(unet):
    x = jax.random.normal(jax.random.key(1), (5, 8, 8, 1))
    out = run(unet, x, 0.3)
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert jnp.all(jnp.isfinite(out))
    np.testing.assert_allclose(run(unet, x, jnp.full(5, 0.3)), out, rtol=1e-5, atol=1e-6)
    # three levels and several channels: 16x8 images, 3 channels
    m = _random_unet((16, 8, 3), features=(4, 8, 8), embed_dim=8, groups=2)
    assert run(m, jnp.ones((2, 16, 8, 3)), jnp.array([0.1, 0.9])).shape == (2, 16, 8, 3)


def test_initial_output_is_zero():
    """Zero-initialised output convolution: an untrained model predicts a zero score."""
    fresh = nets.UNet((8, 8, 1), features=(4,), embed_dim=4, groups=2, rngs=nnx.Rngs(0))
    assert float(jnp.max(jnp.abs(run(fresh, jnp.ones((2, 8, 8, 1)), 0.5)))) == 0.0


def test_time_conditioning_changes_the_output(unet):
    x = jax.random.normal(jax.random.key(2), (4, 8, 8, 1))
    a, b = run(unet, x, 0.1), run(unet, x, 0.9)
    assert float(jnp.mean(jnp.abs(a - b))) > 1e-2 * float(jnp.mean(jnp.abs(a)))
    # per-sample times: sample i sees its own t_i
    ts = jnp.array([0.1, 0.9, 0.1, 0.9])
    mixed = run(unet, x, ts)
    np.testing.assert_allclose(mixed[0], a[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mixed[1], b[1], rtol=1e-5, atol=1e-5)


def test_samples_do_not_interact(unet):
    """GroupNorm is per sample: the output of one sample is the same alone or in a batch, so
    the Jacobian is block diagonal (what the divergence estimators assume)."""
    x = jax.random.normal(jax.random.key(3), (6, 8, 8, 1))
    together = run(unet, x, 0.4)
    alone = jnp.concatenate([run(unet, x[i : i + 1], 0.4) for i in range(6)])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-5)


def test_noise_prediction_parametrisation():
    """With an SDE the input is scaled, the output divided by the kernel std s(t) and the
    time enters as nets.time_input (the normalised log noise level), as in ScoreMLP."""
    sde = VP()
    plain = _random_unet(features=(8,), embed_dim=8, groups=4)
    graphdef, state = nnx.split(plain)
    with_sde = nnx.merge(*nnx.split(nnx.eval_shape(
        lambda: nets.UNet((8, 8, 1), features=(8,), embed_dim=8, groups=4, sde=sde, rngs=nnx.Rngs(0))))[:1], state)
    x = jax.random.normal(jax.random.key(4), (3, 8, 8, 1))
    t = 0.5
    scaled = x / jnp.sqrt(sde.mean_coefficient(t) ** 2 + sde.kernel_std(t) ** 2)
    u = nets.time_input(jnp.asarray(t), sde)
    assert abs(float(u) - t) > 0.05  # the two time inputs differ here, so the test can fail
    np.testing.assert_allclose(run(with_sde, x, t), run(plain, scaled, u) / sde.kernel_std(t), rtol=1e-4, atol=1e-5)


def test_gradients_reach_every_parameter(unet):
    x = jax.random.normal(jax.random.key(5), (4, 8, 8, 1))
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x, 0.5) ** 2)))(unet)
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and min(norms) > 0


@pytest.mark.parametrize("kwargs, match", [
    ({"shape": (8, 8)}, "shape"), ({"shape": (6, 8, 1), "features": (4, 8, 8)}, "divisible"),
    ({"features": ()}, "features"), ({"features": (0, 4)}, "features"), ({"sde": "VP"}, "sde"),
])
def test_bad_construction(kwargs, match):
    args = {"shape": (8, 8, 1), "features": (4, 8)}
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        nets.UNet(args.pop("shape"), **args, rngs=nnx.Rngs(0))


def test_bad_input(unet):
    with pytest.raises(ValueError, match="x"):
        unet(jnp.ones((2, 8, 8)), 0.5)
    with pytest.raises(ValueError, match="t"):
        unet(jnp.ones((2, 8, 8, 1)), jnp.ones(3))
    with pytest.raises(TypeError, match="x"):
        unet(jnp.ones((2, 8, 8, 1), jnp.int32), 0.5)



def test_raw_time_feeds_t_itself():
    """raw_time=True (the first shipped U-Net, Fourier scale 8) feeds t to the embedding
    even with an SDE: the same weights then give another function of t."""
    sde = VP()
    kw = dict(features=(8,), embed_dim=8, groups=4, sde=sde)
    a = _random_unet(**kw)
    b = nnx.merge(nnx.split(nnx.eval_shape(
        lambda: nets.UNet((8, 8, 1), **kw, raw_time=True, rngs=nnx.Rngs(0))))[0], nnx.state(a))
    x = jax.random.normal(jax.random.key(6), (2, 8, 8, 1))
    assert float(jnp.max(jnp.abs(run(a, x, 0.3) - run(b, x, 0.3)))) > 1e-3
    # the default Fourier scale is 2, ScoreMLP's (frequencies ~ N(0, 2^2))
    fresh = nets.UNet((8, 8, 1), features=(4,), embed_dim=64, groups=2, rngs=nnx.Rngs(0))
    assert 1.0 < float(jnp.std(fresh.embed.frequencies[...])) < 3.0


DN = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("hw, k, c_in, c_out", [((2, 2), 3, 32, 32), ((2, 2), 3, 64, 32), ((2, 2), 1, 64, 32),
                                                 ((1, 2), 3, 5, 3), ((2, 2), 2, 4, 6), ((4, 4), 3, 8, 8)])
def test_small_image_conv_equals_lax_conv(hw, k, c_in, c_out):
    """The U-Net's convolutions of images of at most 4 pixels are one matmul (nets._conv): the
    same products as lax's convolution, summed in another order. Each output is a sum of at
    most K = k*k*c_in products; summing K float32 terms in any order errs by at most about
    K * 2^-24 times the sum of their absolute values, so two orders differ by at most twice
    that: the bound below, |x| convolved with |w| (no flaky tolerance, and a wrong tap, a
    transposed kernel or a shifted pixel is off by O(1))."""
    x = jax.random.normal(jax.random.key(0), (6, *hw, c_in))
    w = jax.random.normal(jax.random.key(1), (k, k, c_in, c_out))
    fast = nets._conv(x, w, (1, 1), "SAME", dimension_numbers=DN)
    ref = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN,
                                       precision=jax.lax.Precision.HIGHEST)
    scale = jax.lax.conv_general_dilated(jnp.abs(x), jnp.abs(w), (1, 1), "SAME", dimension_numbers=DN,
                                         precision=jax.lax.Precision.HIGHEST)
    assert fast.shape == ref.shape
    assert bool(jnp.all(jnp.abs(fast - ref) <= 2 * k * k * c_in * 2.0**-24 * scale)), float(jnp.max(jnp.abs(fast - ref)))
    # the matmul only where the images are tiny: larger ones keep XLA's convolution
    jaxpr = str(jax.make_jaxpr(lambda x, w: nets._conv(x, w, (1, 1), "SAME", dimension_numbers=DN))(x, w))
    assert ("conv_general_dilated" in jaxpr) == (hw[0] * hw[1] > 4)


def test_unet_with_small_image_matmuls_equals_plain_convolutions(monkeypatch):
    """The same weights (nnx.Conv kernels, so the shipped checkpoints load unchanged) give the
    same U-Net as XLA's convolution at every level, on the digits' three levels (8x8, 4x4,
    2x2). What differs is the float32 rounding of the 2x2 level's sums, carried through the
    later layers: 1e-4 of the output's scale is ~1000 float32 epsilons, far below what a
    wrong tap would do."""
    model = _random_unet(features=(8, 16, 16), embed_dim=16, groups=4, sde=VP())
    x = jax.random.normal(jax.random.key(7), (5, 8, 8, 1))
    fast = jax.jit(lambda x: model(x, 0.3))(x)
    assert str(jax.make_jaxpr(lambda x: model(x, 0.3))(x)).count("conv_general_dilated") == 15  # of 22: 7 at 2x2
    monkeypatch.setattr(nets, "_MATMUL_PIXELS", 0)  # read when traced: every level by lax
    plain = jax.jit(lambda x: model(x, 0.3))(x)
    assert str(jax.make_jaxpr(lambda x: model(x, 0.3))(x)).count("conv_general_dilated") == 22
    np.testing.assert_allclose(fast, plain, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(plain))))
