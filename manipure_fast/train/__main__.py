"""``python -m manipure_fast.train {diffusion,classifier} ...``: retrain the bundled models."""

from __future__ import annotations

import argparse
from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m manipure_fast.train", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    diff = sub.add_parser("diffusion", help="the epsilon-prediction UNet")
    diff.add_argument("--out", type=Path, default=WEIGHTS / "fashion_unet.safetensors")
    diff.add_argument("--steps", type=int, default=2000)
    diff.add_argument("--batch-size", type=int, default=64)
    diff.add_argument("--lr", type=float, default=1e-3)
    diff.add_argument("--max-train-timestep", type=int, default=300)
    diff.add_argument("--seed", type=int, default=0)
    diff.add_argument("--save-every", type=int, default=250)
    diff.add_argument("--threads", type=int, default=None)
    diff.add_argument("--data-root", default=None)
    clf = sub.add_parser("classifier", help="the Fashion-MNIST classifier")
    clf.add_argument("--out", type=Path, default=WEIGHTS / "fashion_classifier.safetensors")
    clf.add_argument("--epochs", type=int, default=4)
    clf.add_argument("--batch-size", type=int, default=128)
    clf.add_argument("--lr", type=float, default=3e-3)
    clf.add_argument("--seed", type=int, default=0)
    clf.add_argument("--threads", type=int, default=None)
    clf.add_argument("--data-root", default=None)
    args = parser.parse_args(argv)
    if args.what == "diffusion":
        from .diffusion import train_diffusion

        train_diffusion(
            args.out,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            max_train_timestep=args.max_train_timestep,
            seed=args.seed,
            save_every=args.save_every,
            threads=args.threads,
            data_root=args.data_root,
        )
    elif args.what == "classifier":
        from .classifier import train_classifier

        train_classifier(
            args.out,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            threads=args.threads,
            data_root=args.data_root,
        )


if __name__ == "__main__":
    main()
