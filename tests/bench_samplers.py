"""Benchmark of the probability flow samplers of companion.ode_sampling against score
evaluations (not a pytest test).

    python tests/bench_samplers.py [--n 10000] [--seeds 3]

With the exact score of ``toy.four_gaussians_2d`` under the VP SDE, for each sampler
and step count: NFE, the sliced Wasserstein distance to an independent data sample (and
the two-sample floor, what two data samples of the same size give), and the RMS distance
to a reference solution of the same ODE from the same prior draws (adaptive Tsit5 at
rtol = atol = 1e-7): the discretisation error alone, free of sampling noise. Mean over
``--seeds`` seeds. Chapter 5 compares the samplers at equal RMS error to the exact flow
and by the fewest evaluations that pass ``metrics.matches_mixture``; the sliced
Wasserstein floor printed here cannot rank samplers that all reach it.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from companion import metrics, ode_sampling, toy
from companion import sde as sdes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    jax.config.update("jax_default_matmul_precision", "highest")

    mix = toy.four_gaussians_2d()
    sde = sdes.VP()
    score = toy.exact_score(mix, sde)
    n = args.n
    shape = (n, 2)
    runs = [("euler_ode", ode_sampling.euler_ode, dict(n_steps=k)) for k in (10, 30, 100)]
    runs += [("heun (karras, rho=7)", ode_sampling.heun, dict(n_steps=k)) for k in (5, 10, 15, 25)]
    runs += [("dpm_solver order 1 (DDIM)", ode_sampling.dpm_solver, dict(n_steps=k, order=1)) for k in (10, 30)]
    runs += [("dpm_solver order 2", ode_sampling.dpm_solver, dict(n_steps=k, order=2)) for k in (10, 20, 30)]
    runs += [("dpm_solver order 3", ode_sampling.dpm_solver, dict(n_steps=k)) for k in (10, 15, 20, 30)]
    runs += [("probability_flow (Tsit5)", ode_sampling.probability_flow, dict(rtol=r, atol=r)) for r in (1e-3, 1e-5)]

    floors, rows = [], {}
    for seed in range(args.seeds):
        k_data, k_data2, k_prior, k_proj = jax.random.split(jax.random.key(seed), 4)
        data = mix.sample(k_data, n)
        sw = lambda x: float(metrics.sliced_wasserstein(k_proj, x, data))
        floors.append(sw(mix.sample(k_data2, n)))
        ref, _ = ode_sampling.probability_flow(sde, score, k_prior, shape, rtol=1e-7, atol=1e-7)
        for name, fn, kw in runs:
            t0 = time.perf_counter()
            x, nfe = fn(sde, score, k_prior, shape, **kw)
            x.block_until_ready()
            seconds = time.perf_counter() - t0
            rms = float(jnp.sqrt(jnp.mean(jnp.sum((x - ref) ** 2, axis=1))))
            rows.setdefault((name, str(kw)), []).append((nfe, sw(x), rms, seconds))

    floor, floor_sd = float(np.mean(floors)), float(np.std(floors, ddof=1)) if len(floors) > 1 else 0.0
    print(f"two-sample floor of sliced_wasserstein at n = {n}: {floor:.4f} +- {floor_sd:.4f} ({args.seeds} seeds)")
    print(f"{'method':28s} {'settings':28s} {'NFE':>5s} {'SW':>8s} {'RMS to ref':>11s} {'s':>6s}")
    for (name, kw), vals in rows.items():
        v = np.asarray(vals, dtype=float).mean(0)
        print(f"{name:28s} {kw:28s} {v[0]:5.0f} {v[1]:8.4f} {v[2]:11.2e} {v[3]:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
