"""``nn.MultiheadAttention`` rewritten on plain ``nn.Linear`` layers, so int8 reaches it.

torch's dynamic quantisation replaces ``nn.Linear`` modules only. ``nn.MultiheadAttention``
keeps its in-projection as a bare parameter and its out-projection as a
``NonDynamicallyQuantizableLinear``, so a quantised ViT-L kept a third of its matmul FLOPs in
fp32 (benchmarks/README.md, `int8_engines.py`). `LinearAttention` computes the same inference
forward with both projections as ``nn.Linear`` and ``scaled_dot_product_attention``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class LinearAttention(torch.nn.Module):
    """``nn.MultiheadAttention``'s inference forward with its projections as ``nn.Linear``.

    Same call and return (``(output, None)``: attention weights are never asked for here).
    Self-attention (query, key and value one tensor, as in a ViT) projects once; otherwise each
    input is projected and its third kept. No dropout: encoders only run in eval mode.
    """

    def __init__(self, embed_dim: int, num_heads: int, bias: bool, batch_first: bool):
        super().__init__()
        self.embed_dim, self.num_heads, self.batch_first = embed_dim, num_heads, batch_first
        self.in_proj = torch.nn.Linear(embed_dim, 3 * embed_dim, bias=bias)
        self.out_proj = torch.nn.Linear(embed_dim, embed_dim, bias=bias)

    @classmethod
    def from_multihead(cls, mha: torch.nn.MultiheadAttention) -> LinearAttention:
        new = cls(mha.embed_dim, mha.num_heads, mha.in_proj_bias is not None, mha.batch_first)
        new.to(mha.in_proj_weight.device, mha.in_proj_weight.dtype)
        with torch.no_grad():
            new.in_proj.weight.copy_(mha.in_proj_weight)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.in_proj_bias is not None:
                new.in_proj.bias.copy_(mha.in_proj_bias)
                new.out_proj.bias.copy_(mha.out_proj.bias)
        return new

    def forward(self, query, key, value, key_padding_mask=None, need_weights=False,
                attn_mask=None, average_attn_weights=True, is_causal=False):  # fmt: skip
        if key_padding_mask is not None or need_weights:
            raise ValueError("LinearAttention takes no key_padding_mask and returns no weights")
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        if query is key and key is value:
            q, k, v = self.in_proj(query).chunk(3, dim=-1)
        else:
            q = self.in_proj(query).chunk(3, dim=-1)[0]
            k = self.in_proj(key).chunk(3, dim=-1)[1]
            v = self.in_proj(value).chunk(3, dim=-1)[2]
        n, length, width = q.shape
        head = width // self.num_heads

        def split(t):  # (n, L, width) -> (n, heads, L, head)
            return t.reshape(n, t.shape[1], self.num_heads, head).transpose(1, 2)

        if attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = ~attn_mask  # MultiheadAttention masks out True; SDPA keeps True
        out = F.scaled_dot_product_attention(
            split(q), split(k), split(v), attn_mask=attn_mask, is_causal=is_causal
        )
        out = self.out_proj(out.transpose(1, 2).reshape(n, length, width))
        return (out if self.batch_first else out.transpose(0, 1)), None


def unpack_attention(module: torch.nn.Module) -> int:
    """Replace (in place) every ``nn.MultiheadAttention`` in ``module`` whose query, key and
    value share one width by an equivalent `LinearAttention`; return how many."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, torch.nn.MultiheadAttention) and child._qkv_same_embed_dim:
            setattr(module, name, LinearAttention.from_multihead(child))
            count += 1
        else:
            count += unpack_attention(child)
    return count
