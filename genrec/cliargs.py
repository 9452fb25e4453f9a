"""Derive argparse flags from config dataclasses, so a flag is declared exactly once.

Every config field carries ``metadata={"help": ...}``: that text is both the why-comment of the
field and the ``--help`` line of its flag. ``from_args`` rebuilds the dataclass from parsed flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(tp: Any) -> Any:
    """Unwrap ``X | None`` to ``X``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per field of ``cls`` (defaults and help text taken from the dataclass)."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        tp = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_text = f.metadata.get("help", "")
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        if tp is bool:
            group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction,
                               help=f"{help_text} (default: {default})", **kwargs)
            continue
        origin = typing.get_origin(tp)
        if origin in (tuple, list):
            (item_tp, *_rest) = typing.get_args(tp) or (str,)
            conv = _base_type(item_tp)
            shown = ",".join(str(x) for x in default) if default else ""
            group.add_argument(_flag(f.name), type=_csv(conv), metavar="A,B,...",
                               help=f"{help_text} (default: {shown})", **kwargs)
            continue
        if origin is dict:
            group.add_argument(_flag(f.name), type=_kv_float, metavar="K=V,...",
                               help=f"{help_text} (default: {_fmt_kv(default)})", **kwargs)
            continue
        choices = f.metadata.get("choices")
        group.add_argument(_flag(f.name), type=tp, choices=choices,
                           help=f"{help_text} (default: {default})", **kwargs)


def from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """Build ``cls`` from parsed flags: only flags given on the command line override defaults."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values.update(overrides)
    return cls(**values)


def _csv(conv: Any):
    def parse(text: str):
        return tuple(conv(x.strip()) for x in text.split(",") if x.strip())
    return parse


def _kv_float(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {part!r}")
        k, v = part.split("=", 1)
        out[k.strip()] = float(v)
    return out


def _fmt_kv(d: Any) -> str:
    return ",".join(f"{k}={v}" for k, v in (d or {}).items())
