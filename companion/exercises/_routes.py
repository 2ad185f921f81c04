"""Which library routes an exercise refuses, spelled out (internal).

An exercise's ``blocked`` paths name functions as ``"module:attribute.path"``. Two
shorthands keep the lists short and complete:

* ``"module:*"`` is every public function of ``module`` and every public method of the
  classes defined there (a whole module ruled out: "no sampler or step of
  ``companion.sampling``");
* ``"module:Class.*"`` is every public method of one class.

:data:`WHY` says, for the functions that do not compute the answer themselves (a tool the
statement excludes, such as forming a Jacobian), why they are refused.
"""

from __future__ import annotations

import importlib
import inspect

__all__ = ["expand", "WHY"]

# Why a refused function is refused, where "it already computes the answer" is not true.
WHY = {
    "jax:jacfwd": "forms the whole Jacobian, which this exercise rules out",
    "jax:jacrev": "forms the whole Jacobian, which this exercise rules out",
    "jax:hessian": "forms the whole Jacobian, which this exercise rules out",
    "diffrax:diffeqsolve": "is a solver, which this exercise rules out",
    **{f"{m}:{f}": "forms an inverse, which this exercise rules out"
       for m in ("numpy.linalg", "jax.numpy.linalg", "scipy.linalg", "jax.scipy.linalg")
       for f in ("inv", "pinv", "pinvh", "tensorinv")},
}


def _methods(module: str, cls: type) -> list[str]:
    return [f"{module}:{cls.__name__}.{name}" for name, raw in vars(cls).items()
            if not name.startswith("_")
            and (inspect.isfunction(raw) or isinstance(raw, (staticmethod, classmethod)))]


def expand(paths: tuple[str, ...]) -> tuple[str, ...]:
    """``paths`` with every ``"module:*"`` and ``"module:Class.*"`` spelled out, each
    function once, in order."""
    out: list[str] = []
    for path in paths:
        module, _, attrs = path.partition(":")
        if attrs == "*":
            mod = importlib.import_module(module)
            for name in getattr(mod, "__all__", None) or dir(mod):
                obj = getattr(mod, name, None)
                if name.startswith("_") or getattr(obj, "__module__", None) != module:
                    continue
                if inspect.isfunction(obj):
                    out.append(f"{module}:{name}")
                elif inspect.isclass(obj):
                    out.extend(_methods(module, obj))
        elif attrs.endswith(".*"):
            cls = getattr(importlib.import_module(module), attrs[:-2])
            out.extend(_methods(module, cls))
        else:
            out.append(path)
    return tuple(dict.fromkeys(out))
