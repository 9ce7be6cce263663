"""Build the target network and transfer pretrained weights into it.

Zhou et al. 2021 (sec. 3.2, methods digest sections 4 and 6):

* classification targets: the pretrained *encoder* + global average pooling + Linear(512, 1024) ->
  ReLU -> Linear(1024, n) (``encoder_classifier``); ``--linear-probe`` uses a single Linear on frozen
  features instead;
* segmentation targets: the whole pretrained encoder-decoder, its last layer replaced by a new
  1x1x1 convolution (the restoration output layer of the checkpoint is left out, and
  ``load_report.json`` says so under ``left_out`` and ``new_layers``);
* baseline classifiers (Ke et al. 2023: Kinetics-400 video ResNets, ImageNet 2D ResNets, LRCN,
  MedicalNet; ``cfg.model`` or the weights' architecture): see :mod:`finetune.baselines`;
* random baselines: ``uniform`` (U(-0.05, 0.05), the Keras default), ``xavier`` (Glorot uniform),
  ``msra`` (He uniform, bound sqrt(6 / fan_in)) on every conv/linear weight (biases zero), or
  ``scratch`` for PyTorch's own defaults. With ``--weights`` the chosen scheme only initialises the
  layers that are new (output conv, classification head).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from genesis.errors import CheckpointError, ConfigError
from genesis.models import create_model
from genesis.training.checkpoint import load_checkpoint

_INIT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)
#: the U-Net's output layer: segmentation fine-tuning replaces it (Zhou et al. 2021, sec. 3.2)
OUTPUT_LAYER = "out_tr"
_NEW_OUTPUT = ("segmentation fine-tuning gets a new 1x1x1 output layer for the target's classes (Zhou et al. "
               "2021); the checkpoint's output layer was trained for its pretraining task")
_NOT_IN_NETWORK = "no tensor of this name in the network"


def apply_init(module: nn.Module, scheme: str) -> None:
    """Re-initialise conv/linear weights of ``module`` in place (``scratch`` leaves them)."""
    if scheme == "scratch":
        return
    for m in module.modules():
        if not isinstance(m, _INIT_LAYERS):
            continue
        if scheme == "uniform":
            nn.init.uniform_(m.weight, -0.05, 0.05)
        elif scheme == "xavier":
            nn.init.xavier_uniform_(m.weight)
        elif scheme == "msra":
            nn.init.kaiming_uniform_(m.weight, a=0.0, mode="fan_in", nonlinearity="relu")
        else:
            raise ValueError(f"unknown init scheme {scheme!r}")
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def checkpoint_model_kwargs(weights: str | None, task: str = "segmentation") -> dict[str, Any]:
    """Backbone ``model_kwargs`` stored in one of our checkpoints (genesis-pretrain's best.pt), else ``{}``.

    Lets ``--weights runs/demo/pretrain/best.pt`` rebuild the backbone at the width it was
    pretrained with, without the user repeating ``--width``. A 2D U-Net (slice tasks of Tariq et
    al.) transfers too: its kernels are inflated to 3D by :func:`genesis.weights.load_weights`.
    A checkpoint of a label proxy task
    (``encoder_classifier`` around a ``unet3d``) has an encoder only, so it serves classification
    targets only.

    Raises:
        CheckpointError: the checkpoint holds a network that cannot be transferred to ``task``.
    """
    if weights is None or not Path(weights).is_file() or Path(weights).suffix not in (".pt", ".pth"):
        return {}
    ckpt = load_checkpoint(weights)
    if "model_name" not in ckpt and "parts" not in ckpt:
        return {}
    from genesis.checkpoint import checkpoint_parts

    parts = checkpoint_parts(ckpt)  # any method's backbone (format-1 checkpoints migrated)
    name, kwargs = parts["model_name"], dict(parts.get("model_kwargs") or {})
    if name not in ("unet3d", "unet2d"):  # a unet2d's kernels are inflated to 3D on loading
        method = (ckpt.get("method") or {}).get("name") or ckpt.get("task") or "its method"
        raise CheckpointError(f"fine-tuning transfers a U-Net backbone, but this checkpoint's backbone ({method}) "
                              f"is {name!r}", weights)
    return {k: kwargs[k] for k in ("base_width", "up_mode") if k in kwargs}


def encoder_only_backbone(weights: str | None) -> str | None:
    """Why a checkpoint's backbone is an encoder without a decoder (a label task's classifier,
    a contrastive method), or None when it has the whole encoder-decoder."""
    if weights is None or not Path(weights).is_file() or Path(weights).suffix not in (".pt", ".pth"):
        return None
    ckpt = load_checkpoint(weights)
    if "model_name" not in ckpt and "parts" not in ckpt:
        return None
    from genesis.checkpoint import pretrained_backbone

    name, kwargs, state, _ = pretrained_backbone(ckpt)
    if name not in ("unet3d", "unet2d"):
        return None
    prefixes = tuple(create_model(name, **{k: v for k, v in kwargs.items() if k != "out_channels"}).encoder_state_prefixes)
    if any(not k.startswith(prefixes) for k in state):
        return None
    method = (ckpt.get("method") or {}).get("name") or ckpt.get("task") or "its method"
    return (f"the checkpoint's method ({method}) trained the encoder only: the decoder is new, initialised "
            "with --init")


def _in_layer(name: str, layer: str | None) -> bool:
    return layer is not None and (name == layer or name.startswith(layer + "."))


def load_pretrained(dest: nn.Module, weights: str, part: str, hint: str = "is --width right?",
                    replaced: str | None = None, new_reason: str | None = None) -> dict[str, Any]:
    """Load ``weights`` (a checkpoint path or a released name) into ``dest``.

    :func:`genesis.weights.load_weights` handles our checkpoints (U-Nets and saved classifiers),
    the official Models Genesis releases, torchvision/MedicalNet state dicts, checksums and the cache.

    Args:
        replaced: a layer (``"out_tr"``) the caller replaces by a new one after loading: its tensors
            count as left out (not loaded, not missing; a shape mismatch there is no error).
        new_reason: with ``part="encoder"`` into a whole network, why the rest of it is new (its
            tensors are listed under ``new_layers``).
    """
    from genesis.weights import load_weights

    report = load_weights(dest, weights, part=part)
    left_out = [k for k in report.loaded if _in_layer(k, replaced)]
    left_out += [k for k, _, _ in report.mismatched if _in_layer(k, replaced)]
    new_layers = [k for k in dest.state_dict() if _in_layer(k, replaced) and not k.endswith("num_batches_tracked")]
    report.loaded = [k for k in report.loaded if not _in_layer(k, replaced)]
    report.mismatched = [m for m in report.mismatched if not _in_layer(m[0], replaced)]
    report.missing = [k for k in report.missing if not _in_layer(k, replaced)]
    if new_reason is not None:
        new_layers = [k for k in dest.state_dict() if k not in set(report.loaded) and not k.endswith("num_batches_tracked")]
    details = load_report_dict(report, part, left_out, new_layers, new_reason)
    if report.mismatched:
        key, got, want = report.mismatched[0]
        exc = CheckpointError(
            f"{len(report.mismatched)} tensors do not fit the network (e.g. {key}: weights {got} vs "
            f"network {want}); {hint}", weights)
        exc.load_report = details  # the caller writes it to OUT/load_report.json
        raise exc
    if not report.loaded:
        exc = CheckpointError("no parameter names match the network", weights)
        exc.load_report = details
        raise exc
    return {"weights_source": str(report.source), "loaded": len(report.loaded),
            "missing": len(report.missing), "unexpected": len(report.unexpected),
            "inflated_2d_to_3d": len(report.inflated), "load_report": details}


def load_report_dict(report: Any, part: str, replaced: list[str] | None = None,
                     new_layers: list[str] | None = None, new_reason: str | None = None) -> dict[str, Any]:
    """A :class:`genesis.weights.load.LoadReport` as JSON: what was loaded, missing, skipped, mismatched,
    and every tensor of the file left out with the reason (``left_out``).

    Args:
        replaced: tensors of the file in the output layer the network replaces (segmentation).
        new_layers: the network's tensors of that new layer (initialised with ``--init``).
    """
    replaced, new_layers = list(replaced or []), list(new_layers or [])
    left_out = [{"name": k, "reason": _NEW_OUTPUT} for k in replaced]
    left_out += [{"name": k, "reason": _NOT_IN_NETWORK} for k in report.unexpected]
    left_out += [{"name": k, "reason": "belongs to the pretraining method only (its heads, projector, decoder or "
                                       "teacher), not to the pretrained backbone"}
                 for k in getattr(report, "method_only", [])]
    if part == "encoder":
        left_out.append({"name": "every tensor of the file outside the encoder (decoder, output layer, heads)",
                         "reason": new_reason or "this target transfers the pretrained encoder only (a new head is trained)"})
    if new_reason:
        summary = report.summary() + f"; decoder and output layer new ({new_reason})"
    else:
        summary = report.summary() + ("; output layer new (1x1x1, initialised with --init)" if new_layers else "")
    return {
        "source": str(report.source),
        "part": part,
        "target": report.target,
        "converted": report.converted,
        "summary": summary,
        "loaded": list(report.loaded),
        "missing": list(report.missing),
        "skipped_unexpected": list(report.unexpected),
        "shape_mismatches": [{"name": k, "weights": list(a), "network": list(b)} for k, a, b in report.mismatched],
        "inflated_2d_to_3d": list(report.inflated),
        "left_out": left_out,
        "new_layers": new_layers,
        "new_layers_reason": new_reason or (_NEW_OUTPUT if new_layers else None),
    }


def build_model(
    task: str, cfg: Any, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 1
) -> tuple[nn.Module, str, dict[str, Any], dict[str, Any]]:
    """The network of a target, with pretrained weights and initialisation applied.

    Args:
        task: ``"segmentation"`` or ``"classification"``.
        cfg: a :class:`finetune.config.FinetuneConfig`.
        spatial_dims: 3 (``unet3d``) or 2 (``unet2d``; the generic targets on 2D images).
        in_channels: image channels (several for multi-sequence MRI).
        out_channels: 1 for binary targets (sigmoid), K for K classes (softmax).

    Returns:
        ``(model, model_name, model_kwargs, transfer_info)``; name and kwargs rebuild the model
        with :func:`genesis.models.create_model` (stored in our checkpoints). ``transfer_info``
        has ``model`` (``unet3d`` or the baseline) and, with weights, ``weights_source``.

    Raises:
        ConfigError: a baseline (``cfg.model`` or the weights' architecture) on a segmentation
            target, or weights made for another architecture (:func:`finetune.baselines.resolve_model`).
    """
    from finetune.baselines import build_baseline, resolve_model

    choice = resolve_model(cfg, task)
    if choice.is_baseline:
        def load(model: nn.Module, weights: str, part: str) -> dict[str, Any]:
            return load_pretrained(model, weights, part, hint=f"are these weights for {choice.name!r}?")

        if spatial_dims != 3 or in_channels != 1:
            raise ConfigError(f"baseline {choice.name!r} takes 3D single-channel crops; this target has "
                              f"{spatial_dims}D images with {in_channels} channel(s): use the U-Net (leave --model out)")
        return build_baseline(choice, cfg, load, apply_init, num_classes=out_channels)
    unet = "unet3d" if spatial_dims == 3 else "unet2d"
    if choice.name != unet and (cfg.model or choice.weights_architecture):
        raise ConfigError(f"--model {choice.name} is a {5 - spatial_dims}D network, but this target's images are "
                          f"{spatial_dims}D: use --model {unet} (or leave --model out)")
    backbone_kwargs: dict[str, Any] = {"base_width": cfg.width}
    backbone_kwargs.update(checkpoint_model_kwargs(cfg.weights, task))
    info: dict[str, Any] = {"model": unet, "weights": cfg.weights, "init": cfg.init, "freeze": cfg.freeze,
                            "linear_probe": cfg.linear_probe, "base_width": backbone_kwargs["base_width"]}
    if task == "segmentation":
        if cfg.linear_probe:
            raise ConfigError("--linear-probe is for classification targets (ncc, ecc, pe); "
                              "for segmentation use --freeze encoder")
        name = unet
        kwargs = {"in_channels": in_channels, "out_channels": out_channels, **backbone_kwargs}
        # pretrained restoration networks have one output channel: load into that shape, then replace it
        model = create_model(name, **{**kwargs, "out_channels": 1} if cfg.weights else kwargs)
        encoder_only = encoder_only_backbone(cfg.weights)
        if cfg.weights and encoder_only:  # contrastive / label methods: their encoder, a new decoder
            apply_init(model, cfg.init)
            info.update(load_pretrained(model, cfg.weights, part="encoder", new_reason=encoder_only))
            model.replace_output(out_channels)
            apply_init(model.out_tr, cfg.init)
        elif cfg.weights:
            info.update(load_pretrained(model, cfg.weights, part="full", replaced=OUTPUT_LAYER))
            model.replace_output(out_channels)  # a new 1x1x1 output layer for the target
            apply_init(model.out_tr, cfg.init)
        else:
            apply_init(model, cfg.init)
        if cfg.freeze == "encoder":
            prefixes = tuple(model.encoder_state_prefixes)
            for pname, p in model.named_parameters():
                if pname.startswith(prefixes):
                    p.requires_grad_(False)
        info["model_kwargs"] = kwargs
        return model, name, kwargs, info

    name = "encoder_classifier"
    kwargs = {"encoder": unet, "num_classes": out_channels,
              "hidden": None if cfg.linear_probe else cfg.head_hidden, **backbone_kwargs}
    if in_channels != 1:
        kwargs["encoder_kwargs"] = {"in_channels": in_channels}
    model = create_model(name, **kwargs)
    if cfg.weights:
        info.update(load_pretrained(model, cfg.weights, part="encoder"))
        for child_name, child in model.named_children():
            if child_name != "backbone":
                apply_init(child, cfg.init)
    else:
        apply_init(model, cfg.init)
    if cfg.freeze == "encoder" or cfg.linear_probe:
        model.freeze_backbone()
    info["model_kwargs"] = kwargs
    return model, name, kwargs, info


def frozen_batchnorm_eval(model: nn.Module) -> None:
    """Put batch-norm layers whose parameters are frozen in eval mode (keep their statistics).

    Call after ``model.train()``: a frozen encoder must not drift through running statistics.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()
