"""Models: MQ-VAE (stage 1) and its building blocks."""

from mqvq.models.mqvae import MQVAE, Encoded, Stage1Output

__all__ = ["MQVAE", "Encoded", "Stage1Output"]
