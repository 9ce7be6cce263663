"""``--help`` that shows every default: flags filled from config dataclasses show the config's value."""

from __future__ import annotations

import argparse
from typing import Any, Mapping


def config_value(cfg: Any, dotted: str) -> Any:
    """The value of ``a.b.c`` in a (nested) config dataclass."""
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return " ".join(_show(v) for v in value)
    return str(value)


def document_defaults(parser: argparse.ArgumentParser, cfg: Any = None, keys: Mapping[str, str] | None = None,
                      preset_note: str = "") -> argparse.ArgumentParser:
    """Append ``(default: ...)`` to every option's help, taking config-filled flags' defaults from ``cfg``.

    Args:
        parser: the parser (its options' ``default`` stays None where the config fills the value,
            so flags given explicitly can be told apart).
        cfg: a config instance with the defaults (e.g. ``PretrainConfig()``).
        keys: option ``dest`` -> dotted config key.
        preset_note: appended to the description (e.g. that ``--preset`` changes some defaults).
    """
    keys = dict(keys or {})
    for action in parser._actions:  # argparse has no public iterator over options
        if action.dest in ("help",) or action.help == argparse.SUPPRESS:
            continue
        text = action.help or action.dest.replace("_", " ")
        if "default" in text.lower():
            action.help = text
            continue
        if action.dest in keys and cfg is not None:
            value: Any = config_value(cfg, keys[action.dest])
        elif isinstance(action, argparse._StoreTrueAction) or action.default is False:
            value = False
        else:
            value = action.default
        if isinstance(value, list) and not value:
            value = None
        action.help = f"{text} (default: {_show(value)})".replace("%", "%%")
    if preset_note:
        parser.description = f"{parser.description or ''} {preset_note}".strip()
    return parser
