"""companion.train_flows: the shipped checkpoints of chapter 8 load and are the models it describes."""

import jax
import jax.numpy as jnp
import numpy as np

from companion import losses, paths, toy, train_flows


def test_shipped_checkpoints_load_and_approximate_the_exact_velocities():
    models = train_flows.load()
    assert set(models) == set(train_flows.NAMES)
    mix = toy.four_gaussians_2d()
    x0 = mix.sample(jax.random.key(0), 4000)
    t = jax.random.uniform(jax.random.key(1), (4000,), minval=1e-3)
    vp_path, rect = paths.from_sde(train_flows.SDE), paths.Rectified()
    cases = [(vp_path, losses.velocity_from_score(vp_path, models["dsm_vp"])), (vp_path, models["fm_vp"]),
             (rect, models["fm_rectified"])]
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
