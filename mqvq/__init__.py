"""mqvq: reference implementation and experiment framework for MQ-VAE + Stackformer."""

__version__ = "0.1.0"
