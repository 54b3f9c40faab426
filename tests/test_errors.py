"""errors.py draws the one exception tree: every exception class edgesched defines is in it."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import edgesched
from edgesched import errors


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(edgesched.__path__, "edgesched."):
        if info.name.endswith("__main__"):
            continue  # running it would run the CLI
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and obj.__module__ == info.name):
                found[f"{info.name}.{name}"] = obj
    return found


def test_every_exception_is_in_the_drawn_tree() -> None:
    classes = _exception_classes()
    assert "edgesched.errors.HttpTimeoutError" in classes  # the walk finds errors.py itself
    tree = errors.__doc__ or ""
    for where, cls in classes.items():
        assert issubclass(cls, errors.EdgeschedError), f"{where} is outside EdgeschedError"
        drawn = any(line.split("── ")[-1].split()[:1] == [cls.__name__]
                    for line in tree.splitlines())
        assert drawn or cls is errors.EdgeschedError, f"{where} is not drawn in errors.py"
        if cls.__module__ != "edgesched.errors":
            module_path = cls.__module__.removeprefix("edgesched.").replace(".", "/") + ".py"
            assert module_path in tree, f"the tree does not say {cls.__name__} is in {module_path}"


def test_a_timeout_is_an_http_error_of_its_own_type() -> None:
    exc = errors.HttpTimeoutError("no answer in 1s")
    assert isinstance(exc, errors.HttpError) and exc.reason == "timeout"
    assert not isinstance(errors.UnauthorizedError("401"), errors.HttpTimeoutError)
