"""`mqvq eval`: metrics logged to the evaluated run under backend-specific names, figures written."""

import io
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mqvq.cli import app
from mqvq.errors import UserError
from mqvq.stages.evaluate import evaluate_run
from tests.test_metrics import accept_stand_in, inception_file  # noqa: F401  (session fixture)

runner = CliRunner()


@pytest.fixture
def runs(trained):
    return trained  # (stage 1, stage 2) of the session's tiny row, in this test's home


def _artifact_png(tracker, run_id, path):
    local = tracker.download_artifact(run_id, path, tracker.home / "dl")
    data = open(local, "rb").read()
    assert len(data) > 100
    img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert img.std() > 1  # not a blank picture
    return img


@pytest.mark.integration
def test_eval_logs_backend_specific_metrics_and_figures(runs, tracker, inception_file, monkeypatch):  # noqa: F811
    s1, s2 = runs
    r1 = evaluate_run(tracker, s1, backend="vgg16", progress=False)
    m = tracker.get_run(s1).data
    for k in (
        "rfd_vgg16",
        "usage",
        "perplexity",
        "psnr",
        "lpips",
        "mask_fg_precision",
        "mask_fg_recall",
        "fg_token_fraction",
    ):
        assert k in m.metrics, k
    assert "rfid" not in m.metrics  # vgg16 features are never called FID
    assert m.tags["mqvq.eval.rfd_vgg16.backend"] == "vgg16" and m.tags["mqvq.eval.rfd_vgg16.num"] == "8"
    assert 0 < m.metrics["usage"] <= 100 and r1["metrics"]["usage"] == m.metrics["usage"]
    for fig in ("figures/fig4_mask.png", "figures/fig5_codebook_pca.png", "figures/reconstructions_test.png"):
        _artifact_png(tracker, s1, fig)
    counts = tracker.download_artifact(s1, "metrics/codebook_counts.json", tracker.home / "dl")
    import json

    data = json.load(open(counts))
    assert len(data["counts"]) == 16 and sum(data["counts"]) == 8 * 8  # 8 test images x N = 8 kept tokens

    evaluate_run(tracker, s2, backend="vgg16", progress=False)
    m2 = tracker.get_run(s2).data
    assert "fd_vgg16" in m2.metrics and m2.tags["mqvq.eval.fd_vgg16.num"] == "8" and "speed_images_per_s" in m2.metrics
    _artifact_png(tracker, s2, "figures/samples_eval.png")
    _artifact_png(tracker, s2, "figures/fig6a_loss_curves.png")

    # the inception backend (a random-weight file of the exact architecture here) gives fid / rfid / is
    monkeypatch.setenv("MQVQ_INCEPTION_WEIGHTS", str(inception_file))
    accept_stand_in(monkeypatch, inception_file)
    evaluate_run(tracker, s2, ["fid", "is"], backend="inception", progress=False)
    evaluate_run(tracker, s1, ["rfid"], backend="inception", progress=False)
    m1, m2 = tracker.get_run(s1).data, tracker.get_run(s2).data
    assert {"fid", "fd_vgg16", "is"} <= set(m2.metrics) and {"rfid", "rfd_vgg16"} <= set(m1.metrics)
    assert m2.tags["mqvq.eval.fid.backend"] == "inception" and m2.tags["mqvq.eval.fd_vgg16.backend"] == "vgg16"
    assert len(list((tracker.home / "fid_stats").glob("*.npz"))) == 4  # test + train references per backend, cached


def test_eval_input_errors(runs, tracker, tmp_path, monkeypatch):
    s1, s2 = runs
    with pytest.raises(UserError, match="fid is a stage-2 metric"):
        evaluate_run(tracker, s1, ["fid"], progress=False)
    with pytest.raises(UserError, match="IS needs class logits"):
        evaluate_run(tracker, s2, ["is"], backend="vgg16", progress=False)
    # a refused request writes nothing into the run: no system metrics from a sampler started before the check
    before = dict(tracker.get_run(s2).data.metrics)
    for metrics, scale, msg in [
        (["attr"], None, "needs a text-conditional model"),
        (["fid"], 3.0, "needs a class- or text-conditional model"),
        (["is"], None, "IS needs class logits"),
    ]:
        with pytest.raises(UserError, match=msg):
            evaluate_run(tracker, s2, metrics, backend="vgg16", cfg_scale=scale, progress=False, system_metrics=True)
    assert tracker.get_run(s2).data.metrics == before
    monkeypatch.delenv("MQVQ_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("MQVQ_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(UserError, match="FID Inception weights not found"):
        evaluate_run(tracker, s2, ["fid"], backend="inception", progress=False)
    home = ["--home", str(tracker.home)]
    for args, msg in [
        ([s1, "--metrics", "fid,bogus"], "unknown metric 'bogus'"),
        (["nope"], "neither a checkpoint file nor an MLflow run id"),
        ([s2, "--num-samples", "1"], "must be at least 2"),
        ([s1, "--backend", "clip"], "use inception or vgg16"),
    ]:
        res = runner.invoke(app, ["eval", *args, *home])
        assert res.exit_code == 2 and msg in res.output and "Traceback" not in res.output, (args, res.output)


def test_eval_cli(runs, tracker):
    s1, _ = runs
    res = runner.invoke(app, ["eval", s1, "--metrics", "usage,psnr", "--home", str(tracker.home), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "usage" in res.stdout and f"logged to stage1 run {s1}" in res.stdout
    res = runner.invoke(app, ["eval", s1, "--metrics", "usage", "--json", "--home", str(tracker.home), "--no-progress"])
    assert res.exit_code == 0, res.output
    out = __import__("json").loads(res.stdout)
    assert out["run_id"] == s1 and out["stage"] == "stage1" and "usage" in out["metrics"]


@pytest.mark.integration  # both stages trained, then sample and eval by model
def test_logged_models_are_accepted_wherever_a_run_is(runs, tracker, tmp_path):
    """MLflow 3 users copy a model id (m-...) or a models:/ URI from the Models tab: sample, eval and
    `train stage2 --stage1` take them as they take the run id."""
    s1, s2 = runs
    m1, m2 = tracker.model_of(s1), tracker.model_of(s2)
    assert m1.startswith("m-") and m2.startswith("m-")
    home = ["--home", str(tracker.home), "--no-progress"]
    for spec in (m2, f"models:/{m2}"):
        out = tmp_path / spec.replace(":", "_").replace("/", "_")
        r = runner.invoke(app, ["sample", spec, "--num", "2", "--out", str(out), *home])
        assert r.exit_code == 0, r.output
        assert len(list(out.glob("*.png"))) == 2
    r = runner.invoke(app, ["eval", f"models:/{m1}", "--metrics", "usage", "--json", *home])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["run_id"] == s1  # logged to the model's run
    model = tracker.client.get_logged_model(m1)
    assert "usage" in {m.key for m in model.metrics}  # and shown on the model's row
    tracker.client.create_registered_model("mqvae")
    tracker.client.create_model_version("mqvae", model.artifact_location, run_id=s1, model_id=m1)
    r = runner.invoke(app, ["eval", "models:/mqvae/1", "--metrics", "usage", "--json", *home])
    assert r.exit_code == 0 and json.loads(r.stdout)["run_id"] == s1, r.output
    for spec in ("models:/m-" + "0" * 32, "m-" + "f" * 32, "models:/nope/3"):
        r = runner.invoke(app, ["eval", spec, *home])
        assert r.exit_code == 2 and "is not a logged model" in r.output and "Traceback" not in r.output, r.output
    orphan = tracker.client.create_logged_model(tracker.client.get_run(s1).info.experiment_id, name="logged by hand")
    r = runner.invoke(app, ["eval", orphan.model_id, *home])  # a model some other code logged without a run
    assert r.exit_code == 2 and "was not logged from a run" in r.output and "Traceback" not in r.output, r.output
