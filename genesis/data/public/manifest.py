"""A manifest (CSV or YAML) listing volumes: a ``path`` per row, optional split/label/series_uid.

CSV: a header row with a ``path`` column. YAML: a list of entries (a path string or a mapping
with a ``path`` key), optionally under a top-level ``volumes`` key. Relative paths are resolved
against the manifest's folder. Other columns/keys end up in ``VolumeRecord.extra``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import yaml

from genesis.data.public.folder import VolumeRecord
from genesis.errors import DatasetLayoutError

MANIFEST_SUFFIXES = (".csv", ".yaml", ".yml")
_KNOWN = ("path", "series_uid", "split", "label")


def _rows(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetLayoutError(f"cannot read manifest ({exc})", path) from exc
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        fields = [f.strip() for f in (reader.fieldnames or [])]
        if "path" not in fields:
            raise DatasetLayoutError(f"CSV manifest needs a 'path' column, found columns {fields}", path)
        return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DatasetLayoutError(f"invalid YAML manifest ({exc})", path) from exc
    if isinstance(data, dict) and "volumes" in data:
        data = data["volumes"]
    if not isinstance(data, list):
        raise DatasetLayoutError("YAML manifest must be a list of volumes (or have a 'volumes' list)", path)
    return data


def _text(row: dict, key: str) -> str | None:
    """A column/key as stripped text, None when missing or blank."""
    value = row.get(key)
    return str(value).strip() or None if value is not None else None


def read_manifest(path: str | Path, split: str | None = None) -> list[VolumeRecord]:
    """Records of a CSV/YAML manifest, optionally only those of one ``split``.

    Args:
        path: the manifest file.
        split: keep only rows whose ``split`` equals this.
    Returns:
        The records in file order.
    Raises:
        DatasetLayoutError: unreadable or malformed manifest, a row without path, a listed path that
            does not exist (the message names the manifest and row), or no row left.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetLayoutError("manifest not found", path)
    records = []
    for number, row in enumerate(_rows(path), start=1):
        if isinstance(row, str):
            row = {"path": row}
        if not isinstance(row, dict) or not str(row.get("path") or "").strip():
            raise DatasetLayoutError(f"entry {number} has no 'path'", path)
        target = Path(str(row["path"]).strip()).expanduser()
        if not target.is_absolute():
            target = path.parent / target
        if not target.exists():
            raise DatasetLayoutError(f"entry {number}: {target} does not exist", path)
        records.append(
            VolumeRecord(
                path=target,
                series_uid=_text(row, "series_uid"),
                split=_text(row, "split"),
                label=_text(row, "label"),
                extra={k: v for k, v in row.items() if k not in _KNOWN},
            )
        )
    if split is not None:
        records = [r for r in records if r.split == split]
    if not records:
        what = f"no entries with split {split!r}" if split is not None else "manifest lists no volumes"
        raise DatasetLayoutError(what, path)
    return records
