"""Data: class-per-folder data sets, splits, augmentation, mixup, and synthetic cells.

This package ``__init__`` deliberately imports nothing: :mod:`wbc_deploy.data.synth_cells` is
torch-free and is used by the slide generator on scanner PCs, while the training modules here
import torch. Import the submodule you need.
"""
