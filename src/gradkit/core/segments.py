"""Tensor boundaries inside a flat buffer, and reductions per tensor and per row over it.

On the flat fast path (:mod:`gradkit.core.flat`) the tensors of a param group lie end to end
in one buffer. A rule that reduces per tensor (AdamP's cosine test, NovoGrad's layer norms,
MARS's per-tensor clipping) reads the boundaries from ``ctx.segments``, a :class:`Segments`, and
computes the per-tensor sums of the whole group with one segmented reduction
(``torch.segment_reduce``), then broadcasts per-tensor values back to the elements with one
gather. The number of operations, hence the size of a compiled graph and its compile time, does
not depend on the number of tensors; on the per-tensor path the same rule is a loop over the
tensors, and the two are tested against each other.

Rows: the output channels of a tensor with two or more dimensions (the rows of
``w.reshape(w.shape[0], -1)``); a tensor with fewer dimensions, or with no elements, is one row.
Rows are contiguous in the flat buffer, so per-row sums are a segmented reduction too.

Every field is a tensor on the buffers' device, so that compiled code takes them as inputs whose
sizes are symbolic (one graph for every model). The per-element index tensors (``ids``,
``row_ids``; 4 bytes per parameter each, int32) are made only for groups whose chain asks for
them (:attr:`gradkit.core.transform.GradientTransformation.segments`), and not at all with
``elements=False`` (row and tensor fields only, for rules that compute their per-row values
themselves).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["Segments", "SEGMENT_KINDS"]

#: what a transform may ask for: per-tensor reductions only, or per-row ones as well
SEGMENT_KINDS = ("tensors", "rows")


class Segments:
    """Where each tensor of a group lies in the group's flat buffers (see the module docstring).

    Args:
        shapes: the tensors' shapes, in buffer order.
        device: the buffers' device.
        dtype: the buffers' floating dtype; the per-tensor constants ``numel`` and ``row_size``
            take it, or float32 for 16-bit dtypes (which cannot hold element counts exactly).
        rows: also make the per-row fields (``row_lengths``, ``row_ids``, ...).
        elements: make the per-element indices (``ids``, ``row_ids``); without them only the
            reductions of per-row values and the per-tensor and per-row fields are usable.

    Attributes (tensors): ``lengths`` (elements per tensor, int64), ``ids`` (tensor index of
    each element, int32), ``numel``, ``is_matrix`` and ``ndim`` (per tensor: element count as
    ``dtype``, two or more dimensions and not empty, number of dimensions); with ``rows``:
    ``row_lengths`` (int64), ``row_ids`` (int32, per element), ``rows_per_tensor`` (int64),
    ``row_tensor`` (tensor index of each row, int32) and ``row_size`` (elements per row of each
    tensor, as ``dtype``). Python attributes: ``shapes``, ``numels``, ``count`` (tensors) and
    ``total`` (elements), for :meth:`views`.
    """

    def __init__(
        self,
        shapes: Sequence[torch.Size | tuple[int, ...]],
        device: torch.device,
        dtype: torch.dtype,
        *,
        rows: bool = False,
        elements: bool = True,
    ) -> None:
        numels = [math.prod(s) for s in shapes]
        # element counts as floats: exact up to 2^24 at least (bf16 and fp16 would round them)
        dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        self.shapes = [tuple(s) for s in shapes]
        self.numels = numels
        self.count = len(numels)
        self.total = sum(numels)
        self.lengths = torch.tensor(numels, dtype=torch.int64, device=device)
        if elements:
            self.ids = torch.repeat_interleave(
                torch.arange(self.count, dtype=torch.int32, device=device),
                self.lengths,
                output_size=self.total,
            )
        self.numel = torch.tensor(numels, dtype=dtype, device=device)
        self.is_matrix = torch.tensor(
            [len(s) >= 2 and n > 0 for s, n in zip(shapes, numels)], device=device
        )
        self.ndim = torch.tensor([len(s) for s in shapes], dtype=torch.int64, device=device)
        self.has_rows = rows
        if not rows:
            return
        n_rows = [s[0] if len(s) >= 2 and n > 0 else 1 for s, n in zip(shapes, numels)]
        row_len = [n // r for n, r in zip(numels, n_rows)]
        # per-row fields from Python lists (one entry per row: small), so that building a
        # Segments inside traced code makes constants, not data-dependent shapes
        self.rows_per_tensor = torch.tensor(n_rows, dtype=torch.int64, device=device)
        self.row_lengths = torch.tensor(
            [n for n, r in zip(row_len, n_rows) for _ in range(r)], dtype=torch.int64, device=device
        )
        if elements:
            self.row_ids = torch.repeat_interleave(
                torch.arange(sum(n_rows), dtype=torch.int32, device=device),
                self.row_lengths,
                output_size=self.total,
            )
        self.row_tensor = torch.tensor(
            [i for i, r in enumerate(n_rows) for _ in range(r)], dtype=torch.int32, device=device
        )
        self.row_size = torch.tensor(row_len, dtype=dtype, device=device)

    # ------------------------------------------------------------------ per-tensor views
    def use_views(self, x: Tensor) -> bool:
        """True when a rule should run its per-tensor form on :meth:`views` of the flat buffer
        rather than the segmented one: eagerly on a CPU, where a loop over tensors costs little
        (no kernel launches) and ``torch.segment_reduce`` and gathers run far below memory
        bandwidth (measured: docs/benchmarks.md). Compiled code and accelerators use the
        segmented form (one graph for any number of tensors; no launch per tensor)."""
        return x.device.type == "cpu" and not torch.compiler.is_compiling()

    def views(self, flat: Tensor, per_tensor: bool = False) -> list[Tensor]:
        """The tensors of the group as views of the flat ``flat`` (with their shapes); with
        ``per_tensor``, ``flat`` holds one value per tensor: one 0-d view each. An empty
        placeholder (state not allocated yet) gives empty placeholders."""
        if flat.numel() == 0 and self.total > 0:
            return [flat.new_empty(0) for _ in self.numels]
        if per_tensor:
            return list(flat.unbind())
        return [v.view(s) for v, s in zip(flat.split(self.numels), self.shapes)]

    # ------------------------------------------------------------------ reductions
    def tensor_sum(self, x: Tensor) -> Tensor:
        """Per-tensor sums of the flat ``x`` (one value per tensor; 0 for an empty tensor)."""
        return torch.segment_reduce(x, "sum", lengths=self.lengths, initial=0)

    def tensor_norm(self, x: Tensor) -> Tensor:
        """Per-tensor Euclidean norms of the flat ``x``."""
        return self.tensor_sum(x * x).sqrt()

    def tensor_abs_max(self, x: Tensor) -> Tensor:
        """Per-tensor largest magnitude of the flat ``x`` (0 for an empty tensor)."""
        return torch.segment_reduce(x.abs(), "max", lengths=self.lengths, initial=0)

    def row_sum(self, x: Tensor) -> Tensor:
        """Per-row sums of the flat ``x`` (one value per row of every tensor)."""
        return torch.segment_reduce(x, "sum", lengths=self.row_lengths, initial=0)

    def sum_rows(self, per_row: Tensor) -> Tensor:
        """Per-tensor sums of per-row values."""
        return torch.segment_reduce(per_row, "sum", lengths=self.rows_per_tensor, initial=0)

    def max_rows(self, per_row: Tensor) -> Tensor:
        """Per-tensor maxima of per-row values."""
        return torch.segment_reduce(per_row, "max", lengths=self.rows_per_tensor)

    # ------------------------------------------------------------------ broadcasts
    def expand(self, per_tensor: Tensor) -> Tensor:
        """Per-tensor values repeated over each tensor's elements (a flat tensor)."""
        return per_tensor.index_select(0, self.ids)

    def expand_rows(self, per_row: Tensor) -> Tensor:
        """Per-row values repeated over each row's elements (a flat tensor)."""
        return per_row.index_select(0, self.row_ids)

    def to_rows(self, per_tensor: Tensor) -> Tensor:
        """Per-tensor values repeated over each tensor's rows."""
        return per_tensor.index_select(0, self.row_tensor)

    def __repr__(self) -> str:
        return f"Segments(tensors={self.count}, elements={self.total}, rows={self.has_rows})"
