"""gdat: gradient auto-tuning for data-parallel PyTorch."""
__version__ = "0.1.0"
