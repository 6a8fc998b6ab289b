"""Benchmarks run (tiny sizes on CPU) and report the headline keys; GPU-only checks skip without CUDA."""

import json

import pytest
import torch
from typer.testing import CliRunner

from mqvq.bench import HEADLINE
from mqvq.cli import app

runner = CliRunner()


def cuda(test):
    """Selected by `pytest -m cuda` (tools/gpu-check.sh); skipped without a GPU."""
    return pytest.mark.cuda(
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the GPU machine)")(test)
    )


@pytest.mark.integration
def test_gpu_check_dry_run_writes_every_headline_figure(tmp_path):
    """tools/gpu-check.sh --dry-run: the GPU check's steps on CPU at the smallest sizes (`bench all
    --quick`, eager and compiled, then the merge), with all six headline keys and the environment."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHON": sys.executable, "MQVQ_HOME": str(tmp_path / "home")}
    r = subprocess.run(
        ["bash", str(root / "tools" / "gpu-check.sh"), str(tmp_path / "results"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    results = tmp_path / "results"
    # the compiled run may fail where no C++ compiler is installed: the merge then keeps the eager figures
    assert {"bench.json", "bench-eager.json", "bench-compiled.log", "cuda-tests.log"} <= {
        p.name for p in results.iterdir()
    }
    data = json.loads((results / "bench.json").read_text())
    assert set(HEADLINE) <= set(data) and all(data[k] > 0 for k in HEADLINE) and data["complete"] is True
    assert set(data["compiled"]) == {"train_stage1", "train_stage2", "sample", "fid"}
    eager = json.loads((results / "bench-eager.json").read_text())
    assert eager["quick"] is True and eager["environment"]["threads"] >= 1 and "load_average" in eager["environment"]
    assert (
        eager["train_stage1"]["rows"][0]["memory_format"] == "channels_last"
        and "cpu_ms_per_step" in eager["train_stage1"]["rows"][0]
    )
    assert "sample_speedup_50_vs_0_cpu" in eager["sample"]
    assert r.stderr.count("bench all") == 2  # progress on screen: one line per step


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_bench_all_refuses_a_missing_gpu_before_starting(tmp_path):
    r = runner.invoke(app, ["bench", "all", "--quick", "--device", "cuda", "--out", str(tmp_path / "b.json")])
    assert r.exit_code == 2 and "no CUDA GPU is available" in r.output and "[1/4]" not in r.output
    assert not (tmp_path / "b.json").exists()


@pytest.mark.integration
def test_bench_logs_to_mlflow(home, tracker):
    r = runner.invoke(
        app,
        ["bench", "train-stage2", "--preset", "tiny", "--steps", "1", "--device", "cpu", "--log", "--home", str(home)],
    )
    assert r.exit_code == 0, r.output
    run = tracker.find_runs("bench")[0]
    assert run.data.tags["mqvq.bench"] == "train-stage2" and run.data.metrics["stage2_train_tokens_per_s"] > 0
    assert run.data.tags["mqvq.env.threads"] == str(torch.get_num_threads())


@pytest.mark.integration
def test_an_interrupted_bench_all_keeps_the_sections_it_finished(tmp_path, home, monkeypatch):
    import mqvq.bench

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mqvq.bench, "bench_fid", interrupted)
    out = tmp_path / "cpu.json"
    r = runner.invoke(
        app,
        [
            "bench",
            "all",
            "--profile",
            "smoke",
            "--preset",
            "tiny",
            "--sample-batch-size",
            "4",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--home",
            str(home),
        ],
    )
    assert r.exit_code == 130, r.output
    data = json.loads(out.read_text())
    assert data["complete"] is False and {"train_stage1", "train_stage2", "sample"} <= set(data) and "fid" not in data
    assert data["sample"]["environment"]["torch"] == torch.__version__


@pytest.mark.integration
def test_bench_commands_report_their_keys():
    r = runner.invoke(app, ["bench", "train-stage2", "--preset", "tiny", "--steps", "1", "--device", "cpu", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["stage2_train_tokens_per_s"] > 0
    r = runner.invoke(
        app,
        [
            "bench",
            "fid",
            "--preset",
            "tiny",
            "--profile",
            "smoke",
            "--num",
            "8",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--json",
        ],
    )  # random-weight FID Inception: speed only
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["fid50k_seconds"] > 0
    r = runner.invoke(app, ["bench", "fid", "--backend", "clip"])
    assert r.exit_code == 2


@cuda
def test_bf16_training_keeps_fp32_code_assignments_and_close_losses(tiny):
    """On the GPU: bf16 autocast changes the networks' numerics, not the quantizer's (fp32 search)."""
    from mqvq.models.mqvae import MQVAE

    cfg = tiny("mqvae-f16-adaptive-50", "stage1.data.resolution=32")
    torch.manual_seed(0)
    model = MQVAE(cfg.stage1.model).cuda().eval()
    x = torch.rand(8, 3, 32, 32, device="cuda") * 2 - 1
    z = model.quant_proj(model.mask(model.encoder(x)).features)
    codes32 = model.quantizer.nearest(z.reshape(-1, z.shape[-1]))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        codes16 = model.quantizer.nearest(z.reshape(-1, z.shape[-1]))
        out16 = model(x)
    assert torch.equal(codes32, codes16)
    out32 = model(x)
    assert (out16.recon.float() - out32.recon).abs().mean() < 0.05


@cuda
def test_compiled_cuda_graph_sampler_matches_eager_on_gpu():
    from mqvq.config import SamplingConfig, StackformerConfig
    from mqvq.models.sampling import generate, generate_compiled
    from mqvq.models.stackformer import Stackformer, TokenShape

    torch.manual_seed(0)
    model = (
        Stackformer(
            StackformerConfig(preset="tiny", code_layers=2, position_layers=1, width=32, heads=2, dropout=0.0),
            TokenShape(16, (4, 4), 8),
        )
        .cuda()
        .eval()
    )
    greedy = SamplingConfig(top_k=1, top_p=1.0, top_k_pos=1, top_p_pos=1.0)
    a, b = generate_compiled(model, 4, greedy), generate(model, 4, greedy)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.positions, b.positions)


def test_interleaved_timing_alternates_the_order_and_pairs_the_rounds():
    from mqvq.timing import interleaved, paired_ratio

    calls = []
    times, _ = interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, torch.device("cpu"), rounds=4, warmup=1
    )
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up, then A B, B A, A B, B A
    assert all(len(times[k]["wall"]) == len(times[k]["cpu"]) == 4 for k in "ab")
    assert paired_ratio([2.0, 4.0, 9.0], [1.0, 1.0, 3.0]) == 3.0  # the median of 2, 4, 3
