"""``dot``: ``tl.dot`` with the precision the host chose, including a workaround for Triton's interpreter.

Triton's interpreter (3.9) multiplies bfloat16 matrices wrongly (NumPy has no bfloat16), so under the
interpreter the host passes ``PRECISION="upcast"`` for bfloat16 inputs and the operands are widened to fp32
first. Products of bfloat16 values are exact in fp32, so this matches the tensor-core result up to the order of
the fp32 sums; the probabilities are still rounded to bfloat16 before the second product, as on the GPU.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def dot(a, b, PRECISION: tl.constexpr):
    if PRECISION == "upcast":
        result = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        result = tl.dot(a, b, input_precision=PRECISION)
    return result
