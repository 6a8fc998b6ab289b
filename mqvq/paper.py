"""The paper's reported numbers (FFHQ 256², Tables 6 and 7, Fig. 6b; MS-COCO 256², Table 5), keyed by table and experiment.

rFID / FID use the standard Inception features; usage is the percentage of the 1024 codes used
over the FFHQ test set; speedup is the sampling speed relative to VQGAN (one GTX 1080Ti).
"""

PAPER: dict[str, dict[str, dict[str, float]]] = {
    "Table 5": {  # text-conditional MS-COCO, without extra web-scale data or pretrained models
        "vqgan-f16-text": {"fid": 22.28},
        "mqvae-f16-adaptive-25-text": {"fid": 10.08},
    },
    "Table 6": {
        "vqgan-f32": {"rfid": 8.1, "fid": 13.5, "usage": 70.02},
        "vqgan-f16": {"rfid": 4.46, "fid": 11.4, "usage": 63.89},
        "mqvae-f16-adaptive-10": {"rfid": 4.55, "fid": 7.81, "usage": 72.34},
        "mqvae-f16-adaptive-25": {"rfid": 4.79, "fid": 7.67, "usage": 78.22},
        "mqvae-f16-random-25": {"rfid": 6.13, "fid": 12.21, "usage": 67.48},
        "mqvae-f16-adaptive-50": {"rfid": 5.31, "fid": 8.36, "usage": 84.29},
        "mqvae-f16-random-50": {"rfid": 7.855, "fid": 15.67, "usage": 69.04},
        "mqvae-f16-adaptive-75": {"rfid": 7.62, "fid": 11.71, "usage": 87.60},
        "mqvae-f16-random-75": {"rfid": 10.58, "fid": 17.62, "usage": 70.41},
    },
    "Table 7": {
        "vqgan-f16": {"rfid": 4.46, "fid": 11.4},
        "vqgan-star-f16": {"rfid": 4.17, "fid": 11.02},
        "mqvae-f16-adaptive-50-nodemask": {"rfid": 7.02, "fid": 10.74},
        "mqvae-f16-adaptive-50-sa": {"rfid": 6.56, "fid": 9.8},
        "mqvae-f16-adaptive-50-dcsa": {"rfid": 5.84, "fid": 8.92},
        "mqvae-f16-adaptive-50": {"rfid": 5.31, "fid": 8.36},
    },
    "Fig. 6b": {
        "vqgan-f16": {"fid": 11.4, "speedup": 1.0},
        "mqvae-f16-adaptive-25": {"fid": 7.67, "speedup": 1.1545},
        "mqvae-f16-adaptive-50": {"fid": 8.36, "speedup": 1.611},
        "mqvae-f16-adaptive-75": {"fid": 11.71},
    },
}


def paper_values(table: str, experiment: str, override: dict | None = None) -> dict[str, float]:
    """What the paper reports for `experiment` in `table` (a study row's own `paper` table wins)."""
    if override:
        return dict(override)
    for key, rows in PAPER.items():
        if key in table and experiment in rows:
            return dict(rows[experiment])
    return {}


def paper_dataset(table: str) -> str:
    """The benchmark the paper's numbers in `table` were measured on."""
    return "MS-COCO" if "Table 5" in table else "FFHQ"
