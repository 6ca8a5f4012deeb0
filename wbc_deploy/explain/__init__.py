"""Review and explanation outputs: Grad-CAM heatmaps, per-class cell galleries, slide reports, montages.

This package ``__init__`` imports nothing heavy. The torch-free modules
(:mod:`~wbc_deploy.explain.montage`, :mod:`~wbc_deploy.explain.gallery`,
:mod:`~wbc_deploy.explain.report`, :mod:`~wbc_deploy.explain.overlay`) are what ``count`` and
``evaluate`` call on scanner PCs; :mod:`~wbc_deploy.explain.gradcam` and
:mod:`~wbc_deploy.explain.run` need torch (the ``train`` extra) and are imported only by ``explain``.
"""
