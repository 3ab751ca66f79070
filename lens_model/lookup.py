"""Name registries for laws and selectors, with "did you mean" errors."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from public names to classes, filled by the ``register`` decorator.

    Parameters
    ----------
    kind : str
        What the registry holds ("law", "selector"); used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Return the entry called ``name``; unknown names raise ``KeyError`` with suggestions."""
        if name in self._items:
            return self._items[name]
        by_lower = {k.lower(): k for k in self._items}
        if name.lower() in by_lower:
            return self._items[by_lower[name.lower()]]
        close = difflib.get_close_matches(name, list(self._items), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(
            f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(self._items)}"
        )

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
