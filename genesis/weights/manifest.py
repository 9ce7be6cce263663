"""Weight manifests: what a released checkpoint is, where it lives and how to check it.

One YAML file per released model in ``weights/manifests/`` (the built-in registry); users add
entries with YAML files named by ``GENESIS_WEIGHTS_REGISTRY`` (several files separated by
``os.pathsep``). A user file holds one entry (a mapping with ``name``), a list of entries, or a
mapping ``{"weights": [...]}``. Names follow timm's ``arch.tag`` style, e.g.
``unet3d.genesis_chest_ct``.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import unquote

from genesis.config import read_yaml_file
from genesis.errors import ConfigError, UnknownNameError

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_]*(\.[a-z0-9][a-z0-9_\-]*)+$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
PREFIX_PATTERN = re.compile(r"^[0-9a-f]{6,63}$")

#: How the file is laid out; the loader picks its converter from it.
FORMATS = (
    "genesis",  # our checkpoints / exports: {"model": state_dict} .pt or .safetensors, (z, y, x)
    "official-genesis-pt",  # MrGiovanni/ModelsGenesis Genesis_Chest_CT.pt, (x, y, z) kernels
    "keras-genesis-h5",  # MrGiovanni/ModelsGenesis Genesis_Chest_CT.h5 (Keras, (x, y, z))
    "torchvision",  # a plain torchvision state_dict
    "medicalnet",  # Tencent MedicalNet {"state_dict": {"module.conv1.weight": ...}}
    "pytorchvideo",  # PyTorchVideo zoo / PENet checkpoints {"model_state": {...}} (".module" prefix stripped)
    "state-dict",  # any other plain state_dict
)


@dataclass
class WeightsEntry:
    """One released checkpoint.

    Attributes:
        name: ``arch.tag`` name.
        urls: mirrors tried in order (``https://``, ``http://`` or ``file://``).
        filename: name of the file in the cache (default: last part of the first URL).
        sha256: full hex digest, or None when upstream publishes none (then the first download
            records it, trust-on-first-use, and later uses are checked against the record).
        sha256_prefix: a published digest prefix (torchvision puts one in its file names).
        size: bytes, when known.
        format: one of :data:`FORMATS`.
        architecture: ``{"name": registered model or upstream builder, "args": {...}}``.
        input: ``{"layout": "zyx"|"xyz"|..., "channels": int, "crop": [D, H, W]}``.
        hu_window: HU window the model expects, or None (non-CT pretraining).
        spacing: voxel spacing (z, y, x) in mm the model saw, or None.
        license, paper, source, notes: free text.
        example: True for templates that must never be downloaded.
        origin: the YAML file the entry came from (filled in by the loader).
    """

    name: str
    urls: list[str] = field(default_factory=list)
    filename: str | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None
    size: int | None = None
    format: str = "state-dict"
    architecture: dict[str, Any] = field(default_factory=dict)
    input: dict[str, Any] = field(default_factory=dict)
    hu_window: list[float] | None = None
    spacing: list[float] | None = None
    license: str | None = None
    paper: str | None = None
    source: str | None = None
    notes: str | None = None
    example: bool = False
    origin: str | None = None

    @property
    def cache_filename(self) -> str:
        if self.filename:
            return self.filename
        if not self.urls:
            return f"{self.name}.bin"
        return self.urls[0].split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or f"{self.name}.bin"

    @property
    def checksum_status(self) -> str:
        """``published``, ``prefix`` (only a digest prefix is published) or ``unknown-upstream``."""
        if self.sha256:
            return "published"
        if self.sha256_prefix:
            return "prefix"
        return "unknown-upstream"

    def to_dict(self) -> dict[str, Any]:
        """The manifest mapping (without ``origin``), ready for ``yaml.safe_dump``."""
        data = asdict(self)
        data.pop("origin")
        return data


_FIELDS = set(WeightsEntry.__dataclass_fields__) - {"origin"}


def _safe_filename(name: str) -> bool:
    """A single path component that stays inside the cache folder."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0") and ".." not in name


def entry_from_dict(data: Mapping[str, Any], origin: str | Path | None = None) -> WeightsEntry:
    """Validate a manifest mapping and build a :class:`WeightsEntry`.

    Raises:
        ConfigError: unknown keys, a bad name, checksum or format; the message names ``origin``.
    """
    where = str(origin) if origin is not None else None
    if not isinstance(data, Mapping):
        raise ConfigError(f"a weights entry must be a mapping, found {type(data).__name__}", where)
    unknown = set(data) - _FIELDS
    if unknown:
        raise ConfigError(f"unknown manifest keys {sorted(unknown)}; allowed: {sorted(_FIELDS)}", where)
    values = dict(data)
    name = values.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConfigError(f"weights name {name!r} must look like 'arch.tag' (lower case, digits, _)", where)
    urls = values.get("urls") or []
    if isinstance(urls, str):
        urls = [urls]
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise ConfigError(f"{name}: 'urls' must be a list of strings", where)
    for url in urls:
        if not url.startswith(("https://", "http://", "file://")):
            raise ConfigError(f"{name}: unsupported URL scheme in {url!r} (https, http or file)", where)
    values["urls"] = urls
    for key, pattern in (("sha256", SHA256_PATTERN), ("sha256_prefix", PREFIX_PATTERN)):
        digest = values.get(key)
        if digest in (None, "", "unknown"):
            values[key] = None
        elif not isinstance(digest, str) or not pattern.match(digest.lower()):
            raise ConfigError(f"{name}: {key} {digest!r} is not a lower-case hex digest", where)
        else:
            values[key] = digest.lower()
    fmt = values.get("format", "state-dict")
    if fmt not in FORMATS:
        raise ConfigError(f"{name}: unknown format {fmt!r}; known: {', '.join(FORMATS)}", where)
    filename = values.get("filename")
    if filename is not None and (not isinstance(filename, str) or not _safe_filename(filename)):
        raise ConfigError(f"{name}: filename {filename!r} must be a plain file name (no '/', '\\' or '..')", where)
    if not filename and urls:
        derived = urls[0].split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        if derived and not _safe_filename(unquote(derived)):
            raise ConfigError(f"{name}: the file name {derived!r} taken from its URL is not a plain file name; "
                              "set 'filename'", where)
    if values.get("size") is not None and (not isinstance(values["size"], int) or values["size"] <= 0):
        raise ConfigError(f"{name}: size must be a positive number of bytes", where)
    if not values.get("example") and not urls:
        raise ConfigError(f"{name}: no 'urls' (only entries marked 'example: true' may omit them)", where)
    return WeightsEntry(**values, origin=where)


def read_manifest_file(path: str | Path) -> list[WeightsEntry]:
    """Read one YAML file: a single entry, a list of entries or ``{"weights": [...]}``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("weights registry file not found", path)
    data = read_yaml_file(path)  # no anchors/aliases: a registry file is untrusted input
    if data is None:
        return []
    if isinstance(data, Mapping) and "name" not in data and "weights" in data:
        data = data["weights"]
    items = data if isinstance(data, list) else [data]
    return [entry_from_dict(item, path) for item in items]


def builtin_manifest_files() -> list[Path]:
    """The manifests shipped in ``weights/manifests`` (files starting with ``_`` are templates)."""
    from weights import MANIFEST_DIR

    return sorted(p for p in MANIFEST_DIR.glob("*.yaml") if not p.name.startswith("_"))


class WeightsRegistry:
    """Name -> :class:`WeightsEntry`; user files may add entries or override built-in ones."""

    def __init__(self, entries: Iterable[WeightsEntry] = ()) -> None:
        self._entries: dict[str, WeightsEntry] = {}
        for entry in entries:
            self._entries[entry.name] = entry  # later files override earlier ones

    @classmethod
    def load(cls, extra_files: Iterable[str | Path] = (), include_builtin: bool = True) -> "WeightsRegistry":
        files = list(builtin_manifest_files()) if include_builtin else []
        files += [Path(f) for f in extra_files]
        entries: list[WeightsEntry] = []
        for path in files:
            entries.extend(read_manifest_file(path))
        return cls(entries)

    def get(self, name: str) -> WeightsEntry:
        try:
            return self._entries[name]
        except KeyError:
            available = ", ".join(self.names()) or "none"
            raise UnknownNameError(f"unknown weights {name!r}; available: {available}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[WeightsEntry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def default_cache_dir(env: Mapping[str, str]) -> Path:
    """``$GENESIS_CACHE``, else ``$XDG_CACHE_HOME/genesis``, else ``~/.cache/genesis``."""
    if env.get("GENESIS_CACHE"):
        return Path(env["GENESIS_CACHE"]).expanduser()
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]).expanduser() / "genesis"
    return Path.home() / ".cache" / "genesis"


@dataclass
class WeightsSettings:
    """Where weights are cached, which registry files to add, and whether the network may be used.

    Library functions take one of these; only the CLI (or a ``None`` default at the top level)
    reads the environment, through :meth:`from_env`.
    """

    cache_dir: Path
    registry_files: list[Path] = field(default_factory=list)
    offline: bool = False
    progress: bool = True
    timeout: float = 60.0
    retries: int = 3
    #: Overall limit in seconds for one file, all retries included (``--timeout``): a server that
    #: trickles bytes or stalls never holds a run for longer.
    deadline: float = 1800.0
    #: Limit in seconds, summed over all retries of one file, on waiting for a server to accept the
    #: connection and send its response headers: one that accepts and never answers fails after this
    #: long in all, not after every attempt's ``timeout``.
    connect_deadline: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "WeightsSettings":
        """Build settings from ``GENESIS_CACHE``, ``GENESIS_WEIGHTS_REGISTRY``, ``GENESIS_OFFLINE`` and
        ``GENESIS_DOWNLOAD_TIMEOUT`` (seconds per file: the ``deadline``; ``genesis-weights --timeout``
        overrides it). Every entry point that downloads (``genesis-finetune --weights NAME``, baselines'
        pretrained weights) builds its settings here, so one variable bounds them all."""
        env = os.environ if env is None else env
        files = [Path(p) for p in env.get("GENESIS_WEIGHTS_REGISTRY", "").split(os.pathsep) if p.strip()]
        offline = env.get("GENESIS_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
        settings = cls(cache_dir=default_cache_dir(env), registry_files=files, offline=offline)
        raw = env.get("GENESIS_DOWNLOAD_TIMEOUT", "").strip()
        if raw:
            try:
                deadline = float(raw)
            except ValueError:
                deadline = float("nan")
            if not deadline > 0 or deadline == float("inf"):
                raise ConfigError(f"GENESIS_DOWNLOAD_TIMEOUT must be a positive number of seconds, got {raw!r}")
            settings.deadline = deadline
        for key, value in overrides.items():
            if value is not None:
                setattr(settings, key, value)
        settings.cache_dir = Path(settings.cache_dir)
        return settings

    def registry(self) -> WeightsRegistry:
        return WeightsRegistry.load(self.registry_files)
