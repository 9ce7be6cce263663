"""Export a training checkpoint as released weights: safetensors + model card + manifest snippet.

Our checkpoints are dicts ``{"model": state_dict, "config": {...}, "epoch": ..., ...}`` written by
:func:`genesis.training.checkpoint.save_checkpoint`. The export writes, into ``out_dir``:

* ``<name>.safetensors``: the weights, (z, y, x) layout, with metadata (name, layout, config);
* ``<name>.md``: a model card, Markdown with YAML front matter: the Hugging Face model-card fields
  (``library_name``, ``tags``, ``license``, ``datasets``, ``pipeline_tag``) so the folder can be
  pushed to a model hub as it is, then config, the data it saw (scans by file name and count,
  whether synthetic), proxy task, metrics, sha256. No absolute local path is written into a card;
* ``<name>.yaml``: a manifest entry for ``weights/manifests`` or ``GENESIS_WEIGHTS_REGISTRY``; its
  URL points at the exported file (``file://``) until it is replaced by the published one.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml

from genesis.errors import CheckpointError, ConfigError
from genesis.fileio import atomic_path, atomic_write_text
from genesis.training.checkpoint import load_checkpoint
from genesis.weights.download import sha256_file
from genesis.weights.manifest import NAME_PATTERN, entry_from_dict


@dataclass
class ExportResult:
    weights: Path
    card: Path
    manifest: Path
    sha256: str
    size: int
    synthetic: bool | None


def _find_key(obj: Any, key: str) -> Any:
    """First value of ``key`` anywhere in nested dicts (config layouts differ between engines)."""
    if isinstance(obj, Mapping):
        if key in obj:
            return obj[key]
        for value in obj.values():
            found = _find_key(value, key)
            if found is not None:
                return found
    return None


def _plain(obj: Any) -> Any:
    """Config values as YAML/JSON-friendly builtins."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def _architecture(ckpt: Mapping[str, Any], config: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Network name and constructor arguments: the checkpoint's ``model_name``/``model_kwargs``
    (written by the pretraining engine), else the config's ``model``, else inferred from the weights."""
    if isinstance(ckpt.get("model_name"), str):
        kwargs = ckpt.get("model_kwargs")
        return {"name": ckpt["model_name"], "args": _plain(kwargs) if isinstance(kwargs, Mapping) else {}}
    model = config.get("model")
    if isinstance(model, str) and model != "auto":
        kwargs = config.get("model_kwargs")
        return {"name": model, "args": _plain(kwargs) if isinstance(kwargs, Mapping) else {}}
    if isinstance(model, Mapping):
        name = model.get("name") or model.get("arch") or "unet3d"
        args = model.get("args") or model.get("kwargs") or {k: v for k, v in model.items() if k not in ("name", "arch")}
        return {"name": str(name), "args": _plain(args)}
    if "down_tr64.ops.0.conv1.weight" in state:  # no model config: infer the Genesis U-Net from its weights
        first = state["down_tr64.ops.0.conv1.weight"]
        out = state.get("out_tr.final_conv.weight")
        args = {"in_channels": int(first.shape[1]), "base_width": int(first.shape[0]),
                "up_mode": "transpose" if "up_tr64.up_conv.weight" in state else "upsample"}
        if out is not None:
            args["out_channels"] = int(out.shape[0])
        return {"name": "unet3d" if first.dim() == 5 else "unet2d", "args": args}
    return {"name": "unknown", "args": {}}


def _data_summary(config: Mapping[str, Any], checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """``{"synthetic": True/False/None (unknown), "description": ...}`` from what the run recorded."""
    data = config.get("data", checkpoint.get("data"))
    synthetic: bool | None = checkpoint.get("synthetic") if isinstance(checkpoint.get("synthetic"), bool) else None
    if synthetic is None and isinstance(data, Mapping):
        flag = _find_key(data, "synthetic")
        if flag is None:
            flag = _find_key(data, "is_synthetic")
        if isinstance(flag, bool):
            synthetic = flag
        else:  # DataConfig.data / a "source" key: None or "synthetic" means the synthetic default
            for key in ("data", "source", "path"):
                if key in data and not isinstance(data[key], Mapping):
                    synthetic = data[key] is None or str(data[key]).lower() == "synthetic"
                    break
    elif synthetic is None and isinstance(data, str):
        synthetic = data.strip().lower() == "synthetic"
    return {"synthetic": synthetic, "description": _plain(data)}


def _task_name(config: Mapping[str, Any], checkpoint: Mapping[str, Any]) -> Any:
    task = checkpoint.get("task") or config.get("task", config.get("proxy_task"))
    if isinstance(task, Mapping):
        return _plain(task.get("name", task))
    return _plain(task)


def _metrics(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    metrics = checkpoint.get("metrics") or checkpoint.get("best_metrics") or {}
    if not isinstance(metrics, Mapping):
        return {}
    return {str(k): _plain(v) for k, v in metrics.items() if isinstance(_plain(v), (int, float, str, bool))}


def export_checkpoint(
    checkpoint: str | Path,
    name: str,
    out_dir: str | Path = ".",
    *,
    license: str,
    description: str | None = None,
) -> ExportResult:
    """Write ``<name>.safetensors``, ``<name>.md`` and ``<name>.yaml`` for a training checkpoint.

    Args:
        checkpoint: a training checkpoint.
        name: ``arch.tag`` name of the weights.
        out_dir: output folder (files get the permissions of a plain ``open``: 0666 minus umask).
        license: license of the weights (SPDX id such as ``CC-BY-4.0``); required, never assumed:
            the terms of the training data may restrict it.
        description: first paragraph of the card.
    Raises:
        ConfigError: ``name`` is not ``arch.tag`` style, or no license given.
        CheckpointError: unreadable/unsafe checkpoint or no ``"model"`` state dict in it.
    """
    if not license or not str(license).strip():
        raise ConfigError("export needs a license for the weights (e.g. CC-BY-4.0, Apache-2.0, MIT)")
    if not NAME_PATTERN.match(name):
        raise ConfigError(f"weights name {name!r} must look like 'arch.tag' (lower case, digits, _)")
    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    state = ckpt.get("model", ckpt.get("state_dict"))
    if not isinstance(state, Mapping) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError("no 'model' state dict in this checkpoint", checkpoint)
    left_out: list[str] = []
    if isinstance(ckpt.get("parts"), Mapping):  # a method's module: export its pretrained backbone alone
        from genesis.checkpoint import pretrained_backbone

        backbone_name, backbone_kwargs, state, left_out = pretrained_backbone(dict(ckpt))
        ckpt = {**ckpt, "model_name": backbone_name, "model_kwargs": backbone_kwargs}
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    config = ckpt.get("config") if isinstance(ckpt.get("config"), Mapping) else {}
    config = _plain(config)
    card_config = _no_local_paths(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / f"{name}.safetensors"

    from safetensors.torch import save_file

    metadata = {"format": "genesis", "layout": "zyx", "name": name, "config": json.dumps(config)}
    with atomic_path(weights_path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        # safetensors re-creates the file 0600; published weights get a plain open()'s permissions
        _plain_permissions(tmp)
    digest, size = sha256_file(weights_path), weights_path.stat().st_size

    architecture = _architecture(ckpt, config, tensors)
    data = _data_summary(config, ckpt)
    crop = _find_key(config, "crop")
    window = _find_key(config, "window")
    spacing = _find_key(config, "spacing")
    in_channels = architecture["args"].get("in_channels", 1)
    entry = {
        "name": name,
        "urls": [weights_path.resolve().as_uri()],
        "filename": weights_path.name,
        "sha256": digest,
        "size": size,
        "format": "genesis",
        "architecture": architecture,
        "input": {"layout": "zyx", "channels": in_channels, "crop": _plain(crop)},
        "hu_window": _plain(window) if isinstance(window, (list, tuple)) and len(window) == 2 else None,
        "spacing": _plain(spacing) if isinstance(spacing, (list, tuple)) and len(spacing) == 3 else None,
        "license": license,
        "source": f"genesis-weights export of {checkpoint.name} (epoch {ckpt.get('epoch')})",
        "notes": ("Trained on SYNTHETIC data: for testing only. " if data["synthetic"] else "")
        + (f"The pretrained backbone only: {len(left_out)} tensors of the method's own heads left out. "
           if left_out else "")
        + "Replace the file:// URL with the published location before sharing this entry.",
    }
    entry_from_dict(entry)  # the snippet must be a valid manifest
    manifest_path = out_dir / f"{name}.yaml"
    atomic_write_text(manifest_path, yaml.safe_dump(entry, sort_keys=False))

    scans = _scans(ckpt)
    card_data = {**_no_local_paths(data), **({"scans": scans} if scans else {})}
    dims = 2 if any(v.dim() == 4 for v in tensors.values()) and not any(v.dim() == 5 for v in tensors.values()) else 3
    card_meta = {
        # Hugging Face model-card fields first (https://huggingface.co/docs/hub/model-cards)
        "library_name": "genesis",
        "tags": _tags(architecture["name"], _task_name(config, ckpt), dims, data["synthetic"]),
        **_hf_license(license),
        "datasets": _datasets(config, data["synthetic"]),
        "pipeline_tag": "image-feature-extraction",
        "name": name,
        "sha256": digest,
        "size": size,
        "file": weights_path.name,
        "architecture": architecture,
        "layout": "zyx",
        "proxy_task": _task_name(config, ckpt),
        "method": _plain(ckpt.get("method")) if isinstance(ckpt.get("method"), Mapping) else None,
        "left_out": left_out,
        "data": card_data,
        "metrics": _metrics(ckpt),
        "epoch": _plain(ckpt.get("epoch")),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": card_config,
    }
    card_path = out_dir / f"{name}.md"
    atomic_write_text(card_path, _card_text(card_meta, description))
    return ExportResult(weights_path, card_path, manifest_path, digest, size, data["synthetic"])


def _plain_permissions(path: Path) -> None:
    """``chmod 0666 & ~umask``, what ``open()`` would have given the file."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


#: Licenses the Hugging Face hub knows by id (lower case); anything else is ``other`` + ``license_name``.
HF_LICENSES = frozenset({
    "apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "gpl-2.0", "gpl-3.0", "lgpl-3.0", "agpl-3.0", "mpl-2.0",
    "cc0-1.0", "cc-by-2.0", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0",
    "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0",
    "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "odc-by", "odbl", "pddl", "unlicense", "wtfpl", "openrail",
})


def _hf_license(license: str) -> dict[str, str]:
    """``license`` (and ``license_name`` when the hub does not know the id) for the front matter."""
    key = str(license).strip().lower()
    return {"license": key} if key in HF_LICENSES else {"license": "other", "license_name": str(license).strip()}


def _tags(arch: str, task: Any, dims: int, synthetic: bool | None) -> list[str]:
    tags = ["genesis", "self-supervised", "medical-imaging", "ct", f"{dims}d", str(arch)]
    if task:
        tags.append(str(task))
    if arch == "nnunet":
        tags.append("nnunet")
    if synthetic:
        tags.append("synthetic-data")
    return list(dict.fromkeys(t.replace("_", "-") for t in tags))


def _datasets(config: Mapping[str, Any], synthetic: bool | None) -> list[str]:
    """Names of the training data (the folder or manifest name; never its local path)."""
    if synthetic:
        return ["genesis-synthetic-chest-ct"]
    data = config.get("data")
    source = data.get("data") if isinstance(data, Mapping) else data
    if isinstance(source, str) and source.strip():
        return [_base_name(source)]
    return []


def _base_name(path: str) -> str:
    text = path[len("file://"):] if path.startswith("file://") else path
    return text.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1] or text


def _is_local_path(value: str) -> bool:
    return value.startswith(("/", "~", "file://", "\\\\")) or (len(value) > 2 and value[1] == ":" and value[2] in "/\\")


def _no_local_paths(obj: Any) -> Any:
    """``obj`` with every absolute local path replaced by its last component (a card is public)."""
    if isinstance(obj, Mapping):
        return {k: _no_local_paths(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_no_local_paths(v) for v in obj]
    if isinstance(obj, str) and _is_local_path(obj):
        return _base_name(obj)
    return obj


#: Scan names listed in a card (the count is always complete).
MAX_CARD_SCANS = 200


def _scans(ckpt: Mapping[str, Any]) -> dict[str, Any] | None:
    """``{"count", "train", "val", "names"}`` from the scan file names the pretraining engine recorded."""
    scans = ckpt.get("scans")
    if not isinstance(scans, Mapping):
        return None
    train = [_base_name(str(s)) for s in scans.get("train") or []]
    val = [_base_name(str(s)) for s in scans.get("val") or []]
    names = list(dict.fromkeys(train + val))
    out: dict[str, Any] = {"count": len(names), "train": len(train), "val": len(val), "names": names[:MAX_CARD_SCANS]}
    if len(names) > MAX_CARD_SCANS:
        out["names_truncated"] = True
    return out


def _card_text(meta: dict[str, Any], description: str | None) -> str:
    synthetic = meta["data"]["synthetic"]
    data_line = {
        True: "**Synthetic data.** These weights were pretrained on synthetic chest CT generated by "
        "`genesis.data.synthetic`; they are for testing the pipeline, not for research results or clinical use.",
        False: "Pretrained on the data described in the front matter (`data.description`).",
        None: "The checkpoint does not say which data it saw; treat it as unverified.",
    }[synthetic]
    metrics = meta["metrics"]
    metric_lines = "\n".join(f"| {k} | {v} |" for k, v in metrics.items()) or "| (none recorded) | |"
    body = f"""# {meta['name']}

{description or 'Self-supervised pretrained weights exported with `genesis-weights export`.'}

{data_line}

- Architecture: `{meta['architecture']['name']}` with arguments `{json.dumps(meta['architecture']['args'])}`
- Proxy task: `{meta['proxy_task']}`; epoch {meta['epoch']}
- Array layout (z, y, x); tensors (B, C, D, H, W)
- File `{meta['file']}`, {meta['size']} bytes, sha256 `{meta['sha256']}`

## Metrics

| metric | value |
| --- | --- |
{metric_lines}

## Use

```python
from genesis.models import create_model
from genesis.weights import load_weights

model = create_model("{meta['architecture']['name']}", **{json.dumps(meta['architecture']['args'])})
report = load_weights(model, "{meta['name']}")  # or the path of {meta['file']}
```
"""
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n" + body


def read_card(path: str | Path) -> tuple[dict[str, Any], str]:
    """Split a model card into (front matter, Markdown body)."""
    text = Path(path).read_text()
    if not text.startswith("---\n"):
        raise ConfigError("model card without YAML front matter", path)
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body
