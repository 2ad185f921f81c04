"""Training speed: ``training.fit`` against a plain jitted ``lax.scan`` (and PyTorch eager).

    .venv/bin/python benchmarks/fit_speed.py [--steps 3000] [--repeats 3]

The problem of issue 14: the course's ``ScoreMLP`` (3 hidden layers of 128, Fourier time
embedding, noise-prediction parametrisation), batch 512, denoising score matching under
the VP SDE on the 2-D mixture of chapter 6 (``toy.four_gaussians_2d``), Adam with
clipping and warm-up (``training.make_optimizer``), fresh samples at every step.

* ``fit``: ``training.fit(model, loss, mix.sample, ...)``, ``steps_per_call`` steps per call.
* ``plain scan``: the same network, loss, optimiser and random streams, as the shortest
  jitted ``lax.scan`` of ``value_and_grad`` + ``optax`` (no EMA, no history, no sharding).
* ``torch eager``: a PyTorch copy of ``ScoreMLP`` (the same layers, widths, SiLU, time
  embedding and parametrisation) and of the loss, ``torch.optim.Adam`` + clipping and
  warm-up, one Python step per iteration; only when ``torch`` is importable.

Steps per second exclude compilation (one warm-up call of each, then the best of
``--repeats`` timed runs of ``--steps`` steps). The clock is the process's CPU time
(``--clock cpu``, the default: on a shared machine it counts this process's work
only; XLA:CPU runs one training step on one thread at these sizes) or the wall clock
(``--clock wall``). Not part of the tests.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from companion import losses, nets, toy, training
from companion import sde as sdes

BATCH = 512
CLOCK = time.process_time


def problem():
    vp = sdes.VP()
    mix = toy.four_gaussians_2d()
    model = nets.ScoreMLP(2, hidden=128, depth=3, sde=vp, rngs=nnx.Rngs(0))
    loss = losses.denoising_score_matching(vp)
    tx = training.make_optimizer(1e-3, warmup_steps=100, clip_norm=1.0)
    return vp, mix, model, loss, tx


def time_fit(steps, repeats, steps_per_call):
    """``fit`` jits its loop afresh at each call: a run of ``steps + steps_per_call`` steps
    minus a run of ``steps_per_call`` steps leaves ``steps`` steps without compilation."""
    _, mix, model, loss, tx = problem()
    kw = dict(batch_size=BATCH, key=jax.random.key(0), optimizer=tx,
              steps_per_call=steps_per_call, progress=False)

    def seconds(n):
        t0 = CLOCK()
        _, hist = training.fit(model, loss, mix.sample, steps=n, **kw)
        return CLOCK() - t0, hist

    seconds(steps_per_call)  # warm-up (tracing caches, thread pools)
    short = min(seconds(steps_per_call)[0] for _ in range(repeats))
    runs = [seconds(steps + steps_per_call) for _ in range(repeats)]
    long, hist = min(runs, key=lambda r: r[0])
    return steps / (long - short), float(hist["loss"][steps - 200:steps].mean())


def time_plain_scan(steps, repeats):
    _, mix, model, loss, tx = problem()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    key = jax.random.key(0)

    def loss_of(params, x0, k):
        return loss(nnx.merge(graphdef, params, rest), x0, k)

    @jax.jit
    def run(params, opt_state):
        def step(carry, i):
            params, opt_state = carry
            k_batch, k_loss = jax.random.split(jax.random.fold_in(key, i))
            value, grads = jax.value_and_grad(loss_of)(params, mix.sample(k_batch, BATCH), k_loss)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), value

        (params, opt_state), values = jax.lax.scan(step, (params, opt_state), jnp.arange(steps))
        return params, values

    jax.block_until_ready(run(params, tx.init(params)))  # compile
    best = math.inf
    for _ in range(repeats):
        t0 = CLOCK()
        _, values = jax.block_until_ready(run(params, tx.init(params)))
        best = min(best, CLOCK() - t0)
    return steps / best, float(values[-200:].mean())


def time_torch(steps, repeats, threads=None):
    try:
        import torch
    except ImportError:
        return None
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    vp = sdes.VP()
    beta0, beta1 = float(vp.beta_min), float(vp.beta_max)
    mix = toy.four_gaussians_2d()
    import numpy as np
    means = torch.tensor(np.asarray(mix.means), dtype=torch.float32)
    chol = torch.linalg.cholesky(torch.tensor(np.asarray(mix.covs), dtype=torch.float32))
    probs = torch.tensor(np.asarray(mix.weights), dtype=torch.float32)

    # nets.time_input's affine map of log sigma(t) to [0, 1] over [T_MIN, T]
    def log_sigma(t):
        log_m = -0.25 * t**2 * (beta1 - beta0) - 0.5 * t * beta0
        return 0.5 * torch.log(-torch.expm1(2 * log_m)) - log_m

    lo, hi = (float(log_sigma(torch.tensor(t, dtype=torch.float64))) for t in (nets.T_MIN, vp.T))

    class Net(torch.nn.Module):
        """nets.ScoreMLP(2, hidden=128, depth=3, sde=VP()): the same layers and sizes.
        Fourier features of the normalised log noise level, one projection of them
        (embed_proj) through SiLU, added through a bias-free projection (time_proj) to
        every hidden layer; input divided by sqrt(m^2 + s^2), output by s(t)."""

        def __init__(self, d=2, hidden=128, depth=3, embed=32):
            super().__init__()
            self.register_buffer("w", torch.randn(embed // 2) * 2.0)
            self.embed_proj = torch.nn.Linear(embed, embed)
            widths = [d] + [hidden] * depth
            self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
            self.time_proj = torch.nn.ModuleList(torch.nn.Linear(embed, hidden, bias=False) for _ in range(depth))
            self.out = torch.nn.Linear(hidden, d)

        def forward(self, x, t, s, m):
            angles = 2 * math.pi * ((log_sigma(t) - lo) / (hi - lo))[:, None] * self.w
            e = torch.nn.functional.silu(self.embed_proj(torch.cat([torch.sin(angles), torch.cos(angles)], 1)))
            h = x / torch.sqrt(m**2 + s**2)[:, None]
            for layer, tp in zip(self.layers, self.time_proj):
                h = torch.nn.functional.silu(layer(h) + tp(e))
            return self.out(h) / s[:, None]

    net = Net()
    n_torch, n_flax = sum(p.numel() for p in net.parameters()), nets.count_params(problem()[2])
    assert n_torch == n_flax, f"the PyTorch copy has {n_torch} parameters, ScoreMLP {n_flax}"
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, i / 100))

    def step():
        k = torch.multinomial(probs, BATCH, replacement=True)
        x0 = means[k] + (chol[k] @ torch.randn(BATCH, 2, 1))[..., 0]
        t = torch.rand(BATCH) * (1 - 1e-5) + 1e-5
        log_m = -0.25 * t**2 * (beta1 - beta0) - 0.5 * t * beta0
        m = torch.exp(log_m)
        s = torch.sqrt(-torch.expm1(2 * log_m))
        z = torch.randn(BATCH, 2)
        out = net(m[:, None] * x0 + s[:, None] * z, t, s, m)
        loss = 0.5 * ((s[:, None] * out + z) ** 2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        return loss

    for _ in range(50):
        step()
    best = math.inf
    for _ in range(repeats):
        t0 = CLOCK()
        for _ in range(steps):
            last = step()
        best = min(best, CLOCK() - t0)
    return steps / best, float(last.detach()), torch.__version__, torch.get_num_threads()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps-per-call", type=int, default=500)
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    # torch's default is one thread per core; on a shared 2-core machine its threads
    # contend (measured: 69 steps/s with 2 threads against 396 with 1, cpu clock)
    p.add_argument("--torch-threads", type=int, default=None)
    a = p.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if a.clock == "cpu" else time.perf_counter
    print(f"python {platform.python_version()} | jax {jax.__version__} | devices {jax.devices()} | "
          f"{os.cpu_count()} CPUs | load average {os.getloadavg()[0]:.2f}")
    print(f"ScoreMLP 3x128, batch {BATCH}, VP DSM on four_gaussians_2d, {a.steps} steps, best of {a.repeats}, {a.clock} clock")
    plain, plain_loss = time_plain_scan(a.steps, a.repeats)
    fit, fit_loss = time_fit(a.steps, a.repeats, a.steps_per_call)
    rows = [("plain jitted lax.scan", plain, plain_loss),
            (f"training.fit (steps_per_call={a.steps_per_call})", fit, fit_loss)]
    torch_row = time_torch(a.steps, a.repeats, a.torch_threads)
    for name, rate, last in rows:
        print(f"  {name:42s} {rate:8.0f} steps/s   mean loss, last 200 steps {last:.4f}")
    print(f"  fit / plain scan: {fit / plain:.3f}")
    if torch_row is None:
        print("  torch eager: not measured (torch is not installed)")
    else:
        rate, last, version, threads = torch_row
        print(f"  {'torch ' + version + ' eager (' + str(threads) + ' threads)':42s} {rate:8.0f} steps/s   last loss {last:.4f}")
        print(f"  fit / torch eager: {fit / rate:.3f}")


if __name__ == "__main__":
    sys.exit(main())
