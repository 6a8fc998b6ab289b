"""Metrics: plain functions over tensors and features: Fréchet distances and their feature backends, IS, codebook usage, mask quality."""
