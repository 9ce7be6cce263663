"""Fine-tuning targets (nodule segmentation, false-positive reduction, PE detection, ...)."""
