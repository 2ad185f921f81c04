"""Companion package of the course *Score-based generative modelling with SDEs*.

One module per idea: ``sde`` (forward SDEs and their kernels), ``toy`` (Gaussian
mixtures with exact scores), ``sampling`` (reverse-time samplers), ``losses``,
``nets``, ``training``, ``likelihood``, ``metrics``, ``plotting`` and ``exercises``.
Import what you need: ``from companion import sde, toy, sampling``.
"""

from importlib.metadata import PackageNotFoundError, version

try:  # the one version is pyproject.toml's; the installed metadata carries it
    __version__ = version("score-sde-companion")
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"
