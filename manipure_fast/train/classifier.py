"""Train the bundled Fashion-MNIST classifier (SmallCNN) with AdamW, a one-cycle schedule and
random flips/shifts; the test accuracy is measured on all 10k test images and recorded in the
JSON sidecar with the seed, epochs and wall time."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..data.fashion_mnist import load_fashion_mnist
from ..models.classifier import SmallCNN


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    correct = sum(
        int((model(images[i : i + batch]).argmax(1) == labels[i : i + batch]).sum())
        for i in range(0, images.shape[0], batch)
    )
    return correct / images.shape[0]


def train_classifier(
    out: Path,
    *,
    epochs: int = 4,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    threads: int | None = None,
    data_root: str | None = None,
) -> float:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    images, labels = load_fashion_mnist("train", data_root)
    test_images, test_labels = load_fashion_mnist("test", data_root)
    model = SmallCNN()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * (images.shape[0] // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    started = time.time()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(images.shape[0], generator=generator)
        for i in range(images.shape[0] // batch_size):
            index = order[i * batch_size : (i + 1) * batch_size]
            x, y = images[index], labels[index]
            if torch.rand((), generator=generator) < 0.5:
                x = x.flip(-1)
            shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
            x = torch.roll(x, shifts=shift, dims=(-2, -1))
            loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.05)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        acc = accuracy(model, test_images, test_labels)
        print(
            f"epoch {epoch + 1}/{epochs} loss {loss.item():.3f} test accuracy {acc:.4f} "
            f"elapsed {time.time() - started:.0f}s",
            flush=True,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    out.with_suffix(".json").write_text(
        json.dumps(
            dict(
                kind="fashion-mnist SmallCNN classifier, input [B,1,32,32] in [0,1]",
                model_kwargs={},
                seed=seed,
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                test_accuracy=acc,
                test_images=int(test_images.shape[0]),
                wall_time_s=round(time.time() - started, 1),
                threads=torch.get_num_threads(),
                torch=torch.__version__,
            ),
            indent=2,
        )
        + "\n"
    )
    return acc
