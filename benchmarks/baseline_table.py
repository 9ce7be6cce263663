"""Print the README's comparison table of the Ke et al. baselines, parameter counts computed.

    python benchmarks/baseline_table.py            # Markdown table on stdout

Counts are of the networks as released (their Kinetics-400 / ImageNet / Kinetics-600 heads); the
fine-tuned networks replace the head by one logit.
"""

from __future__ import annotations

from genesis.models import count_parameters, create_model

# name, constructor args, pretraining data, input, aggregation
ROWS = [
    ("r3d_18", {}, "Kinetics-400 (torchvision)", "3D window, 32 slices", "max over windows"),
    ("mc3_18", {}, "Kinetics-400 (torchvision)", "3D window, 32 slices", "max over windows"),
    ("r2plus1d_18", {}, "Kinetics-400 (torchvision)", "3D window, 32 slices", "max over windows"),
    ("s3d", {}, "Kinetics-400 (torchvision)", "3D window, 32 slices (>= 8)", "max over windows"),
    ("mvit_v2_s", {}, "Kinetics-400 (torchvision)", "3D window, 32 slices", "class token; max over windows"),
    ("swin3d_t", {}, "Kinetics-400 (torchvision)", "3D window, 32 slices", "max over windows"),
    ("slow_r50", {}, "Kinetics-400 (PyTorchVideo)", "3D window, 32 slices", "max over windows"),
    ("slowfast_r50", {}, "Kinetics-400 (PyTorchVideo)", "3D window, 32 slices (Slow: every 4th)", "max over windows"),
    ("r2plus1d_r50", {}, "Kinetics-400 (PyTorchVideo)", "3D window, 32 slices", "max over windows"),
    ("csn_r101", {}, "Kinetics-400 (PyTorchVideo)", "3D window, 32 slices", "max over windows"),
    ("penet", {}, "Kinetics-600 (authors; manual download)", "3D window, 24 slices", "max over windows"),
    ("resnet18", {}, "ImageNet-1k (torchvision)", "2D, each slice of a window", "max over slices, then windows"),
    ("resnext101_32x8d", {}, "ImageNet-1k (torchvision)", "2D, each slice of a window", "max over slices, then windows"),
    ("lrcn", {"num_classes": 1}, "ImageNet-1k (ResNeXt-101 backbone)", "2D slices + GRU over the window",
     "GRU last state; max over windows"),
    ("resnet18_3d", {}, "MedicalNet (3DSeg-8 segmentation datasets)", "3D window", "max over windows"),
    ("resnet50_3d", {}, "MedicalNet (3DSeg-8 segmentation datasets)", "3D window", "max over windows"),
]


def main() -> None:
    print("| model | pretraining data | parameters | input | aggregation (study) |")
    print("|---|---|---:|---|---|")
    for name, kwargs, data, inputs, aggregation in ROWS:
        n = count_parameters(create_model(name, **kwargs))
        print(f"| `{name}` | {data} | {n / 1e6:.2f} M | {inputs} | {aggregation} |")


if __name__ == "__main__":
    main()
