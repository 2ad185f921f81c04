"""Companion package of the course *Score-based generative modelling with SDEs*.

One module per idea: ``sde`` (forward SDEs and their kernels), ``toy`` (Gaussian
mixtures with exact scores), ``sampling`` (reverse-time samplers), ``losses``,
``nets``, ``training``, ``likelihood``, ``metrics``, ``plotting`` and ``exercises``.
Import what you need: ``from companion import sde, toy, sampling``.
"""

__version__ = "0.1.0"
