"""Pretraining for nnU-Net: its plans, its preprocessed data, and checkpoints it loads.

Everything nnU-Net-specific goes through ``nnunetv2`` itself (installed with the optional extra
``pip install "genesis-ssl[nnunet]"``); the core of genesis never imports it. Modules:

* :mod:`genesis.nnunet.plans`: read a plans file, the network it describes, the intensity range
  of its normalisation and the pretraining settings it implies;
* :mod:`genesis.nnunet.data`: volume sources for nnU-Net raw and preprocessed datasets;
* :mod:`genesis.nnunet.export`: a pretrained checkpoint as ``nnUNetv2_train -pretrained_weights``
  input, or its encoder alone (``--part encoder``) for plans with another decoder or channels;
* :mod:`genesis.nnunet.finetune`: the fine-tuning schedule and the loader of those files;
* :mod:`genesis.nnunet.trainer`: ``nnUNetTrainerGenesisFinetune``, nnU-Net's trainer with that
  schedule; :mod:`genesis.nnunet.install` makes ``nnUNetv2_train -tr`` find it.

The network itself is registered as ``--model nnunet`` in :mod:`genesis.models.nnunet`.
"""
