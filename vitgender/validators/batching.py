"""Batch invariance: does an image get the same answer alone as inside a batch of other images?

It must, for an artifact served behind a dynamic batcher: otherwise one user's answer depends
on whoever else's request shared the batch. Dynamic int8 breaks it by construction (ORT derives
each activation scale from the whole batch tensor); float and static int8 artifacts differ only
by float rounding between GEMM kernels picked for different batch sizes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

PROBES = 8  # images whose answers are compared
BATCH = 32  # the size of the batches they are hidden in


def batch_variation(
    run: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, probes: int = PROBES, batch: int = BATCH
) -> dict:
    """Run `probes` images alone, then inside two batches with different companions and positions.

    Returns the largest |Δlogit| between an image's alone and batched answers, and how many of
    its top-1 decisions changed. With fewer images than `batch` the batches are as large as the
    inputs allow (companions then overlap, positions still differ).
    """
    n = min(probes, len(inputs))
    if n == 0:
        return {"batch_max_abs_logit_diff": 0.0, "batch_flips": 0, "batch_probes": 0, "batch_size": 0}
    alone = np.concatenate([run(inputs[i : i + 1]) for i in range(n)])
    others = np.arange(n, len(inputs))
    size = max(n, min(batch, len(inputs)))
    worst, flips = 0.0, 0
    for trial, companions in enumerate((others[: size - n], others[::-1][: size - n])):
        order = np.random.default_rng(trial).permutation(np.concatenate([np.arange(n), companions]))
        out = run(inputs[order])
        for row, index in enumerate(order):
            if index < n:
                worst = max(worst, float(np.abs(out[row] - alone[index]).max()))
                flips += int(out[row].argmax() != alone[index].argmax())
    return {"batch_max_abs_logit_diff": worst, "batch_flips": flips, "batch_probes": n, "batch_size": size}
