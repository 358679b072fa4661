"""The one registry mechanism: a name -> object table filled by a decorator, used for passes, builders,
importance scores and surgeries. A lookup of an unknown name is a one-line `CompressError` listing the names."""

from __future__ import annotations

from collections.abc import Callable

from compress.core.errors import CompressError


class Registry(dict):
    """A dict of registered objects with a decorator to fill it and a lookup that names the choices.

    Args:
        kind: what is registered, for messages ("builder", "surgery", "importance score", "pass").
        fix: how to add one, appended to the unknown-name message when there is nothing better to say.
    """

    def __init__(self, kind: str, fix: str = ""):
        super().__init__()
        self.kind, self.fix = kind, fix

    def register(self, name: str, value=None) -> Callable:
        """`@registry.register(name)` over a function, or `registry.register(name, value)`; returns the function."""
        if value is not None:
            self[name] = value
            return value

        def wrap(fn):
            self[name] = fn
            return fn

        return wrap

    def lookup(self, name: str, where: str = ""):
        """The object registered as `name`, or `CompressError` naming the known ones."""
        if name not in self:
            choices = f"use one of: {', '.join(sorted(self))}" if self else self.fix
            raise CompressError(f"unknown {self.kind} '{name}'{where}", choices or None)
        return self[name]
