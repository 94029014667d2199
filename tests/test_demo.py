"""The main job at tiny settings, on the bundled models and data."""

from __future__ import annotations

import json

import pytest
import torch

from manipure_fast.cli import main
from manipure_fast.models.bundled import CLASSIFIER, UNET, load_bundled_classifier

pytest.importorskip("diffusers")
pytest.importorskip("matplotlib")


def test_demo_smoke(tmp_path, capsys):
    main(["demo", "--out", str(tmp_path), "--batch-size", "2", "--attack-steps", "1", "--votes", "1"])
    printed = capsys.readouterr().out
    for method in ("mani-pure", "freqpure", "uniform", "none (undefended)"):
        assert f"| {method} |" in printed
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert (tmp_path / "spectrum.png").stat().st_size > 10_000
    report = json.loads((tmp_path / "demo.json").read_text())
    assert [m["method"] for m in report["methods"]] == ["mani-pure", "freqpure", "uniform"]
    assert all(0 <= m["clean_accuracy"] <= 1 and m["images_per_second"] > 0 for m in report["methods"])
    assert report["torch"] == torch.__version__ and report["commit"]


def test_bundled_weights_are_small_and_documented():
    assert UNET.stat().st_size + CLASSIFIER.stat().st_size < 20 * 2**20
    for path in (UNET, CLASSIFIER):
        meta = json.loads(path.with_suffix(".json").read_text())
        assert {"seed", "wall_time_s", "torch"} <= set(meta)
    assert json.loads(CLASSIFIER.with_suffix(".json").read_text())["test_accuracy"] >= 0.90


def test_bundled_classifier_accuracy_on_bundled_subset():
    from manipure_fast.data.bundled import load_bundled_subset

    images, labels = load_bundled_subset()
    with torch.no_grad():
        accuracy = (load_bundled_classifier()(images).argmax(1) == labels).float().mean()
    assert accuracy >= 0.90


def test_quality_check_runs():
    from manipure_fast.data.bundled import load_bundled_subset
    from manipure_fast.evaluation.quality import one_step_accuracy
    from manipure_fast.models.bundled import load_bundled_unet

    images, labels = load_bundled_subset()
    pick = torch.arange(0, 1000, 50)
    acc = one_step_accuracy(
        load_bundled_unet(), load_bundled_classifier(), images[pick], labels[pick], timesteps=(50,)
    )
    assert set(acc) == {"clean", "noisy t=50", "denoised t=50"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--batch-size", "0"], "batch_size must be at least 1"),
        (["demo", "--batch-size", "5000"], "exceeds the 1000 bundled test images"),
        (["demo", "--eps", "-0.1"], "eps must be positive"),
        (["demo", "--threads", "0"], "threads must be at least 1"),
        (["eval", "--eot", "0"], "eot must be at least 1"),
        (["eval", "--defenses", "none,diffpure"], "unknown defenses"),
    ],
)
def test_cli_bad_options_are_usage_errors(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2  # argparse's usage-error status; nothing was computed or written
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
