"""``nnUNetv2_train ... -tr nnUNetTrainerGenesisFinetune``: nnU-Net's trainer, fine-tuning genesis weights.

The class is nnU-Net's :class:`nnUNetTrainer` with two changes, everything else (data,
augmentation, loss, deep supervision, checkpoints, validation, inference) left to nnU-Net:

* the schedule of :class:`genesis.nnunet.finetune.FinetuneSchedule`: encoder frozen while the
  decoder warms up, then a warm-up of all layers, then nnU-Net's polynomial decay. The optimizer is
  nnU-Net's SGD (momentum 0.99, Nesterov) with two parameter groups, the rest of the network first
  (the one nnU-Net logs) and the encoder. Frozen means: the encoder group's learning rate is 0
  (SGD moves a weight by ``lr * update``, so the weights stay bit for bit) and the encoder's
  gradients are replaced by zeros as they are computed (so nnU-Net's gradient-norm clip sees the
  decoder's alone and a non-finite gradient cannot reach a frozen weight through ``0 * nan``).
  Freezing with ``requires_grad`` instead would break nnU-Net's multi-GPU training: DDP, set up
  once, would then never synchronise the encoder's gradients after unfreezing. The price: the
  encoder's weight gradients are still computed during the frozen epochs.
* pretrained weights named by the environment variable ``GENESIS_NNUNET_WEIGHTS`` are loaded
  when the trainer initialises, with :func:`genesis.nnunet.finetune.load_pretrained`, which also
  takes encoder-only files (``genesis-weights export --format nnunet --part encoder``) that
  nnU-Net's ``-pretrained_weights`` refuses. Whole-network files work either way.

nnU-Net finds trainers by class name among the modules of its ``nnunetv2.training.nnUNetTrainer``
package; ``genesis-weights install-nnunet-trainer`` (:mod:`genesis.nnunet.install`) puts a
one-line module there that imports this class. The hyper-parameters are attributes, set in
``__init__`` as nnU-Net's own variants do: subclass to change them.
"""

from __future__ import annotations

import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch.optim.lr_scheduler import LRScheduler

from genesis.nnunet.finetune import WEIGHTS_ENV, FinetuneSchedule, load_pretrained, split_parameters


class FinetuneLRScheduler(LRScheduler):
    """Sets the two parameter groups' rates from a :class:`FinetuneSchedule`; ``step(epoch)`` as
    nnU-Net's ``PolyLRScheduler`` (nnU-Net calls it with the current epoch)."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: FinetuneSchedule) -> None:
        self.schedule = schedule
        super().__init__(optimizer)

    def step(self, epoch: int | None = None) -> None:  # type: ignore[override]
        epoch = self.last_epoch + 1 if epoch is None else int(epoch)
        self.last_epoch = epoch
        rest, encoder = self.schedule.group_lrs(epoch)
        self.optimizer.param_groups[0]["lr"] = rest
        self.optimizer.param_groups[1]["lr"] = encoder
        self._last_lr = [rest, encoder]


class nnUNetTrainerGenesisFinetune(nnUNetTrainer):
    """nnU-Net's trainer with the genesis fine-tuning schedule (see the module docstring).

    Attributes (besides nnU-Net's): ``freeze_epochs`` (10), ``warmup_epochs`` (50); ``initial_lr``
    is 1e-3 instead of nnU-Net's 1e-2 from scratch, the peak rate the nnssl fine-tuning of
    pretrained CNNs uses; ``num_epochs`` stays nnU-Net's 1000.
    """

    def __init__(self, plans: dict, configuration: str, fold: int | str, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 1e-3
        self.freeze_epochs = 10
        self.warmup_epochs = 50
        self.pretrained_weights = os.environ.get(WEIGHTS_ENV) or None
        self._freeze_hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._genesis_phase: str | None = None

    @property
    def schedule(self) -> FinetuneSchedule:
        return FinetuneSchedule(self.num_epochs, self.initial_lr, self.freeze_epochs, self.warmup_epochs)

    def initialize(self) -> None:
        super().initialize()
        if self.pretrained_weights:
            self.print_to_log_file(load_pretrained(self.network, self.pretrained_weights).summary())
        else:
            self.print_to_log_file(f"{WEIGHTS_ENV} is not set: the encoder starts as nnU-Net initialised it "
                                   "unless nnUNetv2_train -pretrained_weights loads a whole-network file")

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, LRScheduler]:
        rest, encoder = split_parameters(self.network)
        optimizer = torch.optim.SGD([{"params": rest}, {"params": encoder}], self.initial_lr,
                                    weight_decay=self.weight_decay, momentum=0.99, nesterov=True)
        return optimizer, FinetuneLRScheduler(optimizer, self.schedule)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()  # steps the scheduler to this epoch
        self._set_frozen(self.schedule.encoder_frozen(self.current_epoch))
        phase = self.schedule.phase(self.current_epoch)
        if phase != self._genesis_phase:  # at each change, and at the first epoch of a run
            self._genesis_phase = phase
            frozen = "encoder frozen" if self.schedule.encoder_frozen(self.current_epoch) else "all layers train"
            self.print_to_log_file(f"genesis fine-tuning: {phase} from epoch {self.current_epoch} ({frozen})")

    def _set_frozen(self, frozen: bool) -> None:
        """Zero the encoder's gradients (hooks on its parameters) while frozen; remove the hooks after."""
        hooks = self._freeze_hooks
        if frozen and not hooks:
            _, encoder = split_parameters(self.network)
            hooks = [p.register_hook(torch.zeros_like) for p in encoder]
        elif not frozen:
            for hook in hooks:
                hook.remove()
            hooks = []
        self._freeze_hooks = hooks
