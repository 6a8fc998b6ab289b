"""Metrics: plain functions over tensors and features: Fréchet distances and their feature backends, IS, codebook usage, mask quality."""


def metric_names(backend: str) -> dict[str, str]:
    """What each Fréchet metric is called under `backend` (a table never mixes the two). Here, free
    of torch, so that `study status` and `plan` start fast."""
    if backend == "inception":
        return {"fid": "fid", "rfid": "rfid"}
    return {"fid": "fd_vgg16", "rfid": "rfd_vgg16"}


STAGE2_NAMES = ("fid", "fd_vgg16", "is", "speed_images_per_s")


def metric_family(metric: str) -> str:
    """The `mqvq eval` metric that computes a logged metric name."""
    if metric.endswith("_cfg"):  # the guided twin of fid / attr
        return metric_family(metric[: -len("_cfg")])
    if metric in ("rfid", "rfd_vgg16", "fid", "fd_vgg16", "is"):
        return {"rfd_vgg16": "rfid", "fd_vgg16": "fid"}.get(metric, metric)
    if metric.startswith("attr_"):
        return "attr"
    if metric.startswith("mask_") or metric in ("fg_token_fraction", "edge_token_fraction"):
        return "mask"
    if metric.startswith("usage") or metric == "perplexity":
        return "usage"
    if metric.startswith("speed"):
        return "speed"
    return metric


def metric_stage(metric: str) -> str:
    """The stage whose run a logged metric lives on."""
    return "stage2" if metric_family(metric) in ("fid", "is", "speed", "attr") else "stage1"
