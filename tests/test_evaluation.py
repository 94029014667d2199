"""The attack harness and its sharding arithmetic."""

from __future__ import annotations

import pytest
import torch
from conftest import LinearEps

from manipure_fast import Purifier, PurifierConfig, Round
from manipure_fast.evaluation.attacks import bpda_model, lowpass, pgd_eot
from manipure_fast.evaluation.harness import EvalSettings, evaluate, write_report
from manipure_fast.evaluation.sharding import shard_range


@pytest.mark.parametrize("n, world", [(512, 1), (512, 3), (10, 4), (3, 8), (0, 2), (1001, 7)])
def test_shards_cover_every_sample_exactly_once(n, world):
    ranges = [shard_range(n, r, world) for r in range(world)]
    covered = [i for start, stop in ranges for i in range(start, stop)]
    assert covered == list(range(n))
    sizes = [stop - start for start, stop in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_shard_range_rejects_bad_rank():
    with pytest.raises(ValueError, match="rank"):
        shard_range(10, 3, 3)


def _tiny_classifier(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    return model.requires_grad_(False)


def _separable_data(classifier, n=32, seed=1):
    """Images the classifier gets right with a margin."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=gen)
    return x, classifier(x).argmax(1)


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 1.5)])
def test_pgd_lowers_accuracy_of_undefended_model_and_stays_in_the_ball(norm, eps):
    classifier = _tiny_classifier()
    x, y = _separable_data(classifier)
    x_adv = pgd_eot(
        classifier, x, y, eps=eps, steps=20, norm=norm, generator=torch.Generator().manual_seed(0)
    )
    assert (classifier(x_adv).argmax(1) == y).float().mean() < 0.5
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-5).all() and (x_adv >= 0).all() and (x_adv <= 1).all()


def test_lowfreq_attack_perturbation_is_band_limited():
    classifier = _tiny_classifier()
    x, y = _separable_data(classifier)
    x = x * 0.5 + 0.25  # away from the [0, 1] edges so the image clamp does not bite
    x_adv = pgd_eot(classifier, x, y, eps=0.2, steps=10, lowpass_radius=2)
    delta = x_adv - x
    outside = delta - lowpass(delta, 2)
    assert outside.norm() < 0.05 * delta.norm()
    assert (delta.abs() <= 0.2 + 1e-6).all()


def test_gradient_through_the_purifier_is_nonzero_and_attack_runs():
    torch.manual_seed(0)
    purifier = Purifier(
        LinearEps(3),
        PurifierConfig(
            rounds=(Round.from_total(20, 1),), n_bands=3, amplitude_cut_range=2, phase_cut_range=2
        ),
    )
    classifier = _tiny_classifier()
    x, y = _separable_data(classifier, n=4)
    x_in = x.clone().requires_grad_()
    loss = torch.nn.functional.cross_entropy(classifier(purifier.purify(x_in)), y)
    (grad,) = torch.autograd.grad(loss, x_in)
    assert grad.abs().sum() > 0 and torch.isfinite(grad).all()
    x_adv = pgd_eot(lambda v: classifier(purifier.purify(v)), x, y, eps=0.05, steps=2, eot=2)
    assert (x_adv - x).abs().max() <= 0.05 + 1e-6


def test_bpda_backward_is_identity():
    classifier = _tiny_classifier()
    model = bpda_model(lambda v: v.flip(-1), classifier)
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    model(x).sum().backward()
    x2 = torch.rand(2, 3, 8, 8).flip(-1).requires_grad_()
    classifier(x2).sum().backward()
    assert torch.allclose(x.grad, x2.grad)  # d/dx of classifier at the purified point, unchanged


def test_evaluate_report_counts(tmp_path):
    classifier = _tiny_classifier()
    x, y = _separable_data(classifier, n=5)
    settings = EvalSettings(
        defenses=("none", "mani-pure"),
        attack="pgd",
        eps=0.05,
        steps=1,
        eot=1,
        votes=1,
        n_images=5,
        batch_size=2,
    )
    unet = LinearEps(3)
    report = evaluate(x, y, unet, classifier, settings, progress=False)
    assert report["images"] == 5 and report["results"]["none"]["clean_accuracy"] == 1.0
    json_path, md_path = write_report(report, tmp_path / "r")
    assert json_path.exists() and "| mani-pure |" in md_path.read_text()
    text = md_path.read_text()
    assert "| none | 1.000 (" in text and "95% Wilson" in text
    with pytest.raises(ValueError, match="unknown attack"):
        EvalSettings(attack="cw")


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(steps=0), "steps must be at least 1"),
        (dict(eot=0), "eot must be at least 1"),
        (dict(votes=0), "votes must be at least 1"),
        (dict(batch_size=0), "batch_size must be at least 1"),
        (dict(eps=0.0), "eps must be positive"),
        (dict(eps=float("nan")), "eps must be positive"),
        (dict(step_size=-0.1), "step_size must be positive"),
        (dict(attack="lowfreq", lowpass_radius=0.0), "lowpass_radius must be positive"),
        (dict(defenses=("none", "diffpure")), "unknown defenses"),
    ],
)
def test_eval_settings_name_the_bad_value(bad, message):
    with pytest.raises(ValueError, match=message):
        EvalSettings(**bad)


def test_wilson_interval():
    from manipure_fast.evaluation.harness import wilson_interval

    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    low, high = wilson_interval(0, 128)  # stays inside [0, 1] where the normal approximation collapses
    assert low == 0.0 and high == pytest.approx(0.0291, abs=1e-4)
    assert wilson_interval(128, 128)[1] == pytest.approx(1.0) and wilson_interval(0, 0) == (0.0, 1.0)


def test_autoattack_rand_uses_explicit_steps_and_attacks():
    pytest.importorskip("torchattacks", exc_type=ImportError)
    from manipure_fast.evaluation.attacks import autoattack_rand, build_autoattack_rand

    classifier = _tiny_classifier()
    multi = build_autoattack_rand(classifier, eps=0.1)
    assert [(a.steps, a.eot_iter, a.loss) for a in multi.attacks] == [(100, 20, "ce"), (100, 20, "dlr")]
    x, y = _separable_data(classifier, n=16)
    x_adv = autoattack_rand(classifier, x, y, eps=0.1, steps=10, eot=1)
    assert (classifier(x_adv).argmax(1) == y).float().mean() < 0.5
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6


def _distributed_worker(rank, world, port, n, result_path):
    import os

    import torch.distributed as dist

    from manipure_fast.evaluation.sharding import shard_range, sum_across_ranks

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    start, stop = shard_range(n, rank, world)
    counts = sum_across_ranks(
        {"total": stop - start, "index_sum": sum(range(start, stop))}, torch.device("cpu")
    )
    if rank == 0:
        result_path.write_text(f"{counts['total']} {counts['index_sum']}")
    dist.destroy_process_group()


def test_sharded_counts_sum_exactly_across_processes(tmp_path):
    """Three gloo processes, 10 samples: every sample counted once (no DistributedSampler padding)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "counts.txt"
    mp.spawn(_distributed_worker, args=(3, port, 10, out), nprocs=3, join=True)
    assert out.read_text() == f"10 {sum(range(10))}"


def test_git_commit_marks_a_dirty_tree_and_survives_no_checkout(tmp_path, monkeypatch):
    import subprocess

    from manipure_fast import provenance

    monkeypatch.setattr(provenance, "_SOURCE", tmp_path)
    monkeypatch.delenv("MANIPURE_COMMIT", raising=False)
    assert provenance.git_commit() == "unknown"  # not a checkout (an installed wheel)
    monkeypatch.setenv("MANIPURE_COMMIT", "abc1234")  # a copy of the tree without its .git
    assert provenance.git_commit() == "abc1234"

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True)

    git("init", "-q")
    (tmp_path / "f.txt").write_text("a")
    git("add", "f.txt")
    git("commit", "-qm", "one")
    clean = provenance.git_commit(short=True)
    assert len(clean) >= 7 and "+" not in clean
    (tmp_path / "untracked.txt").write_text("not code of the run")
    assert provenance.git_commit(short=True) == clean
    (tmp_path / "f.txt").write_text("b")
    assert provenance.git_commit(short=True) == clean + "+dirty"
    assert provenance.git_commit().startswith(clean) and len(provenance.git_commit()) == 40 + len("+dirty")
