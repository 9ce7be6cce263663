"""Compatibility: the losses live with the methods that use them (:mod:`genesis.methods.losses`)."""

from genesis.methods.losses import (  # noqa: F401
    CompositeLoss,
    classification_loss,
    masked_mse,
    restoration_loss,
    ssim,
)
