"""Registry of training methods, looked up by name.

A method is one module ``kdcore.methods.<name>`` that defines ``METHOD``, a subclass of
:class:`kdcore.methods.base.Method`. Modules are imported by name on demand, never statically, so a
new method is one new file and the code each run executes is exactly the engine plus its method
(the workflow hashes that import closure to decide what a code change invalidates).
"""

from __future__ import annotations

import importlib
import pkgutil
import re

from kdcore.errors import ConfigError
from kdcore.methods.base import Method

_NOT_METHODS = {"base"}


def available_methods() -> list[str]:
    """Names of every method module in this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_METHODS)


def get_method(name: str) -> type[Method]:
    """The method class registered under ``name``; an unknown name is a ConfigError."""
    allowed = available_methods()
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name not in allowed:
        raise ConfigError(f"config key 'method.name': unknown method {name!r} (allowed: {', '.join(allowed)})")
    module = importlib.import_module(f"kdcore.methods.{name}")
    method = getattr(module, "METHOD", None)
    if not (isinstance(method, type) and issubclass(method, Method)):
        raise ConfigError(f"method module kdcore.methods.{name} defines no METHOD class")
    return method
