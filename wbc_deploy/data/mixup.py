"""Mixup (Zhang et al. 2018) as used by the reference paper: lambda ~ Beta(alpha, alpha), soft targets.

One lambda is drawn per batch; each image is mixed with a randomly permuted partner of the same
batch, and so are the one-hot targets, so every target row sums to 1. ``alpha <= 0`` disables mixup
(lambda = 1: inputs unchanged, targets one-hot). Lambda comes from a numpy Generator the trainer
seeds per epoch, so runs are reproducible and resumable.
"""
from __future__ import annotations

import numpy as np
import torch


def one_hot(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer class indices -> float one-hot rows."""
    return torch.nn.functional.one_hot(targets.long(), num_classes).float()


def sample_lambda(alpha: float, rng: np.random.Generator) -> float:
    """A mixing coefficient drawn from Beta(alpha, alpha); 1.0 when ``alpha <= 0``."""
    if alpha <= 0:
        return 1.0
    return float(rng.beta(alpha, alpha))


def mixup_batch(
    images: torch.Tensor, targets: torch.Tensor, num_classes: int, alpha: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]:
    """Mix a batch: returns (mixed images, soft targets, lambda, partner permutation).

    ``targets`` are class indices (N,); the soft targets are (N, num_classes) and sum to 1 per row.
    """
    hard = one_hot(targets, num_classes).to(images.device)
    lam = sample_lambda(alpha, rng)
    n = images.shape[0]
    if lam >= 1.0 or n < 2:
        return images, hard, 1.0, torch.arange(n, device=images.device)
    perm = torch.from_numpy(rng.permutation(n)).to(images.device)
    mixed = lam * images + (1.0 - lam) * images[perm]
    soft = lam * hard + (1.0 - lam) * hard[perm]
    return mixed, soft, lam, perm


def soft_cross_entropy(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_k t_k log softmax(logits)_k (equals cross-entropy for one-hot t)."""
    return -(soft_targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
