"""Compatibility: checkpoints are written and read by :mod:`genesis.checkpoint` (a core module)."""

from genesis.checkpoint import (  # noqa: F401
    describe_non_checkpoint,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    write_error,
)
