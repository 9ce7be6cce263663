"""The registry of released weights: one YAML manifest per model in ``manifests/``, model cards in ``cards/``.

Code that downloads and loads them lives in :mod:`genesis.weights`.
"""

from __future__ import annotations

from pathlib import Path

MANIFEST_DIR = Path(__file__).resolve().parent / "manifests"
CARD_DIR = Path(__file__).resolve().parent / "cards"
