"""Attention as three-dimensional batched products, for programs ExecuTorch lowers to XNNPACK.

HF's eager attention multiplies [batch, heads, tokens, dim] tensors with `torch.matmul`, which
torch.export decomposes into `expand` + `bmm`. ExecuTorch 1.4 runs every resulting `expand_copy`
outside XNNPACK, as a portable copy: 48 per ViT-B program, splitting it into 111 XNNPACK graphs.
The same arithmetic written as `bmm` on [batch * heads, tokens, dim] leaves no expand: 75 graphs,
identical logits, and the default model's dynamic int8 program ran 113 -> 163 images/s at batch
32 on an Intel AMX Xeon (docs/measurements/bench.md). SDPA is no answer: ExecuTorch decomposes it
back into matmuls plus mask arithmetic run outside XNNPACK (83 images/s).

Registered with transformers' `AttentionInterface`, so it reaches every model type whose attention
goes through that interface (`ModelType.export_attention`); BEiT builds its own attention class.

`pt2-int8` programs (compiled by Inductor, not lowered to XNNPACK) take a second form, `MATMUL`:
four-dimensional `matmul`s and no attention probabilities returned, the shape torchao's int8
attention fusion matches (`vitgender.runtimes.int8_attention`). Returning the probabilities gives
the softmax a second user, which stops the pattern.
"""

from __future__ import annotations

BMM = "vitgender_bmm"
MATMUL = "vitgender_matmul"


def bmm_attention(module, query, key, value, attention_mask, scaling: float, dropout: float = 0.0, **kwargs):
    """transformers' `eager_attention_forward`, with [batch * heads] folded into bmm's batch."""
    import torch

    batch, heads, tokens, dim = query.shape
    keys = key.shape[2]
    weights = torch.bmm(
        query.reshape(batch * heads, tokens, dim), key.reshape(batch * heads, keys, dim).transpose(1, 2)
    )
    weights = torch.nn.functional.softmax(weights * scaling, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    if attention_mask is not None:  # HF's head mask, broadcast over [batch, heads, tokens, keys]
        weights = (weights.reshape(batch, heads, tokens, keys) * attention_mask).reshape(batch * heads, tokens, keys)
    output = torch.bmm(weights, value.reshape(batch * heads, keys, value.shape[-1])).reshape(batch, heads, tokens, -1)
    return output.transpose(1, 2).contiguous(), weights.reshape(batch, heads, tokens, keys)


def matmul_attention(module, query, key, value, attention_mask, scaling: float, dropout: float = 0.0, **kwargs):
    """transformers' `eager_attention_forward` without its second output (see the module docstring)."""
    import torch

    weights = torch.nn.functional.softmax(torch.matmul(query, key.transpose(-1, -2)) * scaling, dim=-1)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    if attention_mask is not None:  # HF's head mask
        weights = weights * attention_mask
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make `attn_implementation=BMM` and `=MATMUL` loadable (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(BMM, bmm_attention)
    AttentionInterface.register(MATMUL, matmul_attention)
