"""TorchDEQ: a library for Deep Equilibrium Models in PyTorch."""

__version__ = "0.2.0"
