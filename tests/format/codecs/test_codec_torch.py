"""torch codec: tensors, state dicts, optimizer state and modules through safetensors."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from persistkit.errors import FormatError  # noqa: E402
from persistkit.format.codecs import torch as tc  # noqa: E402


def _equal_tree(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan()))
    elif isinstance(a, dict):
        assert type(a) is type(b) and list(a) == list(b)
        for k in a:
            _equal_tree(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _equal_tree(x, y)
    else:
        assert a == b and type(a) is type(b)


def test_module_loads_as_its_state_dict_with_identical_tensors():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    back = tc.decode(tc.encode(net))
    _equal_tree(net.state_dict(), back)
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    fresh.load_state_dict(back)
    x = torch.randn(5, 3)
    net.eval(), fresh.eval()
    assert torch.equal(net(x), fresh(x))


def test_optimizer_state_keeps_int_keys_and_tuples():
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    net(torch.randn(4, 2)).sum().backward()
    opt.step()
    state = opt.state_dict()
    back = tc.decode(tc.encode(state))
    _equal_tree(state, back)
    assert back["param_groups"][0]["betas"] == (0.9, 0.999)


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool, torch.uint8]
)
def test_dtypes_and_non_contiguous_tensors(dtype):
    base = torch.arange(24).reshape(4, 6).to(dtype)
    for tensor in (base, base.t(), base[::2, 1:]):
        _equal_tree(tensor.contiguous(), tc.decode(tc.encode(tensor)))


def test_tied_weights_come_back_as_one_tensor():
    shared = torch.nn.Linear(4, 4).weight
    back = tc.decode(tc.encode({"enc": shared, "dec": shared, "row": shared[0]}))
    assert back["enc"] is back["dec"]
    assert torch.equal(back["row"], shared[0].detach())


def test_not_a_torch_member():
    from persistkit.format import tree

    with pytest.raises(FormatError, match="not a persistkit torch member"):
        tc.decode(tree.encode({"format": 2}))
    with pytest.raises(FormatError):
        tc.decode(b"\x01garbage")
