"""Op 2 (a + b (+ c) in one pass) on CPU: the Triton kernel runs in the interpreter."""
import warnings

import pytest
import torch

from tests.op_backends import runs_here
from trm_fast.ops.add_streams import add_streams

pytestmark = runs_here("add_streams")


def make_inputs(shape, dtype, count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator).to(dtype).requires_grad_(True) for _ in range(count)]


def float64_sum(tensors):
    """Independent truth: the exact sum, rounded once to the inputs' dtype."""
    total = tensors[0].detach().double()
    for tensor in tensors[1:]:
        total = total + tensor.detach().double()
    return total.to(tensors[0].dtype)


@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("shape", [(1, 96), (97, 96), (2, 3, 512), (3000,)])
def test_forward_and_grads_fp32(shape, count):
    tensors = make_inputs(shape, torch.float32, count)
    out = add_streams(*tensors, backend="triton")
    # fp32 accumulation of 2-3 terms then one rounding: at most ~1 fp32 ulp from the exact sum.
    torch.testing.assert_close(out, float64_sum(tensors), atol=1e-6, rtol=2e-7)
    upstream = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    for grad in torch.autograd.grad(out, tensors, upstream):
        torch.testing.assert_close(grad, upstream, atol=0, rtol=0)


def test_fp16_rounds_once():
    tensors = make_inputs((5, 96), torch.float16, 3)
    out = add_streams(*tensors, backend="triton")
    assert out.dtype == torch.float16
    # One rounding of the fp32 sum: equal to the exact sum rounded to fp16, up to one fp16 ulp (2^-10
    # relative) where the fp32 step itself rounded. Rounding after each add would err more often.
    torch.testing.assert_close(out, float64_sum(tensors), atol=1e-7, rtol=2**-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("count", [2, 3])
def test_opcheck(count, dtype):
    tensors = make_inputs((3, 5, 96), dtype, count)
    torch.library.opcheck(
        torch.ops.trm_fast.add_streams.default, (*tensors, *([None] * (3 - count)), "triton")
    )


def test_torch_compile_fullgraph():
    a, b, c = make_inputs((2, 7, 96), torch.float32, 3)
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*lru_cache.*")
        compiled = torch.compile(
            lambda a, b, c: add_streams(add_streams(a, b, c, backend="triton"), c, backend="triton"),
            fullgraph=True,
            backend="aot_eager",  # traces dynamo + AOTAutograd like inductor, without its C++ build time
        )
        out = compiled(a, b, c)
    torch.testing.assert_close(out, float64_sum([a, b, c, c]), atol=1e-5, rtol=1e-6)
    grads = torch.autograd.grad(out.sum(), [a, b, c])
    for grad, expected in zip(grads, (1.0, 1.0, 2.0)):
        torch.testing.assert_close(grad, torch.full_like(a, expected))


def test_bad_inputs_raise_one_line_errors():
    a = torch.randn(4, 96)
    with pytest.raises(TypeError, match="dtype"):
        add_streams(a.long(), a.long(), backend="triton")
    with pytest.raises(TypeError, match="dtype"):
        add_streams(a, a.half(), backend="triton")
    with pytest.raises(ValueError, match="shape"):
        add_streams(a, a, torch.randn(96), backend="triton")
    with pytest.raises(ValueError, match="contiguous"):
        add_streams(a, torch.randn(96, 4).t(), backend="triton")
