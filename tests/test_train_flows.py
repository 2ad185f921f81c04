"""companion.train_flows: the shipped checkpoints of chapter 8 load and are the models it describes."""

import jax
import jax.numpy as jnp
import numpy as np

from companion import losses, paths, toy, train_flows


def test_shipped_checkpoints_load_and_approximate_the_exact_velocities():
    models = train_flows.load()
    assert set(models) == set(train_flows.NAMES)
    for name in train_flows.COMPARED:
        assert len(models[name]) == len(train_flows.SEEDS) >= 3
    mix = toy.four_gaussians_2d()
    x0 = mix.sample(jax.random.key(0), 4000)
    t = jax.random.uniform(jax.random.key(1), (4000,), minval=1e-3)
    vp_path, rect = paths.from_sde(train_flows.SDE), paths.Rectified()
    cases = [(rect, models["fm_rectified"])]
    for seed in range(len(train_flows.SEEDS)):
        cases += [(vp_path, losses.velocity_from_score(vp_path, models["dsm_vp"][seed])),
                  (vp_path, losses.velocity_from_score(vp_path, models["dsm_fmw_vp"][seed])),
                  (vp_path, models["fm_vp"][seed])]
    for path, v in cases:
        xt, _ = path.sample(jax.random.key(2), x0, t)
        u = toy.exact_velocity(mix, path)(xt, t)
        rel = float(jnp.mean(jnp.sum((v(xt, t) - u) ** 2, 1)) / jnp.mean(jnp.sum(u**2, 1)))
        assert rel < 0.08, rel  # a few per cent for trained models; ~1 for an untrained one
    # reflow: nearly straight, and one Euler step lands near the teacher's ODE map
    z = jax.random.normal(jax.random.key(3), (2000, 2))
    teacher, _ = paths.integrate(models["fm_rectified"], z, method="heun", n_steps=50)
    one_step, _ = paths.integrate(models["reflow"], z, method="euler", n_steps=1)
    assert float(jnp.mean(jnp.linalg.norm(one_step - teacher, axis=1))) < 0.1
    untrained = train_flows.velocity_net(0)
    assert not np.allclose(untrained(z, jnp.full((2000,), 0.5)), models["fm_rectified"](z, jnp.full((2000,), 0.5)))


def test_the_compared_models_differ_only_where_the_chapter_says():
    """dsm_vp and dsm_fmw_vp: same architecture and initial weights; fm_vp: the same
    preconditioning, its output not divided by b(t); the control loss is flow matching's
    weight on the noise error, with the draws of the DSM loss."""
    score, velocity = train_flows.score_net(1), train_flows.vp_velocity_net(1)
    assert score.sde is velocity.sde is train_flows.SDE
    assert score.scale_output and not velocity.scale_output
    x = jax.random.normal(jax.random.key(0), (5, 2))
    t = jnp.linspace(0.1, 1.0, 5)
    b = train_flows.SDE.kernel_std(t)[:, None]
    np.testing.assert_allclose(velocity(x, t), score(x, t) * b, rtol=2e-4, atol=1e-6)
    # the control's per-sample loss is the DSM loss ("sigma2") times g^4 / (4 b^2), same draws
    sde = train_flows.SDE
    model = lambda x, t: -x  # any score model
    key = jax.random.key(5)
    dsm = losses.denoising_score_matching(sde).per_sample(model, x, key)
    ctrl = train_flows.dsm_fm_weight(sde).per_sample(model, x, key)
    k_t = jax.random.split(key, 3)[0]
    tt = jax.random.uniform(k_t, (5,), minval=1e-5, maxval=1.0)
    np.testing.assert_allclose(ctrl, dsm * sde.diffusion(tt) ** 4 / (4 * sde.kernel_std(tt) ** 2), rtol=1e-4)
