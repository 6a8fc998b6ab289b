"""Benchmarks run (tiny sizes on CPU) and report the headline keys; GPU-only checks skip without CUDA."""
import json

import pytest
import torch
from typer.testing import CliRunner

from mqvq.bench import HEADLINE
from mqvq.cli import app

runner = CliRunner()
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the GPU machine)")


def test_bench_all_tiny_on_cpu_writes_json_and_logs_to_mlflow(tmp_path, home, tracker):
    out = tmp_path / "bench" / "cpu.json"
    r = runner.invoke(app, ["bench", "all", "--profile", "smoke", "--preset", "tiny", "--fid-num", "16", "--sample-batch-size", "4",
                            "--device", "cpu", "--out", str(out), "--log", "--home", str(home)])
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert set(HEADLINE) <= set(data) and all(data[k] > 0 for k in HEADLINE)
    assert data["fid"]["fid50k_projected"] and data["environment"]["torch"] == torch.__version__ and data["complete"] is True
    run = tracker.find_runs("bench")[0]
    assert run.data.tags["mqvq.bench"] == "all" and run.data.metrics["stage2_train_tokens_per_s"] > 0


def test_an_interrupted_bench_all_keeps_the_sections_it_finished(tmp_path, home, monkeypatch):
    import mqvq.bench

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mqvq.bench, "bench_fid", interrupted)
    out = tmp_path / "cpu.json"
    r = runner.invoke(app, ["bench", "all", "--profile", "smoke", "--preset", "tiny", "--sample-batch-size", "4",
                            "--device", "cpu", "--out", str(out), "--home", str(home)])
    assert r.exit_code == 130, r.output
    data = json.loads(out.read_text())
    assert data["complete"] is False and {"train_stage1", "train_stage2", "sample"} <= set(data) and "fid" not in data
    assert data["sample"]["environment"]["torch"] == torch.__version__


def test_bench_commands_report_their_keys():
    r = runner.invoke(app, ["bench", "train-stage2", "--preset", "tiny", "--steps", "1", "--device", "cpu", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["stage2_train_tokens_per_s"] > 0
    r = runner.invoke(app, ["bench", "fid", "--preset", "tiny", "--profile", "smoke", "--num", "8", "--batch-size", "8",
                            "--device", "cpu", "--json"])  # random-weight FID Inception: speed only
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
    model = Stackformer(StackformerConfig(preset="tiny", code_layers=2, position_layers=1, width=32, heads=2, dropout=0.0),
                        TokenShape(16, (4, 4), 8)).cuda().eval()
    greedy = SamplingConfig(top_k=1, top_p=1.0, top_k_pos=1, top_p_pos=1.0)
    a, b = generate_compiled(model, 4, greedy), generate(model, 4, greedy)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.positions, b.positions)
