"""Metrics: plain functions over tensors and features: Fréchet distances and their feature backends, IS, codebook usage, mask quality."""


def metric_names(backend: str) -> dict[str, str]:
    """What each Fréchet metric is called under `backend` (a table never mixes the two). Here, free
    of torch, so that `study status` and `plan` start fast."""
    if backend == "inception":
        return {"fid": "fid", "rfid": "rfid"}
    return {"fid": "fd_vgg16", "rfid": "rfd_vgg16"}
