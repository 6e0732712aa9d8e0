"""torchao's int8 attention fusion, applied where Inductor compiles a `pt2-int8` program.

A static `pt2-int8` program of a model whose attention goes through transformers' interface holds
its attention as quantize/dequantize around two `matmul`s and a softmax (`models.attention.MATMUL`).
Inductor alone runs those as float bmm + softmax + copies: about 0.86 ms of an image's ~3.0 ms on
an Intel AMX Xeon, the largest share outside the linears (docs/measurements/bench.md). torchao's
`qsdpa_fusion` pass rewrites each such block into one `torchao.qscaled_dot_product` int8 kernel.

On torch 2.13 the pass needs one more thing: Inductor's joint-graph pass rewrites `softmax(x *
scale)` into a form that guards non-finite inputs with `where(isfinite(x), ...)`, and that guard
hides the pattern (0 of 12 blocks fuse with it, 12 of 12 without). The guard only changes results
for inputs holding inf or NaN, which a ViT classifier's attention scores (no mask, finite weights)
never do, so it is switched off while a program compiles, never for the rest of the process.

torchao is optional (`pip install vitgender[inductor]`): without it, or on a CPU its build has no int8
attention kernel for, `compiling()` patches nothing and a program's quantized attention runs unfused
(no speed-up). With it, a program whose attention is
float compiles under the same context, where the pattern matches nothing and the guard's removal
changes no finite result.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator


@functools.cache
def _fusion_pass():
    """torchao's pattern pass with the int8 attention lowerings registered once; None without torchao
    (its import noise is silenced in `vitgender/__init__.py`) or where its build has no CPU kernel for
    this machine (seen on an AVX2-only AMD EPYC: the op is declared, and the compiled program failed
    with "Could not run 'torchao::qscaled_dot_product' ... from the 'CPU' backend")."""
    try:
        from torchao.prototype.inductor.fx_passes.qsdpa_fusion import _qsdpa_init, custom_pass
    except ImportError:
        return None
    import torch
    import torch._inductor.config as inductor_config

    if not torch._C._dispatch_has_kernel_for_dispatch_key("torchao::qscaled_dot_product", "CPU"):
        return None

    with inductor_config.patch(post_grad_custom_pre_pass=custom_pass):
        _qsdpa_init()  # registers into the pass that config names
    return custom_pass


def _stable_softmax(scaled, stable, dim, keepdim):
    return stable


def available() -> bool:
    return _fusion_pass() is not None


@contextlib.contextmanager
def compiling() -> Iterator[None]:
    """The context a pt2 program's compilation runs under (see the module docstring)."""
    custom_pass = _fusion_pass()
    if custom_pass is None:
        yield
        return
    from unittest import mock

    import torch._inductor.config as inductor_config
    import torch._inductor.fx_passes.joint_graph as joint_graph

    guard = "_preserve_scaled_softmax_nonfinite_semantics"  # torch 2.13's name; a later torch may not have it
    unguarded = mock.patch.object(joint_graph, guard, _stable_softmax) if hasattr(joint_graph, guard) else None
    with inductor_config.patch(post_grad_custom_pre_pass=custom_pass), unguarded or contextlib.nullcontext():
        yield
