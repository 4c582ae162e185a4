"""Train the demo's DigitsCNN on the shipped digits and write quantrewrite/data/digits_cnn.pt.

Seeded and CPU-only; takes a few seconds. The result is a plain state_dict
(``torch.load(path, weights_only=True)``). Run: python benchmarks/train_demo_model.py
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from quantrewrite.demo_model import WEIGHTS_FILE, DigitsCNN, digits_tensors

OUT = Path(__file__).resolve().parent.parent / "quantrewrite" / "data" / WEIGHTS_FILE
SEED = 0
EPOCHS = 40
BATCH_SIZE = 64


def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(images).argmax(1) == labels).float().mean())


def shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random translations by up to one pixel (zero fill): a little augmentation for 1400 images."""
    padded = F.pad(images, (1, 1, 1, 1))
    dy, dx = torch.randint(0, 3, (2,), generator=generator).tolist()
    return padded[:, :, dy:dy + 8, dx:dx + 8]


def main() -> None:
    torch.manual_seed(SEED)
    torch.set_num_threads(1)                     # tiny tensors: threads cost more than they give
    generator = torch.Generator().manual_seed(SEED)
    train_x, train_y = digits_tensors("train")
    test_x, test_y = digits_tensors("test")
    model = DigitsCNN()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = EPOCHS * -(-len(train_x) // BATCH_SIZE)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=steps)
    start = time.perf_counter()
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        for batch in order.split(BATCH_SIZE):
            loss = F.cross_entropy(model(shift(train_x[batch], generator)), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1:3d}  loss {loss.item():.4f}  train {accuracy(model, train_x, train_y):.4f}  "
                  f"test {accuracy(model, test_x, test_y):.4f}")
    model.eval()
    torch.save(model.state_dict(), OUT)
    print(f"trained in {time.perf_counter() - start:.1f} s; train accuracy {accuracy(model, train_x, train_y):.4f}, "
          f"test accuracy {accuracy(model, test_x, test_y):.4f}; wrote {OUT} ({OUT.stat().st_size / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
