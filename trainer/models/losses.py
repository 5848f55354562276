"""Losses on the networks' outputs: a stream's logits, or the joint stream's dict of logits and fused output.

A fusion module says what it outputs (``output = "logits"`` or ``"probabilities"``, trainer/models/fusion.py);
``class_log_probs`` turns either into log-probabilities, so that one negative log-likelihood scores both.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

PROB_EPS = 1e-8  # probabilities are clamped to this before log: a class both streams rule out stays finite


def class_log_probs(output: Tensor, kind: str = "logits") -> Tensor:
    """(B, K) log-probabilities of an output that is ``"logits"`` or ``"probabilities"`` (a fusion's ``output``)."""
    if kind == "probabilities":
        return output.float().clamp_min(PROB_EPS).log()
    if kind != "logits":
        raise ValueError(f"kind must be 'logits' or 'probabilities', got {kind!r}")
    return output.float().log_softmax(dim=-1)


class JointLoss(nn.Module):
    """CE(fused) + stream_weight * (CE(spatial) + CE(temporal)) on a TwoStream output.

    The stream terms keep each stream learning on its own (with 0 only the fusion's loss trains them).
    A fusion that outputs probabilities (average, weighted) is scored by the NLL of their clamped log.
    """

    def __init__(self, *, fused_output: str, stream_weight: float) -> None:
        super().__init__()
        if stream_weight < 0:
            raise ValueError(f"stream_weight must be >= 0, got {stream_weight}")
        self.fused_output, self.stream_weight = fused_output, float(stream_weight)

    def forward(self, output: dict[str, Tensor], target: Tensor) -> Tensor:
        fused = F.nll_loss(class_log_probs(output["fused"], self.fused_output), target)
        # Always part of the graph, even with weight 0: DDP then sees every parameter used in every step.
        streams = F.cross_entropy(output["spatial"], target) + F.cross_entropy(output["temporal"], target)
        return fused + self.stream_weight * streams
