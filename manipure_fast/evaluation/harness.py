"""``manipure-fast eval``: adaptive attacks against the purification defenses, each attack
crafted against the defense it is scored on, robust accuracy from the defense's majority vote.

Defenses: "none" (the classifier alone), "uniform" (DiffPure-style), "freqpure", "mani-pure"
(configs in ``manipure_fast.demo.method_config``). Attacks:
- "pgd" / "pgd-l2": PGD-EOT with full gradients through the attack surrogate (one round (T, 1)
  of the defense, its own MANI/exchange settings);
- "lowfreq": the same PGD with the perturbation projected onto ``r <= lowpass_radius``;
- "bpda": PGD-EOT on the full defense with the purifier's backward replaced by the identity;
- "autoattack": AutoAttack-rand (APGD-CE + APGD-DLR with EOT) through torchattacks on the
  surrogate, with the APGD steps set explicitly.
The attack schedule (surrogate) and the defense schedule are separate; votes are per defense.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..demo import method_config, surrogate_config
from ..provenance import git_commit
from ..purifier import DefendedClassifier, Purifier
from .attacks import autoattack_rand, bpda_model, pgd_eot
from .sharding import shard_range, sum_across_ranks

DEFENSES = ("none", "uniform", "freqpure", "mani-pure")
ATTACKS = ("pgd", "pgd-l2", "lowfreq", "bpda", "autoattack")


@dataclass
class EvalSettings:
    defenses: tuple[str, ...] = DEFENSES
    attack: str = "pgd"
    eps: float = 8 / 255
    steps: int = 100
    eot: int = 10
    step_size: float | None = None
    random_start: bool = True
    lowpass_radius: float = 4.0
    votes: int = 10
    checkpoint: bool = False
    n_images: int = 512
    batch_size: int = 64
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [d for d in self.defenses if d not in DEFENSES]
        if bad:
            raise ValueError(f"unknown defenses {bad}; choose from {DEFENSES}")
        if self.attack not in ATTACKS:
            raise ValueError(f"unknown attack {self.attack!r}; choose from {ATTACKS}")
        for name in ("steps", "eot", "votes", "n_images", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.eps > 0:
            raise ValueError(f"eps must be positive, got {self.eps}")
        if self.step_size is not None and not self.step_size > 0:
            raise ValueError(f"step_size must be positive (or None for the default), got {self.step_size}")
        if self.attack == "lowfreq" and not self.lowpass_radius > 0:
            raise ValueError(f"lowpass_radius must be positive, got {self.lowpass_radius}")


def _attack(settings: EvalSettings, defense: str, unet, classifier, x, y, on_step=None):
    if defense == "none":
        model = classifier
    elif settings.attack == "bpda":
        purifier = Purifier(unet, method_config(defense))
        model = bpda_model(lambda v: purifier.purify(v), classifier)
    else:
        surrogate = Purifier(unet, surrogate_config(method_config(defense)))
        model = lambda v: classifier(surrogate.purify(v))  # noqa: E731
    if settings.attack == "autoattack":

        class Wrapped(torch.nn.Module):
            def forward(self, v):
                return model(v)

        return autoattack_rand(
            Wrapped(), x, y, eps=settings.eps, steps=settings.steps, eot=settings.eot, seed=settings.seed
        )
    return pgd_eot(
        model,
        x,
        y,
        eps=settings.eps,
        steps=settings.steps,
        step_size=settings.step_size,
        eot=1 if defense == "none" else settings.eot,
        norm="l2" if settings.attack == "pgd-l2" else "linf",
        random_start=settings.random_start,
        lowpass_radius=settings.lowpass_radius if settings.attack == "lowfreq" else None,
        checkpoint=settings.checkpoint,
        progress=on_step,
    )


def _predict(defense: str, unet, classifier, x: torch.Tensor, votes: int) -> torch.Tensor:
    with torch.no_grad():
        if defense == "none":
            return classifier(x).argmax(1)
        return (
            DefendedClassifier(Purifier(unet, method_config(defense)), classifier, votes).vote(x).prediction
        )


def evaluate(
    images: torch.Tensor,
    labels: torch.Tensor,
    unet,
    classifier,
    settings: EvalSettings,
    *,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> dict:
    """Counts of correct clean and adversarial predictions per defense over this rank's shard of
    the first ``n_images`` images, summed across ranks. Returns the report dict."""
    from tqdm.auto import tqdm

    device = next(classifier.parameters()).device
    n = min(settings.n_images, images.shape[0])
    start, stop = shard_range(n, rank, world_size)
    counts = {f"{d}/{k}": 0 for d in settings.defenses for k in ("clean", "robust")}
    counts["total"] = stop - start
    torch.manual_seed(settings.seed + rank)
    commit = git_commit(short=True)  # the code that computes, even if HEAD moves during the run
    started = time.perf_counter()
    batches = range(start, stop, settings.batch_size)
    for first in tqdm(batches, desc=f"rank {rank} batches", disable=not progress):
        x = images[first : min(first + settings.batch_size, stop)].to(device)
        y = labels[first : first + x.shape[0]].to(device)
        for defense in settings.defenses:
            # AutoAttack reports no steps; its bar stays empty until the defense is done.
            with tqdm(
                total=settings.steps, desc=f"  {defense} attack steps", leave=False, disable=not progress
            ) as steps_bar:
                x_adv = _attack(settings, defense, unet, classifier, x, y, lambda _: steps_bar.update(1))
            counts[f"{defense}/clean"] += int(
                (_predict(defense, unet, classifier, x, settings.votes) == y).sum()
            )
            counts[f"{defense}/robust"] += int(
                (_predict(defense, unet, classifier, x_adv, settings.votes) == y).sum()
            )
    counts = sum_across_ranks(counts, device)
    wall = time.perf_counter() - started
    total = counts["total"]
    return dict(
        settings=asdict(settings),
        images=total,
        world_size=world_size,
        wall_time_s=round(wall, 1),
        device=torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()})",
        torch=torch.__version__,
        commit=commit,
        results={
            d: dict(
                clean_accuracy=counts[f"{d}/clean"] / max(total, 1),
                robust_accuracy=counts[f"{d}/robust"] / max(total, 1),
                clean_correct=counts[f"{d}/clean"],
                robust_correct=counts[f"{d}/robust"],
            )
            for d in settings.defenses
        },
    )


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for ``correct / total`` (95% for z = 1.96). Unlike the normal
    approximation it stays inside [0, 1] and is honest near 0 and 1, where robust accuracies of
    undefended models sit."""
    if total == 0:
        return 0.0, 1.0
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def _attack_title(s: dict) -> str:
    norm = "L2" if s["attack"] == "pgd-l2" else "Linf"
    parts = [f"{s['attack']} {norm}", f"eps {s['eps']:.4f}"]
    if s["attack"] == "lowfreq":
        parts.append(f"r <= {s['lowpass_radius']:g}")
    parts.append(f"{s['steps']} step{'s' if s['steps'] != 1 else ''}")
    if s.get("step_size") is not None:
        parts.append(f"step size {s['step_size']:.4g}")
    parts += [f"EOT {s['eot']}", f"{s['votes']} votes"]
    return ", ".join(parts)


def write_report(report: dict, out: Path) -> tuple[Path, Path]:
    """``<out>.json`` and ``<out>.md``. The Markdown adds a 95% Wilson interval to each accuracy."""
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    s, n = report["settings"], report["images"]

    def cell(correct: int) -> str:
        low, high = wilson_interval(correct, n)
        return f"{correct / max(n, 1):.3f} ({low:.3f}–{high:.3f})"

    lines = [
        f"# Robustness: {_attack_title(s)}",
        "",
        f"{n} images, device {report['device']}, wall time {report['wall_time_s']} s, "
        f"torch {report['torch']}, commit {report['commit']}, {report['world_size']} process(es).",
        "Accuracies with their 95% Wilson intervals in brackets.",
        "",
        "| defense | clean accuracy | robust accuracy |",
        "|---|---|---|",
    ]
    lines += [
        f"| {d} | {cell(r['clean_correct'])} | {cell(r['robust_correct'])} |"
        for d, r in report["results"].items()
    ]
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path
