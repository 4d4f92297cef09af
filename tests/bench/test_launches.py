"""The launch and sync counter (haic_kernels.bench.launches) on callables with known counts."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from haic_kernels.bench import launches
from haic_kernels.bench.launches import count_launches
from haic_kernels.ops.norm import rms_norm
from tests._triton import needs_triton_cpu


def _counts(fn, *args, **kwargs):
    report, _ = count_launches(fn, *args, **kwargs)
    return report.kernels, report.syncs


x = torch.randn(4, 6)
w = torch.ones(3, 6)
reps = torch.tensor([1, 2, 1, 0])

KNOWN = {
    # kernels: one per op that computes; views, metadata and allocations are free
    "add": (lambda: x + 1, 1, 0),
    "add-relu": (lambda: (x + 1).relu(), 2, 0),
    "views": (lambda: x.view(-1)[4:].view(2, 10).t().unsqueeze(0).expand(3, 10, 2), 0, 0),
    "transpose-contiguous": (lambda: x.t().contiguous(), 1, 0),
    "contiguous-noop": (lambda: x.contiguous(), 0, 0),
    "to-same-dtype": (lambda: x.to(torch.float32), 0, 0),
    "to-half": (lambda: x.to(torch.float16), 1, 0),
    "empty": (lambda: torch.empty(5, 3), 0, 0),
    "zeros": (lambda: torch.zeros(5, 3), 1, 0),
    "linear": (lambda: F.linear(x, w), 1, 0),
    "inplace": (lambda: x.clone().add_(1).mul_(2), 3, 0),
    # syncs: a value read by the host or a shape that depends on the data
    "item": (lambda: x.sum().item(), 1, 1),
    "bool": (lambda: bool(x.sum() > 0), 2, 1),
    "mask-index": (lambda: x[x > 0], 2, 1),
    "nonzero": (lambda: torch.nonzero(x), 1, 1),
    "tolist": (lambda: x.tolist(), 0, 1),
    "cpu": (lambda: x.cpu(), 0, 1),
    # repeat the rows: the index vector (repeat_interleave), then index_select
    "repeat-interleave": (lambda: torch.repeat_interleave(x, reps, dim=0), 2, 1),
    "repeat-interleave-sized": (
        lambda: torch.repeat_interleave(x, reps, dim=0, output_size=4), 2, 0),
}  # fmt: skip


@pytest.mark.parametrize("name", list(KNOWN))
def test_known_counts(name):
    fn, kernels, syncs = KNOWN[name]
    assert _counts(fn) == (kernels, syncs)


def test_custom_op_counts_its_implementation_not_itself():
    w = torch.randn(6)
    report, out = count_launches(rms_norm, x, w, backend="torch")
    # the reference RMSNorm: to (no-op on fp32), pow, mean, add, rsqrt, mul, mul, to (no-op)
    assert report.kernels == 6, report.total.by_kernel
    assert "row_norm" not in report.total.by_kernel
    torch.testing.assert_close(out, rms_norm(x, w, backend="torch"))


@needs_triton_cpu
def test_triton_launch_is_one_kernel_named_after_it():
    report, _ = count_launches(rms_norm, x, torch.randn(6), backend="triton")
    assert report.kernels == 1
    assert report.total.by_kernel == {"triton _row_norm_fwd_kernel": 1}


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(6, 6)
        self.layers = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.ReLU()) for _ in range(3)
        )
        self.head = torch.nn.Linear(6, 2)

    def forward(self, x):
        x = self.embed(x)
        for layer in self.layers:
            x = layer(x) + 1  # the add: after the layer's call returned, so outside it
        return self.head(x).sum().item()

    def decode_style(self, x):
        """Calls the layers' submodules directly, as a hand-written decode loop does."""
        for layer in self.layers:
            x = F.relu(F.linear(x, layer[0].weight) + layer[0].bias)
            x = layer[1](x)  # a submodule call: attributes the work around it to its layer
        return x


def test_per_layer_and_outside():
    net = _Net()
    report, _ = count_launches(net, x, layers=net.layers, root=net)
    assert [t.kernels for t in report.layers] == [2, 2, 2]  # linear, relu
    # embed, the three adds, head, sum; item
    assert report.outside.kernels == 6 and report.outside.syncs == 1
    assert report.per_layer() == (2, 0)
    assert report.kernels == 12 and report.syncs == 1


def test_decode_style_attribution_and_difference():
    net = _Net()
    one, _ = count_launches(net.decode_style, x, layers=net.layers, root=net)
    # per layer: linear, + bias, F.relu, then the ReLU module. Work is attributed to the layer
    # of the last module entered: layer 0's first three ops run before any hook (outside), each
    # later layer's first three go to the layer before it
    assert one.kernels == 12
    assert one.outside.kernels == 3
    assert [t.kernels for t in one.layers] == [4, 4, 1]
    diff = one - one
    assert diff.kernels == 0 and all(t.kernels == 0 for t in diff.layers)


def test_cli_traces_the_model_paths(tmp_path):
    path = tmp_path / "launches.json"
    assert launches.main(["--config", "tiny", "--frames", "1", "--json", str(path)]) == 0
    doc = json.loads(path.read_text())
    assert set(doc) == {"vision tower", "prefill (dense)", "prefill (packed)", "decode step"}
    for name, rep in doc.items():
        assert rep["total"]["kernels"] > 0, name
        assert len(rep["layers"]) == 2, name  # the tiny config: 2 vision blocks, 2 LM layers
        assert sum(t["kernels"] for t in rep["layers"]) + rep["outside"]["kernels"] == rep[
            "total"]["kernels"]  # fmt: skip
    # one decode step: every layer does work, and the step reads nothing back on the host
    step = doc["decode step"]
    assert all(t["kernels"] > 0 for t in step["layers"]) and step["total"]["syncs"] == 0
