"""Training, checkpoints and evaluation of WBC classifiers.

Import-free on purpose: ``trainer.report`` and ``trainer.evaluate`` stay usable without torch;
``trainer.fit`` and ``trainer.checkpoint`` need the ``train`` extra.
"""
