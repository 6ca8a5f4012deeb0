"""wbc-deploy: white-blood-cell classification from training to whole-slide counts."""
__version__ = "0.1.0"
