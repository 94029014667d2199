"""``manipure-fast``: the command line.

manipure-fast demo [--batch-size 32] [--attack-steps 10] [--eot 1] [--votes 3] [--out .]
manipure-fast eval [--attack pgd] [--steps 100] [--eot 10] [--n-images 512] [--out docs/results/pgd]
torchrun --nproc_per_node 4 -m manipure_fast.cli eval ...      (sharded, exact remainders)
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="manipure-fast", description="MANI-Pure / FreqPure purification")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="attack, purify three ways, report, and plot (bundled data and models)"
    )
    demo.add_argument(
        "--out", type=Path, default=Path("."), help="folder for demo.png, spectrum.png, demo.json"
    )
    demo.add_argument("--batch-size", type=int, default=32, help="test images attacked and purified")
    demo.add_argument("--attack-steps", type=int, default=10, help="PGD steps")
    demo.add_argument("--eot", type=int, default=1, help="EOT samples per PGD step")
    demo.add_argument("--eps", type=float, default=8 / 255, help="Linf radius in [0, 1] pixel units")
    demo.add_argument("--votes", type=int, default=3, help="purify-and-classify runs per majority vote")
    demo.add_argument("--seed", type=int, default=0, help="seeds the attack start and the purification noise")
    demo.add_argument("--device", default="auto", help='"auto" (CUDA when available), "cpu", "cuda:N"')
    demo.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ev = sub.add_parser("eval", help="adaptive-attack robustness report (JSON + Markdown)")
    ev.add_argument(
        "--defenses",
        default="none,uniform,freqpure,mani-pure",
        help="comma-separated, from none, uniform, freqpure, mani-pure",
    )
    ev.add_argument(
        "--attack",
        default="pgd",
        choices=["pgd", "pgd-l2", "lowfreq", "bpda", "autoattack"],
        help="PGD-EOT Linf or L2 with full gradients, low-frequency PGD, BPDA+EOT, or AutoAttack-rand",
    )
    ev.add_argument("--eps", type=float, default=8 / 255, help="radius in [0, 1] pixel units (8/255)")
    ev.add_argument("--steps", type=int, default=100, help="attack steps (APGD steps for autoattack)")
    ev.add_argument("--eot", type=int, default=10, help="EOT samples per attack step")
    ev.add_argument("--step-size", type=float, default=None, help="PGD step (default 2.5 * eps / steps)")
    ev.add_argument(
        "--lowpass-radius", type=float, default=4.0, help="lowfreq: keep frequencies with r <= this"
    )
    ev.add_argument("--votes", type=int, default=10, help="purify-and-classify runs per majority vote")
    ev.add_argument("--n-images", type=int, default=512, help="the first N test images")
    ev.add_argument("--batch-size", type=int, default=64, help="images attacked at once per process")
    ev.add_argument("--seed", type=int, default=0, help="seed (each torchrun rank adds its rank)")
    ev.add_argument("--checkpoint", action="store_true", help="activation checkpointing in the attack")
    ev.add_argument(
        "--data",
        default="bundled",
        choices=["bundled", "debian"],
        help="bundled 1000-image subset, or the full test set from dataset-fashion-mnist",
    )
    ev.add_argument("--data-root", default=None, help="folder holding the gzipped IDX files (--data debian)")
    ev.add_argument(
        "--device", default="auto", help='"auto" (one CUDA device per rank when available), "cpu"'
    )
    ev.add_argument(
        "--out", type=Path, default=Path("docs/results/eval"), help="writes <out>.json and <out>.md"
    )
    args = parser.parse_args(argv)
    if args.command == "eval":
        try:
            settings = _eval_settings(args)
        except ValueError as err:  # a bad option is a usage error, named before anything loads
            ev.error(str(err))
        _run_eval(args, settings)
    if args.command == "demo":
        from .demo import check_demo_options, run_demo

        options = dict(
            batch_size=args.batch_size,
            attack_steps=args.attack_steps,
            eot=args.eot,
            eps=args.eps,
            votes=args.votes,
            threads=args.threads,
        )
        try:
            check_demo_options(**options)
        except ValueError as err:  # a bad option is a usage error, named before anything loads
            demo.error(str(err))
        run_demo(args.out, seed=args.seed, device=args.device, **options)


def _eval_settings(args):
    from .evaluation.harness import EvalSettings

    return EvalSettings(
        defenses=tuple(args.defenses.split(",")),
        attack=args.attack,
        eps=args.eps,
        steps=args.steps,
        eot=args.eot,
        step_size=args.step_size,
        lowpass_radius=args.lowpass_radius,
        votes=args.votes,
        n_images=args.n_images,
        batch_size=args.batch_size,
        seed=args.seed,
        checkpoint=args.checkpoint,
    )


def _run_eval(args, settings) -> None:
    import torch

    from .data.bundled import load_bundled_subset
    from .data.fashion_mnist import load_fashion_mnist
    from .evaluation.harness import evaluate, write_report
    from .evaluation.sharding import distributed_context
    from .models.bundled import load_bundled_classifier, load_bundled_unet

    rank, world = distributed_context()
    if args.device == "auto":
        device = torch.device(
            f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
        )
    else:
        device = torch.device(args.device)
    images, labels = (
        load_bundled_subset() if args.data == "bundled" else load_fashion_mnist("test", args.data_root)
    )
    unet, classifier = load_bundled_unet().to(device), load_bundled_classifier().to(device)
    for p in list(unet.parameters()) + list(classifier.parameters()):
        p.requires_grad_(False)
    report = evaluate(images, labels, unet, classifier, settings, rank=rank, world_size=world)
    if rank == 0:
        json_path, md_path = write_report(report, args.out)
        print(md_path.read_text())
        print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
