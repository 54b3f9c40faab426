"""Positional constructors for the core's frozen slots dataclasses, for the decision hot path.

A frozen dataclass sets each field through `object.__setattr__` (about 0.1 µs per field
here): a 19-field `Candidate` costs ~2 µs before its validation runs, more than the cost model
spends on it. `fast_constructor(cls)` returns a function taking the fields positionally, in
declaration order, that fills a mutable twin class with the same slots (plain, specialised
attribute stores) and then turns the object into a `cls` instance by assigning `__class__`
(allowed because the two layouts are identical). The result is an ordinary `cls` instance:
equal to, hashing and printing like one built normally, and frozen from then on.

It skips `__post_init__`: use it only for values the core computed itself from inputs that
were validated where they entered (public constructors keep validating).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

T = TypeVar("T")


def mutable_twin(cls: type, names: tuple[str, ...]) -> type | None:
    """A plain class with the same slots as `cls` (so `obj.__class__ = cls` is allowed), or
    None unless `cls` is a slots dataclass whose fields are exactly `names`, in that order."""
    slots = getattr(cls, "__slots__", None)
    if (
        not is_dataclass(cls)
        or tuple(f.name for f in fields(cls)) != names
        or slots is None
        or tuple(slots) != names
    ):
        return None
    return type(f"_{cls.__name__}Builder", (), {"__slots__": names, "__module__": __name__})


def fast_constructor(cls: type[T], names: tuple[str, ...]) -> Callable[..., T]:
    """A positional constructor of `cls` for exactly the fields `names`, in that order.

    If `cls` is not a slots dataclass with exactly those fields (someone added one, or
    reordered them), the regular keyword constructor is returned instead: slower, never wrong.
    """
    twin = mutable_twin(cls, names)
    if twin is None:
        def regular(*values: Any) -> T:
            return cls(**dict(zip(names, values, strict=True)))

        return regular
    args = ", ".join(names)
    body = "".join(f"    o.{n} = {n}\n" for n in names)
    src = f"def make({args}):\n    o = new(twin)\n{body}    o.__class__ = cls\n    return o\n"
    scope: dict[str, Any] = {"new": object.__new__, "twin": twin, "cls": cls}
    # generated from the dataclass's own field names only; named so profiles tell them apart
    exec(compile(src, f"<fast {cls.__name__}>", "exec"), scope)
    make: Callable[..., T] = scope["make"]
    make.__qualname__ = make.__name__ = f"fast_{cls.__name__}"
    make.__doc__ = f"{cls.__name__}({args}), positional, no validation (core-computed values)."
    return make
