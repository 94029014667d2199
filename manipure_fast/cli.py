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
    demo.add_argument("--batch-size", type=int, default=32)
    demo.add_argument("--attack-steps", type=int, default=10)
    demo.add_argument("--eot", type=int, default=1)
    demo.add_argument("--eps", type=float, default=8 / 255, help="Linf radius in [0, 1] pixel units")
    demo.add_argument("--votes", type=int, default=3, help="purify-and-classify runs per majority vote")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="auto")
    demo.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ev = sub.add_parser("eval", help="adaptive-attack robustness report (JSON + Markdown)")
    ev.add_argument("--defenses", default="none,uniform,freqpure,mani-pure")
    ev.add_argument("--attack", default="pgd", choices=["pgd", "pgd-l2", "lowfreq", "bpda", "autoattack"])
    ev.add_argument("--eps", type=float, default=8 / 255)
    ev.add_argument("--steps", type=int, default=100)
    ev.add_argument("--eot", type=int, default=10)
    ev.add_argument("--step-size", type=float, default=None)
    ev.add_argument("--lowpass-radius", type=float, default=4.0)
    ev.add_argument("--votes", type=int, default=10)
    ev.add_argument("--n-images", type=int, default=512)
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--checkpoint", action="store_true", help="activation checkpointing in the attack")
    ev.add_argument(
        "--data",
        default="bundled",
        choices=["bundled", "debian"],
        help="bundled 1000-image subset, or the full test set from dataset-fashion-mnist",
    )
    ev.add_argument("--data-root", default=None)
    ev.add_argument("--device", default="auto")
    ev.add_argument("--out", type=Path, default=Path("docs/results/eval"))
    args = parser.parse_args(argv)
    if args.command == "eval":
        _run_eval(args)
    if args.command == "demo":
        from .demo import run_demo

        run_demo(
            args.out,
            batch_size=args.batch_size,
            attack_steps=args.attack_steps,
            eot=args.eot,
            eps=args.eps,
            votes=args.votes,
            seed=args.seed,
            device=args.device,
            threads=args.threads,
        )


def _run_eval(args) -> None:
    import torch

    from .data.bundled import load_bundled_subset
    from .data.fashion_mnist import load_fashion_mnist
    from .evaluation.harness import EvalSettings, evaluate, write_report
    from .evaluation.sharding import distributed_context
    from .models.bundled import load_bundled_classifier, load_bundled_unet

    rank, world = distributed_context()
    if args.device == "auto":
        device = torch.device(
            f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
        )
    else:
        device = torch.device(args.device)
    settings = EvalSettings(
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
