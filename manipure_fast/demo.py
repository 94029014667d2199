"""The main job: ``manipure-fast demo``.

On the bundled Fashion-MNIST models and test subset it
1. attacks a batch with PGD-EOT, separately against each defense, taking full gradients through
   that defense's attack surrogate (one round (T, 1) with the defense's own MANI/exchange);
2. purifies the clean and the adversarial batch three ways (MANI-Pure, FreqPure alone, uniform
   DiffPure-style noise) and classifies with a majority vote over ``votes`` runs;
3. prints clean accuracy, robust accuracy and purification throughput per method, and writes
   ``demo.png`` (clean / adversarial / purified rows) and ``spectrum.png`` (band mean magnitudes
   M_i, band weights w_i and intensity maps W for clean and adversarial inputs).

The defaults are sized to finish in a few minutes on a 2-core CPU; they are a demonstration,
not a robustness evaluation (see ``manipure-fast eval`` and docs/results/ for that).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import PurifierConfig, Round
from .evaluation.attacks import pgd_eot
from .provenance import git_commit
from .purifier import DefendedClassifier, Purifier

# The bundled denoiser was trained on t < 300 only; one round re-noising to t = 99 in 5 steps,
# with 4/4 exchange cuts (the v2 preset's small cuts, scaled for a 32x32 single-channel image).
DEMO_TOTAL, DEMO_STEPS, DEMO_CUT = 100, 5, 4
METHODS = ("mani-pure", "freqpure", "uniform")


def method_config(
    method: str,
    total: int = DEMO_TOTAL,
    steps: int = DEMO_STEPS,
    cut: float = DEMO_CUT,
) -> PurifierConfig:
    """The defense configuration of a demo/eval method name."""
    base = PurifierConfig(
        rounds=(Round.from_total(total, steps),), amplitude_cut_range=cut, phase_cut_range=cut
    )
    configs = {
        "mani-pure": base,
        "freqpure": base.replace(mani=False),
        "uniform": base.replace(mani=False, exchange=False),
    }
    if method not in configs:
        raise ValueError(f"method must be one of {sorted(configs)}, got {method!r}")
    return configs[method]


def surrogate_config(config: PurifierConfig) -> PurifierConfig:
    """The attack surrogate of a defense: one round (T, 1) at the defense's first round's T."""
    total = config.rounds[0].renoise_t + 1
    return config.replace(rounds=(Round.from_total(total, 1),))


@dataclass
class MethodResult:
    method: str
    clean_accuracy: float
    robust_accuracy: float
    images_per_second: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_demo_options(
    batch_size: int, attack_steps: int, eot: int, eps: float, votes: int, threads: int | None
) -> None:
    """Raises ``ValueError`` naming the first bad option, before anything loads or computes."""
    from .data.bundled import load_bundled_subset

    for name, value in dict(batch_size=batch_size, attack_steps=attack_steps, eot=eot, votes=votes).items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    available = load_bundled_subset()[0].shape[0]
    if batch_size > available:
        raise ValueError(f"batch_size {batch_size} exceeds the {available} bundled test images")


def run_demo(
    out_dir: Path,
    *,
    batch_size: int = 32,
    attack_steps: int = 10,
    eot: int = 1,
    eps: float = 8 / 255,
    votes: int = 3,
    seed: int = 0,
    device: str = "auto",
    threads: int | None = None,
) -> list[MethodResult]:
    from tqdm.auto import tqdm

    from .data.bundled import load_bundled_subset
    from .models.bundled import load_bundled_classifier, load_bundled_unet

    check_demo_options(batch_size, attack_steps, eot, eps, votes, threads)
    images, labels = load_bundled_subset()
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    commit = git_commit(short=True)
    torch.manual_seed(seed)
    pick = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:batch_size]
    x, y = images[pick].to(dev), labels[pick].to(dev)
    unet, classifier = load_bundled_unet().to(dev), load_bundled_classifier().to(dev)
    for p in list(unet.parameters()) + list(classifier.parameters()):
        p.requires_grad_(False)

    print(
        f"manipure-fast demo | device {dev} | batch {batch_size} | PGD-EOT Linf eps {eps:.4f}, "
        f"{attack_steps} steps, EOT {eot} | votes {votes}"
    )
    with torch.no_grad():
        undefended = (classifier(x).argmax(1) == y).float().mean().item()
    x_adv_plain = pgd_eot(classifier, x, y, eps=eps, steps=attack_steps, eot=1)
    with torch.no_grad():
        undefended_robust = (classifier(x_adv_plain).argmax(1) == y).float().mean().item()

    results, adversarial, purified = [], {}, {}
    for method in METHODS:
        config = method_config(method)
        surrogate = Purifier(unet, surrogate_config(config))
        attacked = lambda v, s=surrogate: classifier(s.purify(v))
        with tqdm(total=attack_steps, desc=f"attack {method}", leave=False) as bar:
            adversarial[method] = pgd_eot(
                attacked, x, y, eps=eps, steps=attack_steps, eot=eot, progress=lambda _: bar.update(1)
            )
        defended = DefendedClassifier(Purifier(unet, config), classifier, num_ensemble_runs=votes)
        with torch.no_grad():
            _sync(dev)
            started = time.perf_counter()
            purified[method] = defended.purifier.purify(adversarial[method])
            _sync(dev)
            rate = batch_size / (time.perf_counter() - started)
            clean = (defended.vote(x).prediction == y).float().mean().item()
            robust = (defended.vote(adversarial[method]).prediction == y).float().mean().item()
        results.append(MethodResult(method, clean, robust, rate))

    print()
    print("| method | clean acc | robust acc | purify images/s |")
    print("|---|---|---|---|")
    print(f"| none (undefended) | {undefended:.3f} | {undefended_robust:.3f} | - |")
    for r in results:
        print(
            f"| {r.method} | {r.clean_accuracy:.3f} | {r.robust_accuracy:.3f} | {r.images_per_second:.1f} |"
        )
    print(
        f"(device {dev}; robust = majority vote of {votes} purifications of PGD-EOT examples "
        f"crafted against each defense's own surrogate)"
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    from .plots import plot_demo_grid, plot_spectrum

    plot_demo_grid(out_dir / "demo.png", x, adversarial, purified)
    plot_spectrum(out_dir / "spectrum.png", x, adversarial["mani-pure"])
    (out_dir / "demo.json").write_text(
        json.dumps(
            dict(
                device=str(dev),
                torch=torch.__version__,
                commit=commit,
                batch_size=batch_size,
                attack_steps=attack_steps,
                eot=eot,
                eps=eps,
                votes=votes,
                seed=seed,
                undefended_clean=undefended,
                undefended_robust=undefended_robust,
                methods=[r.__dict__ for r in results],
            ),
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out_dir / 'demo.png'}, {out_dir / 'spectrum.png'} and {out_dir / 'demo.json'}")
    return results
