"""Command-line entry points (``genesis-pretrain``, ``genesis-finetune``, ``genesis-weights``, ...)."""
