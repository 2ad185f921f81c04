"""companion.nets: shapes, the noise-prediction parametrisation, batch independence, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from companion import nets
from companion import sde as sdes


@pytest.fixture(scope="module")
def mlp():
    return nets.ScoreMLP(2, hidden=32, depth=2, rngs=nnx.Rngs(0))


def test_score_mlp_is_a_score_function(mlp):
    x = jax.random.normal(jax.random.key(1), (5, 2))
    assert mlp(x, 0.3).shape == (5, 2)
    out = mlp(x, jnp.linspace(0.1, 1.0, 5))
    assert out.shape == (5, 2) and out.dtype == x.dtype and np.all(np.isfinite(out))
    # a scalar t is the same t for every sample
    np.testing.assert_allclose(mlp(x, 0.3), mlp(x, jnp.full(5, 0.3)), rtol=1e-6)


def test_a_scalar_time_is_embedded_once_per_call(mlp):
    """The samplers pass one time for the batch; the sines of the embedding are then
    computed for one row, not for each of the 64 samples."""
    def sine_shapes(t):
        jaxpr = jax.make_jaxpr(lambda x: mlp(x, t))(jnp.ones((64, 2)))
        return {str(e.outvars[0].aval.shape) for e in jaxpr.eqns if e.primitive.name == "sin"}

    assert sine_shapes(0.3) == {"(1, 16)"}
    assert sine_shapes(jnp.full(64, 0.3)) == {"(64, 16)"}


def test_score_mlp_flattens_data_of_any_shape():
    model = nets.ScoreMLP((3, 4), hidden=16, depth=1, rngs=nnx.Rngs(0))
    x = jnp.ones((2, 3, 4))
    assert model(x, 0.5).shape == (2, 3, 4)


def test_time_matters(mlp):
    x = jnp.ones((1, 2))
    assert not np.allclose(mlp(x, 0.1), mlp(x, 0.9))


def test_samples_do_not_interact(mlp):
    x = jax.random.normal(jax.random.key(2), (4, 2))
    t = jnp.linspace(0.2, 0.8, 4)
    jac = jax.jacfwd(lambda y: mlp(y, t))(x)  # (4, 2, 4, 2)
    off = jac.copy()
    for i in range(4):
        off = off.at[i, :, i, :].set(0.0)
    assert np.all(off == 0.0)


@pytest.mark.parametrize("embedding", ["fourier", "sinusoidal"])
@pytest.mark.parametrize("sde", [sdes.VP(), sdes.VE()], ids=["VP", "VE"])
def test_noise_prediction_parametrisation(embedding, sde):
    """score = network(x / sqrt(m^2 + s^2), u) / s(t), u = normalised log noise level."""
    model = nets.ScoreMLP(2, hidden=16, depth=2, embedding=embedding, sde=sde, rngs=nnx.Rngs(3))
    x = jax.random.normal(jax.random.key(4), (6, 2)) * 3
    t = jnp.array([1e-3, 0.01, 0.1, 0.3, 0.7, 1.0])
    m, s = sde.mean_coefficient(t)[:, None], sde.kernel_std(t)[:, None]
    raw = model.out(model.trunk(x / jnp.sqrt(m**2 + s**2), nets.time_input(t, sde)))
    np.testing.assert_allclose(model(x, t) * s, raw, rtol=2e-4, atol=1e-6)


def test_scale_output_false_keeps_the_preconditioning_and_drops_the_division():
    """scale_output=False: the same input scaling and time input, the output not divided
    by s(t) (chapter 8's velocity model); the default is the score model, unchanged."""
    sde = sdes.VP()
    plain = nets.ScoreMLP(2, hidden=16, depth=2, sde=sde, scale_output=False, rngs=nnx.Rngs(3))
    score = nets.ScoreMLP(2, hidden=16, depth=2, sde=sde, rngs=nnx.Rngs(3))
    assert score.scale_output
    x = jax.random.normal(jax.random.key(4), (5, 2)) * 3
    t = jnp.array([1e-3, 0.1, 0.4, 0.8, 1.0])
    s = sde.kernel_std(t)[:, None]
    np.testing.assert_allclose(plain(x, t), score(x, t) * s, rtol=2e-4, atol=1e-6)


def test_time_input_is_the_normalised_log_noise_level(any_sde):
    sde = any_sde
    u = nets.time_input(jnp.array([nets.T_MIN, 0.01, 0.5, 1.0]), sde)
    np.testing.assert_allclose(np.asarray(u)[[0, 3]], [0.0, 1.0], atol=1e-5)
    assert np.all(np.diff(np.asarray(u)) > 0)
    t = jnp.array([0.2, 0.9])
    np.testing.assert_array_equal(nets.time_input(t, None), t)


def test_fourier_frequencies_are_not_trained(mlp):
    params = nnx.to_pure_dict(nnx.state(mlp, nnx.Param))
    assert "frequencies" not in params["trunk"].get("embed", {})
    buffers = nnx.to_pure_dict(nnx.state(mlp, nets.Buffer))
    assert buffers["trunk"]["embed"]["frequencies"].shape == (16,)
    assert nets.count_params(mlp) > 0


def test_time_classifier_gives_logits():
    clf = nets.TimeClassifier(2, 4, hidden=16, depth=2, rngs=nnx.Rngs(0))
    x = jnp.zeros((7, 2))
    assert clf(x, 0.5).shape == (7, 4)
    grad = jax.grad(lambda y: jax.nn.log_softmax(clf(y, 0.5))[:, 1].sum())(x)
    assert grad.shape == (7, 2)


def test_models_jit():
    model = nets.ScoreMLP(2, hidden=8, depth=1, rngs=nnx.Rngs(0))
    f = nnx.jit(lambda m, x, t: m(x, t))
    np.testing.assert_allclose(f(model, jnp.ones((3, 2)), 0.5), model(jnp.ones((3, 2)), 0.5), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(dim=0), ValueError, "dim"),
        (dict(dim="2"), ValueError, "dim"),
        (dict(dim=2.0), TypeError, "dim"),
        (dict(dim=2, hidden=0), ValueError, "hidden"),
        (dict(dim=2, depth=1.5), TypeError, "depth"),
        (dict(dim=2, embed_dim=7), ValueError, "embed_dim"),
        (dict(dim=2, embedding="learned"), ValueError, "embedding"),
        (dict(dim=2, sde="VP"), TypeError, "sde"),
    ],
)
def test_bad_construction_names_the_argument(kwargs, err, match):
    dim = kwargs.pop("dim")
    with pytest.raises(err, match=match):
        nets.ScoreMLP(dim, rngs=nnx.Rngs(0), **kwargs)


def test_bad_rngs():
    with pytest.raises(TypeError, match="rngs"):
        nets.ScoreMLP(2, rngs=0)
    with pytest.raises(ValueError, match="n_classes"):
        nets.TimeClassifier(2, 0, rngs=nnx.Rngs(0))


def test_bad_call_names_the_argument(mlp):
    with pytest.raises(ValueError, match="x"):
        mlp(jnp.ones((3, 3)), 0.5)
    with pytest.raises(ValueError, match="x"):
        mlp(jnp.ones(2), 0.5)
    with pytest.raises(ValueError, match="t"):
        mlp(jnp.ones((3, 2)), jnp.ones(4))
    with pytest.raises(TypeError, match="x"):
        mlp(jnp.ones((3, 2), dtype=jnp.int32), 0.5)


def test_class_conditional_mlp():
    """ClassConditionalMLP: a score model per label, the null label included; the label
    changes the output; same parametrisation as ScoreMLP."""
    sde = sdes.VP()
    model = nets.ClassConditionalMLP(2, 3, hidden=16, depth=2, sde=sde, rngs=nnx.Rngs(0))
    assert model.null_label == 3
    x = jax.random.normal(jax.random.key(0), (4, 2))
    outs = [model(x, 0.3, y) for y in range(4)]
    assert all(o.shape == (4, 2) and bool(jnp.all(jnp.isfinite(o))) for o in outs)
    assert float(jnp.max(jnp.abs(outs[0] - outs[3]))) > 1e-4
    # per-sample labels: sample i sees its own label
    mixed = model(x, 0.3, jnp.array([0, 3, 0, 3]))
    np.testing.assert_allclose(mixed[1], outs[3][1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mixed[2], outs[0][2], rtol=1e-5, atol=1e-6)
    # one time and a label per sample projects each class once and gathers the rows; a
    # time per sample projects each sample: the same function (float32 rounding)
    labels = jnp.array([0, 3, 2, 1])
    np.testing.assert_allclose(model(x, 0.3, labels), model(x, jnp.full(4, 0.3), labels), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model(x, 0.3, 2), model(x, jnp.full(4, 0.3), jnp.full(4, 2)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="n_classes"):
        nets.ClassConditionalMLP(2, 0, rngs=nnx.Rngs(0))
