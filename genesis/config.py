"""Configuration as dataclasses: defaults in code, values from YAML, overrides from the CLI.

``load_config(PretrainConfig, "cfg.yaml", {"optim.lr": 0.1})`` builds a (possibly nested)
dataclass, checking that every key exists and converting lists to tuples where the field says so.
The effective configuration is saved next to every checkpoint with :func:`save_config`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from genesis.errors import ConfigError
from genesis.fileio import atomic_write_text

C = TypeVar("C")

#: Largest seed a config accepts. Pretraining mixes 32 bits of every seed part into its step seeds
#: (``genesis.training.engine.step_seed``), so seeds beyond this would repeat smaller seeds' data,
#: and ``torch.manual_seed`` overflows on seeds of 2**64 and more.
MAX_SEED = 2**32 - 1


def check_seed(seed: object, key: str = "seed", runs: int = 1) -> None:
    """Raise a :class:`ConfigError` naming the range unless ``seed`` (and the ``runs - 1`` seeds after
    it, ``seed + 1``, ... for repeated runs) lies in ``[0, MAX_SEED]``."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{key} must be an integer in [0, {MAX_SEED}], got {seed!r}")
    last = seed + max(int(runs), 1) - 1
    if seed < 0 or last > MAX_SEED:
        after = f" (its {runs} runs use seeds {seed} to {last})" if runs > 1 and seed >= 0 else ""
        raise ConfigError(f"{key} must be in [0, {MAX_SEED}] (2**32 - 1){after}, got {seed}")


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses anchors and aliases.

    Nested aliases expand exponentially ("billion laughs": a few hundred bytes that need
    gigabytes); a config file never needs them.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: D401 - PyYAML hook
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            mark = event.start_mark
            raise yaml.YAMLError(
                f"YAML anchors/aliases (&name, *name) are not allowed in config files (line {mark.line + 1})"
            )
        return super().compose_node(parent, index)


def read_yaml_file(path: str | Path) -> Any:
    """Parse a YAML config file without anchors/aliases; every failure is one-line ConfigError.

    Raises:
        ConfigError: missing file, a directory, permission denied, undecodable or invalid YAML,
            anchors/aliases.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError("config file not found", path) from None
    except IsADirectoryError:
        raise ConfigError("is a directory; --config expects a YAML file", path) from None
    except PermissionError:
        raise ConfigError("permission denied", path) from None
    except UnicodeDecodeError:
        raise ConfigError("not a text file (cannot decode it as UTF-8)", path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read ({exc.strerror or exc})", path) from None
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML ({' '.join(str(exc).split())})", path) from None


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict (tuples as lists) of a dataclass config, ready for YAML or JSON."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {str(k): convert(v) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        return value

    return convert(cfg)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML value to the field's annotated type where that is unambiguous."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        real = [arg for arg in args if arg is not type(None)]
        if len(real) == 1:  # Optional[X]: X's own message is the clearest
            return _coerce(value, real[0], where)
        for arg in real:
            try:
                return _coerce(value, arg, where)
            except (ConfigError, TypeError, ValueError):
                continue
        raise ConfigError(f"{where}: cannot use {value!r} as {annotation}")
    if dataclasses.is_dataclass(annotation):
        if isinstance(annotation, type) and isinstance(value, annotation):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(annotation, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if args and len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args or [Any] * len(value)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0] if args else Any, where) for v in value]
    if annotation is float:
        if isinstance(value, str):
            try:  # YAML 1.1 reads "1e-3" (no dot) as a string
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):  # NaN/inf never make sense as a setting (an lr, a window...)
            raise ConfigError(f"{where}: must be a finite number, got {value!r}")
        return float(value)
    if annotation is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if annotation is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if annotation in (int, str, bool) and not isinstance(value, annotation):
        raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")
    if annotation is Path and isinstance(value, str):
        return Path(value)
    return value


def _build(cls: type[C], values: Mapping[str, Any], where: str) -> C:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in values.items()}
    return cls(**kwargs)


def _section_class(cls: type, dotted: str) -> type | None:
    """The dataclass of the section ``dotted`` names in ``cls`` (``"optim"``), or None for a value
    (or an unknown key, which :func:`_build` reports)."""
    node: Any = cls
    for part in dotted.split("."):
        if not (dataclasses.is_dataclass(node) and isinstance(node, type)):
            return None
        node = typing.get_type_hints(node).get(part)
    return node if dataclasses.is_dataclass(node) and isinstance(node, type) else None


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, cls: type) -> None:
    """Set one override; a section (a nested dataclass) takes a mapping only, merged into it.

    Raises:
        ConfigError: a section set to null, a scalar or a list (``--set data=null`` would otherwise
            drop every setting in it and silently fall back to its defaults).
    """
    section = _section_class(cls, dotted)
    if section is not None:
        if not isinstance(value, Mapping):
            fields = [f.name for f in dataclasses.fields(section)]
            raise ConfigError(f"override {dotted}={value!r}: {dotted!r} is a section of settings "
                              f"({', '.join(fields)}), it cannot be removed or replaced by a value; set one of "
                              f"them, e.g. {dotted}.{fields[0]}=...")
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
    if section is not None and isinstance(node.get(parts[-1]), dict):
        _merge(node[parts[-1]], value, f"{dotted}.")  # the section's other settings stay
    else:
        node[parts[-1]] = value


def load_config(
    cls: type[C],
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> C:
    """Build ``cls`` from its defaults, then a YAML file, then dotted-key ``overrides``.

    The file is checked on its own (types and the class's ``validate()``) before the overrides
    are applied, so a preset never hides an error in it. Anchors/aliases are refused
    (:func:`read_yaml_file`); floats must be finite. An override of None means "not given",
    except on a section, where it is an error like any other value that is no mapping; a mapping
    on a section is merged into it.

    Raises:
        ConfigError: unreadable YAML, unknown keys, values of the wrong type, an override that
            removes a section; the message names the file and the key.
    """
    tree: dict[str, Any] = config_to_dict(cls())
    if path is not None:
        path = Path(path)
        loaded = read_yaml_file(path)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError("the top level of a config file must be a mapping", path)
        try:
            _merge(tree, loaded, "")
            # The file on its own must be valid: a preset or flag applied later never hides an
            # error in it (a wrong type, an impossible value).
            _validated(_build(cls, tree, ""))
        except ConfigError as exc:
            message = str(exc.args[0]).removeprefix(f"{exc.path}: ") if exc.path else str(exc)
            raise ConfigError(message, path) from None
    for key, value in (overrides or {}).items():
        if value is not None or _section_class(cls, key) is not None:
            _set_dotted(tree, key, value, cls)
    return _build(cls, tree, "")


def _validated(cfg: C) -> C:
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


def _merge(base: dict[str, Any], new: Mapping[str, Any], where: str) -> None:
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value, f"{where}{key}.")
        else:
            base[key] = value


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the effective configuration as YAML (atomically)."""
    atomic_write_text(Path(path), yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
