"""Every PyTorch forward hook of the library is attached here, and always removed again.

Usage::

    store = {}
    with attached(capture_input({l: down_proj(model, l) for l in (3, 7)}, store, lambda x: x[:, -1])):
        model(ids)                                   # store[3], store[7]: coefficient scores at the last position
    with attached([pre(o_proj(model, 5), scale_rows)]):
        model(ids)                                   # o_proj's input edited for this forward only

A hook is a (module, function, kind) triple: kind "pre" (``fn(module, args)``, may return new
args), "pre_kwargs" (``fn(module, args, kwargs)``, sees keyword inputs) or "post"
(``fn(module, args, output)``, may return a new output). ``attached`` registers them in order and
removes every one on exit, also when the block raises, so a model never keeps a stale hook.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, NamedTuple

from torch import nn

__all__ = ["Hook", "pre", "pre_kwargs", "post", "attached", "capture_input", "capture_output", "layer_input"]


class Hook(NamedTuple):
    module: nn.Module
    fn: Callable
    kind: str                      # "pre" | "pre_kwargs" | "post"


def pre(module: nn.Module, fn: Callable) -> Hook:
    """``fn(module, args)`` before ``module`` runs; a returned tuple replaces its positional inputs."""
    return Hook(module, fn, "pre")


def pre_kwargs(module: nn.Module, fn: Callable) -> Hook:
    """``fn(module, args, kwargs)`` before ``module`` runs (decoder layers take hidden_states by keyword)."""
    return Hook(module, fn, "pre_kwargs")


def post(module: nn.Module, fn: Callable) -> Hook:
    """``fn(module, args, output)`` after ``module`` runs; a returned value replaces its output."""
    return Hook(module, fn, "post")


@contextmanager
def attached(hooks: Iterable[Hook]):
    """Register ``hooks`` (in order) for the block; remove all of them on exit, exceptions included."""
    handles = []
    try:
        for h in hooks:
            if h.kind == "pre":
                handles.append(h.module.register_forward_pre_hook(h.fn))
            elif h.kind == "pre_kwargs":
                handles.append(h.module.register_forward_pre_hook(h.fn, with_kwargs=True))
            elif h.kind == "post":
                handles.append(h.module.register_forward_hook(h.fn))
            else:
                raise ValueError(f"hook kind must be 'pre', 'pre_kwargs' or 'post', got {h.kind!r}")
        yield
    finally:
        for handle in reversed(handles):
            handle.remove()


def layer_input(args, kwargs):
    """A module's main input tensor, passed positionally or as ``hidden_states=``."""
    return args[0] if args else kwargs["hidden_states"]


def capture_input(modules: dict, store: dict, what: Callable = lambda x: x) -> list[Hook]:
    """Hooks that set ``store[key] = what(input)`` for each ``{key: module}`` at every forward."""
    def make(key):
        def hook(module, args, kwargs):
            store[key] = what(layer_input(args, kwargs))
        return hook
    return [pre_kwargs(m, make(k)) for k, m in modules.items()]


def capture_output(modules: dict, store: dict, what: Callable = lambda x: x) -> list[Hook]:
    """Hooks that set ``store[key] = what(output)`` (the first element when the output is a tuple)."""
    def make(key):
        def hook(module, args, output):
            store[key] = what(output[0] if isinstance(output, tuple) else output)
        return hook
    return [post(m, make(k)) for k, m in modules.items()]
