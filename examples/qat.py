"""Quantization-aware training on the demo's digits CNN: PTQ, a few epochs of QAT, export.

    python examples/qat.py [--epochs 3] [--learn-ranges] [--onnx digits_w4a8_qat.onnx]

The path (see quantrewrite/qat.py): quantize with a config (w4a8: 4-bit per-channel weights, 8-bit
activations), calibrate, optionally start learned activation ranges at the calibrated amax, fine-tune the
fake-quantized model with the ordinary training loop (the fake quantization passes gradients straight through
inside the range), then evaluate and export it like any calibrated model.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from quantrewrite import calibrate, quantize_model
from quantrewrite.demo import demo_config
from quantrewrite.demo_model import digits_batches, digits_tensors, load_digits_cnn
from quantrewrite.qat import freeze_batchnorm, init_learned_ranges

CALIB_BATCHES = 8  # 512 train images, as in the demo


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(images).argmax(1) == labels).float().mean())


def qat_config(weights: str = "w4a8", learn_ranges: bool = False):
    """The demo's config (functions.add on, the stem's input max-calibrated), with learned input ranges if asked."""
    config = demo_config(weights, "entropy")
    if not learn_ranges:
        return config
    data = config.to_dict()
    data["defaults"]["input"]["learn_amax"] = True
    return type(config)(data, source=f"{config.source} + learned input ranges")


def ptq(weights: str = "w4a8", learn_ranges: bool = False) -> nn.Module:
    """The demo model quantized with ``weights`` and calibrated on the first 512 train images (entropy)."""
    qmodel = quantize_model(load_digits_cnn(), qat_config(weights, learn_ranges))
    calibrate(qmodel, digits_batches("train")[:CALIB_BATCHES], progress=False)
    init_learned_ranges(qmodel)  # no-op unless the config asked for learn_amax
    return qmodel


def finetune(qmodel: nn.Module, epochs: int, *, lr: float = 3e-4, batch_size: int = 64, seed: int = 0,
             samples: int | None = None, after_epoch: Callable[[int, nn.Module], None] | None = None) -> nn.Module:
    """A few epochs of QAT on the train split (Adam, cosine learning-rate decay, batch-norm statistics fixed).

    ``samples`` limits the epoch to the first train images; ``after_epoch(epoch, qmodel)`` is called after
    each epoch (1-based), e.g. to evaluate.
    """
    images, labels = digits_tensors("train")
    images, labels = images[:samples], labels[:samples]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(qmodel.parameters(), lr=lr)
    steps = epochs * ((len(images) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    for epoch in range(1, epochs + 1):
        qmodel.train()
        freeze_batchnorm(qmodel)
        order = torch.randperm(len(images), generator=generator)
        for index in order.split(batch_size):
            loss = F.cross_entropy(qmodel(images[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        qmodel.eval()
        if after_epoch is not None:
            after_epoch(epoch, qmodel)
    return qmodel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--weights", choices=("int8", "w4a8"), default="w4a8")
    parser.add_argument("--learn-ranges", action="store_true", help="learn the activation ranges too (PACT-style)")
    parser.add_argument("--onnx", metavar="OUT.onnx", help="export the fine-tuned model (needs the onnx extra)")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)

    test_images, test_labels = digits_tensors("test")
    print(f"fp32:            {100 * accuracy(load_digits_cnn(), test_images, test_labels):.2f}% test accuracy")
    qmodel = ptq(args.weights, args.learn_ranges)
    print(f"{args.weights} PTQ:        {100 * accuracy(qmodel, test_images, test_labels):.2f}%")

    def report(epoch: int, model: nn.Module) -> None:
        print(f"{args.weights} QAT epoch {epoch}: {100 * accuracy(model, test_images, test_labels):.2f}%")

    tuned = finetune(copy.deepcopy(qmodel), args.epochs, lr=args.lr, after_epoch=report)
    if args.onnx:
        from quantrewrite import export_onnx

        print(export_onnx(tuned, test_images[:8], args.onnx, verify=True))


if __name__ == "__main__":
    main()
