"""Fingerprints of a few pretraining steps per method (see tests/test_pretrain_same_as_before.py).

``python tests/_golden_pretrain.py OUT.json`` (with OMP_NUM_THREADS=1) wrote the golden file on the
code before the method core; the test runs :func:`run_all` on today's code.
"""
import json, sys, tempfile
from pathlib import Path
import torch

COMMON = ["--device", "cpu", "--precision", "fp32", "--no-progress", "--width", "2", "--batch-size", "2",
          "--steps-per-epoch", "2", "--epochs", "2", "--seed", "3",
          "--set", "data.val_cubes=4", "--set", "log.grids=false", "--set", "log.tensorboard=false"]
CT = ["--crop", "16", "32", "32", "--set", "data.synthetic_shape=[32,64,64]", "--set", "data.synthetic_volumes=3"]
CASES = {
    "combined": ["--task", "combined", *CT],
    "masked_region": ["--task", "masked_region", "--dims", "2", *CT],
    "masked_curriculum": ["--task", "masked_curriculum", "--dims", "2", "--epochs", "1", *CT],
    "rotation": ["--task", "rotation", *CT],
    "barlow_twins": ["--task", "barlow_twins", "--modality", "xray", "--dims", "2", "--image-size", "32",
                     "--set", "task_params={dim: 16}", "--set", "data.synthetic_volumes=4"],
}

def fingerprint(ckpt_path):
    ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    w = {k: [float(v.double().sum()), float(v.double().abs().sum())] for k, v in ck["model"].items() if v.is_floating_point()}
    hist = [{k: r[k] for k in ("train_loss", "val_loss") if k in r} for r in ck["history"]]
    return {"history": hist, "weights": w}

def run_all(tmp):
    from genesis.cli.pretrain import main
    out = {}
    for name, flags in CASES.items():
        d = Path(tmp) / name
        rc = main([*COMMON, *flags, "--out", str(d)])
        assert rc == 0, name
        out[name] = fingerprint(d / "last.pt")
    return out

if __name__ == "__main__":
    import os
    os.environ.setdefault("GENESIS_CACHE", tempfile.mkdtemp())
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        res = run_all(tmp)
    Path(sys.argv[1]).write_text(json.dumps(res, indent=1))
    for k, v in res.items(): print(k, v["history"])
