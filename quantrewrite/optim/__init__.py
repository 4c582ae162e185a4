"""Optimizer helpers of pytorch-quantization: ``from quantrewrite.optim import helper``."""

from quantrewrite.optim import helper

__all__ = ["helper"]
