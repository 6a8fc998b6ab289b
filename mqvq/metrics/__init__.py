"""Metrics: Fréchet distances with pluggable feature backends, IS, codebook usage, PSNR/LPIPS, mask quality, speed."""
