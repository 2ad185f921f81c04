"""Companion package of the course *Score-based generative modelling with SDEs*.

One module per idea, each with its chapter:

- ``sde``: the forward SDEs (VE, VP, sub-VP) and their Gaussian kernels (chapter 2);
- ``toy``: Gaussian mixtures with exact scores, velocities and conditionals;
- ``nets``: the score networks (MLPs, a time-dependent classifier, a small U-Net);
- ``divergence``: exact and Skilling-Hutchinson divergences (chapters 4 and 5);
- ``losses``: score-matching and flow-matching losses (chapters 4, 6 and 8);
- ``training``: the training loop and checkpoints;
- ``sampling``: the reverse-SDE samplers, their steps and drivers (chapter 3);
- ``ode_sampling``: the probability-flow ODE samplers (chapter 5);
- ``likelihood``: log-likelihoods and the SDE bound (chapter 5);
- ``conditional``: classifier and classifier-free guidance, imputation (chapter 6);
- ``metrics``: sample distances and the mixture statistics with power;
- ``paths``: Gaussian probability paths for flow matching (chapter 8);
- ``consistency``: consistency models, distillation and few-step sampling (chapter 9);
- ``data``: the 8x8 digits and MNIST, dequantisation, discrete baselines (chapter 7);
- ``autoregressive``: the linear autoregressive baseline of the digits (chapter 7);
- ``plotting``: the figures of the chapters;
- ``train_digits``, ``train_flows``: the scripts that made the shipped checkpoints
  (chapters 7 and 8);
- ``exercises``: the exercises' hidden tests and ``exercises.check``;
- ``_common`` (internal): argument checks and jit helpers shared by the modules.

Import what you need: ``from companion import sde, toy, sampling``.
"""

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:  # the one version is pyproject.toml's; the installed metadata carries it
    __version__ = version("score-sde-companion")
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"
