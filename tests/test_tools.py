"""tools/wheelhouse.py: the project carries the wheel collection its GPU workflow runs."""

import importlib.util
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _wheelhouse():
    spec = importlib.util.spec_from_file_location("wheelhouse", ROOT / "tools" / "wheelhouse.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_index(requires: dict[str, list[str]]):
    """A stand-in for `pip download`: writes a wheel whose METADATA lists the given requirements."""
    fetched = []

    def fetch(req, dest: Path) -> Path:
        fetched.append(str(req))
        name = req.name.replace("-", "_")
        wheel = dest / f"{name}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            meta = "Metadata-Version: 2.1\nName: {}\nVersion: 1.0\n".format(req.name)
            meta += "".join(f"Requires-Dist: {r}\n" for r in requires.get(req.name, []))
            z.writestr(f"{name}-1.0.dist-info/METADATA", meta)
        return wheel

    return fetch, fetched


def test_collect_walks_dependencies_and_skips_what_the_gpu_has(tmp_path):
    wh = _wheelhouse()
    fetch, fetched = _fake_index(
        {
            "optuna": ["alembic>=1.5", "numpy", "colorlog", "tqdm; python_version < '3.0'", "pytest; extra == 'test'"],
            "alembic": ["Mako", "SQLAlchemy>=1.4"],
            "lpips": ["torch>=0.4", "torchvision", "scipy"],
        }
    )
    present = wh.read_present(_write(tmp_path / "present.txt", "# a comment\nnumpy\nsqlalchemy\nscipy\n"))
    wheels = wh.collect(["optuna", "lpips"], tmp_path / "whl", present, fetch=fetch)
    names = sorted(wh.wheel_name(w) for w in wheels)
    # markers are evaluated for the GPU machine, extras are not requested, torch and what the image lists stay out
    assert names == ["alembic", "colorlog", "lpips", "mako", "optuna"]
    assert "alembic>=1.5" in fetched  # the first specifier met is the one downloaded


def test_the_present_list_is_carried_in_the_repository():
    wh = _wheelhouse()
    present = wh.read_present(ROOT / "tools" / "gpu-present.txt")
    assert {"numpy", "pandas", "typer"} <= present and "mlflow" not in present and "optuna" not in present


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name.replace("-", "_"), ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_merge_keeps_compiled_figures_only_where_faster():
    merge = _module("bench-merge").merge
    eager = {
        "benchmark": "all",
        "environment": {"gpu": "x"},
        "train_stage1": {"stage1_train_images_per_s": 10.0, "stage1_masking_overhead": 1.1},
        "train_stage2": {"stage2_train_tokens_per_s": 100.0},
        "sample": {"sample_images_per_s": 50.0, "sample_speedup_50_vs_0": 1.8},
        "fid": {"fid50k_seconds": 300.0},
    }
    compiled = {
        "train_stage1": {"stage1_train_images_per_s": 14.0, "stage1_masking_overhead": 1.05},
        "train_stage2": {"stage2_train_tokens_per_s": 90.0},  # slower compiled: eager kept
        "sample": {"sample_images_per_s": 80.0, "sample_speedup_50_vs_0": 2.0},
        "fid": {"fid50k_seconds": 310.0},
    }  # lower is better: eager kept
    out = merge(eager, compiled)
    assert {s: v["kept"] for s, v in out["compiled"].items()} == {
        "train_stage1": True,
        "train_stage2": False,
        "sample": True,
        "fid": False,
    }
    assert (out["stage1_train_images_per_s"], out["stage1_masking_overhead"]) == (
        14.0,
        1.05,
    )  # a section's figures stay together
    assert (out["stage2_train_tokens_per_s"], out["fid50k_seconds"], out["sample_speedup_50_vs_0"]) == (
        100.0,
        300.0,
        2.0,
    )
    assert merge(eager, None)["sample_images_per_s"] == 50.0 and out["complete"] and out["environment"] == {"gpu": "x"}


def test_mask_learning_table_compares_each_selector_with_its_own_datas_blind_mask_and_mlp(tmp_path):
    """tools/mask-learning-table.py: excess over blind, Welch against random and the MLP, the gap to the oracle."""
    import json
    import subprocess
    import sys

    def row(name, label, fg, frac=0.4):
        return {
            "row": name,
            "label": label,
            "mask_fg_precision": sum(fg) / len(fg),
            "fg_token_fraction": frac,
            "mask_fg_precision_per_seed": {str(i): v for i, v in enumerate(fg)},
            "mask_auroc_per_seed": {str(i): 0.5 + v - frac for i, v in enumerate(fg)},
        }

    rows = [
        row("fmnist-random", "Fashion-MNIST: random", [0.40, 0.40, 0.40]),
        row("fmnist-mlp", "Fashion-MNIST: mlp", [0.30, 0.35, 0.40]),
        row("fmnist-damage", "Fashion-MNIST: damage", [0.60, 0.62, 0.64]),
        row("fmnist-oracle", "Fashion-MNIST: oracle", [0.80, 0.80, 0.80]),
        row("textured-random", "textured: random", [0.30, 0.30], 0.3),
    ]
    path = tmp_path / "ml.json"
    path.write_text(json.dumps({"rows": rows}))
    tool = Path(__file__).resolve().parent.parent / "tools" / "mask-learning-table.py"
    out = subprocess.run([sys.executable, str(tool), str(path)], capture_output=True, text=True, check=True).stdout
    damage = next(line for line in out.splitlines() if "| damage |" in line).split(" | ")
    assert damage[3] == "0.620 ± 0.020" and damage[4] == "+0.220"
    assert float(damage[5]) < 0.01 and float(damage[6]) < 0.05  # beyond blind and beyond the MLP
    assert damage[-1].rstrip(" |") == "0.180"  # the oracle's excess (+0.400) minus damage's
    assert "| textured | random | 2 | 0.300 ± 0.000 | +0.000 |" in out


def test_mask_position_table_judges_each_selector_against_its_own_beds_centre_prior(tmp_path):
    """tools/mask-position-table.py: excess over blind, Welch against the centre row, a one-sample test of the
    shuffled AUROC against 0.5, the damage of dropping foreground and background tokens."""
    import json
    import subprocess
    import sys

    def row(name, fg, sauc=None, frac=0.12):
        r = {
            "row": name,
            "label": f"bed: {name.split('-', 1)[1]}",
            "fg_token_fraction": frac,
            "mask_fg_precision_per_seed": {str(i): v for i, v in enumerate(fg)},
            "mask_damage_fg_per_seed": {str(i): 0.02 for i in range(len(fg))},
            "mask_damage_bg_per_seed": {str(i): 0.001 for i in range(len(fg))},
        }
        if sauc:
            r["mask_sauc_per_seed"] = {str(i): v for i, v in enumerate(sauc)}
        return r

    rows = [
        row("wrap-random", [0.12, 0.12, 0.12]),
        row("wrap-centre", [0.125] * 3, [0.5] * 3),
        row("wrap-straight-through", [0.20, 0.22, 0.21], [0.70, 0.72, 0.71]),
        row("heldout-centre", [0.9, 0.9], [0.5, 0.5]),
    ]
    path = tmp_path / "mp.json"
    path.write_text(json.dumps({"rows": rows}))
    tool = Path(__file__).resolve().parent.parent / "tools" / "mask-position-table.py"
    out = subprocess.run([sys.executable, str(tool), str(path)], capture_output=True, text=True, check=True).stdout
    st = next(line for line in out.splitlines() if "| straight-through |" in line).split(" | ")
    assert st[3] == "0.210 ± 0.010" and st[4] == "+0.090" and float(st[5]) < 0.01  # beyond its own bed's centre row
    assert st[7] == "0.710 ± 0.010" and float(st[8]) < 0.01 and st[9] == "0.0200 ± 0.0000"
    centre = next(line for line in out.splitlines() if line.startswith("| wrap | centre |")).split(" | ")
    assert centre[7] == "0.500 ± 0.000" and centre[8] == "–"
    assert "| heldout | centre | 2 | 0.900 ± 0.000 |" in out


def test_mask_position_table_reads_object_or_detail_from_the_two_crossed_beds(tmp_path):
    """The torus bed has its detail on the background, the crossed bed on the object: a selector that keeps less
    foreground than blind on the first and more on the second follows restorability, more on both the object."""
    import json
    import subprocess
    import sys

    def row(name, fg):
        return {
            "row": name,
            "label": f"bed: {name.split('-', 1)[1]}",
            "fg_token_fraction": 0.12,
            "mask_fg_precision_per_seed": {str(i): v for i, v in enumerate(fg)},
        }

    rows = [
        row("wrap-random", [0.120, 0.121, 0.119]),
        row("wrap-entropy", [0.090, 0.092, 0.091]),
        row("wrap-mlp", [0.20, 0.21, 0.22]),
        row("wrap-conv", [0.118, 0.123, 0.120]),
        row("objects-random", [0.120, 0.121, 0.119]),
        row("objects-entropy", [0.24, 0.23, 0.235]),
        row("objects-mlp", [0.20, 0.22, 0.21]),
        row("objects-conv", [0.121, 0.119, 0.122]),
    ]
    path = tmp_path / "mp.json"
    path.write_text(json.dumps({"rows": rows}))
    tool = Path(__file__).resolve().parent.parent / "tools" / "mask-position-table.py"
    out = subprocess.run([sys.executable, str(tool), str(path)], capture_output=True, text=True, check=True).stdout
    reading = {
        line.split(" | ")[0].strip("| "): line.split(" | ")[-1].strip(" |")
        for line in out.splitlines()
        if line.count(", p = ") == 2
    }
    assert reading == {
        "entropy": "keeps the detail (restorability)",
        "mlp": "keeps the object on both",
        "conv": "no difference from blind on either",
    }
