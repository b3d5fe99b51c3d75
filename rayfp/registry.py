"""One way to look names up: every registry (metrics, backbones, tables, component kinds,
wire dtypes and compressions) fails the same way on an unknown name, with the valid choices
and a "did you mean" (as MONAI's ``look_up_option`` does)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from rayfp.errors import ConfigError, UnknownNameError

T = TypeVar("T")


def look_up(kind: str, name: str, valid: Iterable[str]) -> str:
    """``name`` if it is one of ``valid``, else :class:`UnknownNameError` naming the choices.

    >>> look_up("compression", "zlib", ("none", "zlib"))
    'zlib'
    """
    valid = list(valid)
    if name not in valid:
        raise UnknownNameError(kind, str(name), valid)
    return name


class Registry(Generic[T]):
    """Name -> item, filled by :meth:`register` (usable as a decorator), read by :meth:`get`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T | None = None) -> T | Callable[[T], T]:
        def add(value: T) -> T:
            if name in self._items:
                raise ConfigError(f"{self.kind} {name!r} is already registered")
            self._items[name] = value
            return value

        return add(item) if item is not None else add

    def get(self, name: str) -> T:
        look_up(self.kind, name, self._items)
        return self._items[name]

    def names(self) -> list[str]:
        """Registered names in registration order (the order help texts list them in)."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
