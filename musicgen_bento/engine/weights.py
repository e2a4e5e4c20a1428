"""How the decoder's weights are held for its matrix products: joined where one product replaces
several (q|k|v of a layer, the codebooks' heads); on CPUs in bfloat16, packed once at start-up
into oneDNN's blocked layout; on CPUs where the operator asks (`MUSICGEN_QUANTIZE=int8`),
quantized to int8 for PyTorch's weight-only int8 kernel.

`F.linear` in bfloat16 on a CPU goes through oneDNN, which reorders the weight into its blocked
layout on every call; a decoding step reads every weight once, so the reorder is a large part of
it. Packing once (what inductor's CPU freezing does: `mkldnn._reorder_linear_weight` and
`mkldnn._linear_pointwise`) removes that reorder, with `F.linear`'s values bit for bit
(`bench/bench_packed_weights.py` compares the two). Those ops are private to torch, so the choice
checks itself where it runs: packed products must equal `F.linear`'s at several row counts, or the
weights stay dense and `WeightLayout.reason` says why.

Packing replaces the model's own linear modules in the decoder (one copy of each weight in memory,
as before); the modules keep computing what they did, so `generate()` and a second engine on the
same model still work. Float32 stays dense: there MKL does the products, and oneDNN's packed
float32 changed results with the row count.

Int8 is the operator's choice, not `auto`'s: it changes the products (a step's tokens drift from
float32's as bfloat16's do; `bench/bench_precision.py` measures it). It pays on CPUs without
AVX-512, where bfloat16 has no fast kernels and float32 products read 4 bytes a weight: there it
reads a quarter of the bytes at a lone request's few rows. On an AMX CPU packed bfloat16 does as
well at a few rows and far better at many (`bench/bench_cpu_products.py` compares every form).
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class WeightLayout:
    """How the decoder's linear weights are held for its products, and why (`weights`): dense;
    packed for oneDNN; or quantized to int8. Packed and int8 replace the model's linear modules."""

    packed: bool  # the model's linear modules replaced by products holding their weights otherwise
    reason: str
    packed_for_rows: int = 0  # the row count oneDNN's layout was chosen for (0: dense or int8)
    int8: bool = False  # weight-only int8 (MUSICGEN_QUANTIZE=int8) rather than oneDNN's layout

    @property
    def form(self) -> str:
        """`dense`, `packed` or `int8`, as `/health` shows it."""
        return "int8" if self.int8 else "packed" if self.packed else "dense"


# oneDNN packs a weight for a row count, and the layout decides which kernel multiplies it. Tried in
# this order, the first whose products equal `F.linear`'s wins: the layout for 16 rows suits a
# step's row counts, but on AMX CPUs its products differ from F.linear's at larger row counts
# (another kernel rounds them), where the layout for one row agrees at every count.
_PACKING_ROWS = (16, 1)

# Row counts the packed products are checked at against F.linear: a lone request, a few and a full
# batch of the default slots, and a prefill's many rows.
_CHECK_ROWS = (2, 4, 6, 16, 130)


class DenseLinear:
    """A product with a weight held as it is (a joint weight the model's modules are views of)."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight
        self.in_features = int(weight.shape[1])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class PackedLinear(torch.nn.Module):
    """A linear layer whose weight is packed in oneDNN's layout: `F.linear`'s values without the
    reorder each call. Replaces an `nn.Linear` in the model, whose dense weight is then freed."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, for_rows: int) -> None:
        super().__init__()
        self.in_features = int(weight.shape[1])
        self.out_features = int(weight.shape[0])
        self.for_rows = for_rows
        # A plain attribute, not a parameter or buffer: an opaque oneDNN tensor cannot be moved,
        # saved or iterated as parameters are, and the engine that packed it keeps it on the CPU.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), for_rows)
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")  # type: ignore[no-any-return]


# Rows up to which an int8 product runs PyTorch's weight-only int8 kernel. Its time grows with every
# row, where float32's barely does (bench/bench_cpu_products.py), so more rows (a prefill, up to a
# thousand) multiply by the weight dequantized to the activations' precision.
_INT8_KERNEL_ROWS = 32


class Int8Linear(torch.nn.Module):
    """A linear layer whose weight is quantized to int8, one symmetric scale per output channel.

    Up to `_INT8_KERNEL_ROWS` rows it multiplies with `aten._weight_int8pack_mm` (the kernel
    torchao's int8 weight-only CPU path calls), on bfloat16 activations: a step reads a quarter of
    float32's bytes. The product is rounded to bfloat16 and returned in the input's precision, so
    the rest of the decoder is unchanged. Replaces an `nn.Linear` in the model, whose weight is
    then freed.
    """

    quantized: torch.Tensor
    scales: torch.Tensor
    kernel_scales: torch.Tensor

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features = int(weight.shape[1])
        self.out_features = int(weight.shape[0])
        full = weight.detach().float()
        scales = full.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
        # Buffers, so that they follow the model between devices; not saved with it.
        quantized = (full / scales[:, None]).round().clamp(-127, 127).to(torch.int8)
        self.register_buffer("quantized", quantized, persistent=False)
        self.register_buffer("scales", scales, persistent=False)
        self.register_buffer("kernel_scales", scales.to(torch.bfloat16), persistent=False)
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach(), requires_grad=False)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight the int8 values and scales stand for, in `dtype`."""
        return (self.quantized.to(torch.float32) * self.scales[:, None]).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.shape[0] <= _INT8_KERNEL_ROWS:
            activations = flat.to(torch.bfloat16).contiguous()  # the kernel reads rows as laid out
            product = torch.ops.aten._weight_int8pack_mm(activations, self.quantized, self.kernel_scales)
            out = product.to(x.dtype)
        else:
            out = F.linear(flat, self.dequantized(x.dtype))
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


class JointPart(torch.nn.Module):
    """One of the modules joined into a packed product (q, k or v; one codebook's head): its columns
    of the joint product, which are what its own product gave (checked at start-up). Stands in the
    model for compatibility (`generate()`); the engine itself computes the joint product once."""

    joint: PackedLinear | Int8Linear

    def __init__(self, joint: PackedLinear | Int8Linear, start: int, stop: int) -> None:
        super().__init__()
        # Not a submodule: several parts share it, and the model should not list it once per part.
        self.__dict__["joint"] = joint
        self.start, self.stop = start, stop
        self.in_features, self.out_features = joint.in_features, stop - start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.joint(x)[..., self.start : self.stop]


def choose_layout(
    device: torch.device, dtype: torch.dtype, sample: torch.Tensor, quantize: bool = False
) -> WeightLayout:
    """How to hold the decoder's weights, checked on `sample` (one of its weights): int8 where
    asked (`quantize`) and its products check out, else packed for oneDNN where that checks out."""
    if device.type != "cpu":
        unused = "MUSICGEN_QUANTIZE=int8 is for CPUs; " if quantize else ""
        return WeightLayout(False, f"dense: {unused}{device.type} multiplies the weights as they are")
    if quantize:
        return choose_int8(sample)
    if dtype != torch.bfloat16:
        return WeightLayout(
            False, "dense: packing is for bfloat16 (float32 products go through MKL, and packed ones were slower)"
        )
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return WeightLayout(False, "dense: this torch build has no oneDNN linear products")
    mismatches: list[str] = []
    for for_rows in _PACKING_ROWS:
        mismatch = packed_products_differ(sample, for_rows)
        if not mismatch:
            rows = ", ".join(map(str, _CHECK_ROWS))
            rejected = f"; {'; '.join(mismatches)}" if mismatches else ""
            return WeightLayout(
                True,
                f"packed for oneDNN at start-up in its layout for {_rows(for_rows)}; the same values as F.linear "
                f"at {rows} rows (checked){rejected}",
                for_rows,
            )
        mismatches.append(f"the layout for {_rows(for_rows)} {mismatch}")
    return WeightLayout(False, f"dense: no packed layout gives F.linear's values ({'; '.join(mismatches)})")


def choose_int8(sample: torch.Tensor) -> WeightLayout:
    """Int8 weights where PyTorch's int8 kernel gives the dequantized weight's products to within
    bfloat16's rounding; dense otherwise, saying why."""
    mismatch = int8_products_differ(sample)
    if mismatch:
        return WeightLayout(False, f"dense: MUSICGEN_QUANTIZE=int8 was asked, but the int8 kernel {mismatch}")
    rows = ", ".join(map(str, _INT8_CHECK_ROWS))
    return WeightLayout(
        True,
        "int8 (MUSICGEN_QUANTIZE=int8): weight-only, one scale per output channel; products up to "
        f"{_INT8_KERNEL_ROWS} rows by PyTorch's int8 kernel on bfloat16 activations (checked against the "
        f"dequantized weight at {rows} rows), more rows by the dequantized weight",
        int8=True,
    )


# What an int8 weight holds (`Int8Linear`): a byte per weight, and per output channel its scale in
# float32 (the dequantized products) and in bfloat16 (the kernel's).
INT8_BYTES_PER_WEIGHT = 1
INT8_BYTES_PER_CHANNEL = 4 + 2

# Row counts the int8 kernel is checked at: a lone request, a full default batch, the most it takes.
_INT8_CHECK_ROWS = (2, 16, _INT8_KERNEL_ROWS)


def int8_products_differ(weight: torch.Tensor) -> str:
    """'' when the int8 product of `weight` matches the float32 product with its dequantized
    weight (of the bfloat16 activations) to within bfloat16's rounding of the result at every
    checked row count; otherwise what differs. Any error from the private op counts."""
    noise = torch.Generator().manual_seed(0)
    try:
        quantized = Int8Linear(weight, None)
        reference_weight = quantized.dequantized(torch.float32)
        with torch.inference_mode():
            for rows in _INT8_CHECK_ROWS:
                x = torch.randn(rows, weight.shape[1], generator=noise).to(torch.bfloat16).float()
                product, reference = quantized(x), F.linear(x, reference_weight)
                # bfloat16 keeps 8 significant bits: its rounding is within 2^-8 of the largest value.
                if not torch.allclose(product, reference, rtol=2**-7, atol=2**-8 * float(reference.abs().max())):
                    return f"differs from the dequantized weight's products at {rows} rows"
    except (RuntimeError, NotImplementedError) as error:
        return f"failed: {type(error).__name__}: {error}"
    return ""


def _rows(count: int) -> str:
    return "1 row" if count == 1 else f"{count} rows"


def packed_products_differ(weight: torch.Tensor, for_rows: int) -> str:
    """'' when the product of `weight` packed for `for_rows` rows, and its parts' columns, equal
    `F.linear`'s at every checked row count; otherwise what differs. Any error from the private ops
    counts as a difference."""
    noise = torch.Generator().manual_seed(0)
    try:
        packed = PackedLinear(weight, None, for_rows)
        half = weight.shape[0] // 2
        with torch.inference_mode():
            for rows in _CHECK_ROWS:
                x = torch.randn(rows, weight.shape[1], generator=noise).to(weight.dtype)
                joint = packed(x)
                if not torch.equal(joint, F.linear(x, weight)):
                    return f"differs at {rows} rows"
                if not torch.equal(joint[:, half:], F.linear(x, weight[half:])):
                    return f"differs in a part's columns at {rows} rows"
    except (RuntimeError, NotImplementedError) as error:
        return f"failed: {type(error).__name__}: {error}"
    return ""


# A module's place in the model: its parent and its attribute name ("0" in a ModuleList).
Slot = tuple[torch.nn.Module, str]


def product(weight: torch.Tensor, bias: torch.Tensor | None, layout: WeightLayout) -> PackedLinear | Int8Linear:
    """A linear layer of `weight` (and `bias`) held as `layout` says: int8 or packed for oneDNN."""
    if layout.int8:
        return Int8Linear(weight, bias)
    return PackedLinear(weight, bias, layout.packed_for_rows)


def join(slots: list[Slot], layout: WeightLayout) -> DenseLinear | PackedLinear | Int8Linear:
    """One product for the linear modules in `slots`, their outputs side by side.

    Dense: the joint weight, the modules made views of it (`joint_weight`). Packed or int8: one
    joint product held so, each module replaced in its parent by its `JointPart`. Modules already joined
    by another engine on the same model are reused as they are.
    """
    modules = [getattr(parent, name) for parent, name in slots]
    if not layout.packed:
        return DenseLinear(joint_weight(modules))
    if isinstance(modules[0], JointPart):
        return modules[0].joint
    biases = [module.bias for module in modules]
    bias = None
    if any(part is not None for part in biases):
        bias = torch.cat(
            [
                part if part is not None else module.weight.new_zeros(module.weight.shape[0])
                for part, module in zip(biases, modules, strict=True)
            ]
        )
    joint = product(torch.cat([module.weight.detach() for module in modules]), bias, layout)
    bounds = itertools.accumulate((module.weight.shape[0] for module in modules), initial=0)
    for (parent, name), (start, stop) in zip(slots, itertools.pairwise(bounds), strict=True):
        setattr(parent, name, JointPart(joint, start, stop))
    return joint


def pack(slot: Slot, layout: WeightLayout) -> None:
    """Replaces the linear module in `slot` by its packed or int8 form (once: a replaced one stays)."""
    parent, name = slot
    module = getattr(parent, name)
    if not isinstance(module, PackedLinear | Int8Linear | JointPart):
        setattr(parent, name, product(module.weight, module.bias, layout))


def release_replaced_weights(model: Any, replaced: bool) -> None:
    """Hands the memory of the weights the decoder replaced back to the operating system.

    Two things keep replaced weights resident. transformers maps a safetensors checkpoint and, where
    the precision matches, makes each tensor a view of the map, which stays mapped while any of them
    lives: right while every weight is in use (the kernel can drop and re-read clean pages, and
    services on one node share them), but once most of the decoder's weights are int8 or packed
    copies (`replaced`), the map keeps the old ones: at the musicgen-small shape with int8, 1968 MiB
    of the file beside 797 MiB of weights in use. So the model's remaining views of mapped files
    are copied into the process's memory, and the file goes. And glibc keeps freed blocks in the
    heap for later allocations: a model built in memory stayed at 2651 MiB resident after
    quantizing until `malloc_trim` gave the float weights back (1686 MiB). Called before the cache
    is allocated, so that the start-up peak is not the old weights plus the cache.
    """
    if replaced:
        mapped = _file_mappings()
        for module in model.modules():
            for tensors in (module._parameters, module._buffers):
                for name, tensor in tensors.items():
                    if tensor is None or tensor.device.type != "cpu":
                        continue
                    if not any(start <= tensor.data_ptr() < end for start, end in mapped):
                        continue
                    if isinstance(tensor, torch.nn.Parameter):
                        tensor.data = tensor.data.clone()  # the same parameter: what holds it sees the copy
                    else:
                        tensors[name] = tensor.clone()
    # Not glibc (no such library or function): its allocator returns memory in its own way.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _file_mappings() -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of files (Linux; elsewhere none)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    ranges = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            start, end = fields[0].split("-")
            ranges.append((int(start, 16), int(end, 16)))
    return ranges


def joint_weight(modules: list[Any]) -> torch.Tensor:
    """One weight for several linear or embedding `modules`, their weights stacked along the first
    dimension; each module's weight becomes a view of it, so the model keeps a single copy and
    works as before. Modules already sharing one such weight (another engine on the same model)
    are left as they are."""
    weights = [module.weight for module in modules]
    first, width = weights[0], weights[0].shape[1:]
    rows = sum(weight.shape[0] for weight in weights)
    offsets = itertools.accumulate((weight.shape[0] * weight[0].numel() for weight in weights), initial=0)
    if all(
        weight.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
        and weight.storage_offset() == first.storage_offset() + offset
        and weight.is_contiguous()
        for weight, offset in zip(weights, offsets, strict=False)  # offsets has one more
    ):
        return first.detach().new_empty(0).set_(first.untyped_storage(), first.storage_offset(), (rows, *width))
    joint = torch.cat([weight.detach() for weight in weights])
    start = 0
    for module, weight in zip(modules, weights, strict=True):
        module.weight = torch.nn.Parameter(joint[start : start + weight.shape[0]], requires_grad=False)
        start += weight.shape[0]
    return joint
