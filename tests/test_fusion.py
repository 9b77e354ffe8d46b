"""convert(model, fuse_bn_relu=True) outside nn.Sequential: BN followed by a ReLU, or by an add and a
ReLU, in a module's forward (torchvision's BasicBlock and Bottleneck, written here the way torchvision
writes them: one shared self.relu, `out += identity`) runs as the fused BatchNormReLU2d, found by torch.fx;
the converted model gives the original's outputs, gradients and running statistics, keeps its classes and
state_dict keys, pickles, deep-copies and compiles; what is not fused is reported with the reason."""
import copy
import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import dlkernels
import dlkernels.nn as dnn
from dlkernels import models as M


def BasicBlock(cin, planes, stride=1):
    """dlkernels.models' BasicBlock (torchvision's: a shared self.relu, `out += identity`)."""
    down = None if stride == 1 and cin == planes else nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False),
                                                                    nn.BatchNorm2d(planes))
    return M.BasicBlock(cin, planes, stride, down)


class Bottleneck(M.Bottleneck):
    def __init__(self, cin, planes, stride=1):
        down = None if stride == 1 and cin == planes * 4 else nn.Sequential(
            nn.Conv2d(cin, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))
        super().__init__(cin, planes, stride, down)

    def forward(self, x):  # F.relu and torch.add instead of a module and +=: other spellings
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)).relu()
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(torch.add(identity, out))


class TinyResNet(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 16, 2))
        self.layer2 = nn.Sequential(Bottleneck(16, 4), Bottleneck(16, 8, 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


N_BN = 1 + 2 + 1 + 2 * 3 + 1  # stem, two basic blocks (+ one downsample), two bottlenecks (+ one downsample)
N_FUSED = 1 + 2 * 2 + 2 * 3  # every BN but the two downsample ones


def _step(model, x, y):
    model.zero_grad(set_to_none=True)
    out = model(x)
    loss = F.cross_entropy(out, y)
    loss.backward()
    return [out.detach(), loss.detach()] + [p.grad.clone() for p in model.parameters()]


def _close(a, b, rtol, atol, normwise):
    if not normwise:
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
        return
    # relative to the tensor's largest value: a deep network's gradients hold elements that cancel to
    # near zero, whose elementwise relative error means nothing
    err, scale = (a - b).abs().max().item(), b.abs().max().item()
    assert err <= rtol * scale + atol, f"largest error {err:.3g} against largest value {scale:.3g}"


def _assert_same_training(model, converted, x, y, rtol, atol, steps=2, normwise=False):
    for mode in ("train", "eval"):
        getattr(model, mode)()
        getattr(converted, mode)()
        for _ in range(steps):
            for a, b in zip(_step(converted, x, y), _step(model, x, y)):
                _close(a, b, rtol, atol, normwise)
    for (k, a), (k2, b) in zip(converted.state_dict().items(), model.state_dict().items()):
        assert k == k2
        _close(a, b, rtol, atol, normwise)


def test_residual_blocks_fuse_and_match_torch_in_float64():
    model = TinyResNet().double()
    converted, report = dlkernels.convert(model, fuse_bn_relu=True, report=True)
    fused = {r.name: r.detail for r in report if r.action == "fused"}
    assert len(fused) == N_FUSED, str(report)
    assert report.counts().get("kept", 0) == 0
    assert "+ add" in fused["layer1.0.bn2"] and "+ add" in fused["layer2.1.bn3"]
    assert "+ ReLU" in fused["bn1"] and "+ ReLU" in fused["layer2.0.bn2"]
    assert "not fused: it ends its nn.Sequential" in next(r.detail for r in report if r.name == "layer1.1.downsample.1")
    for name, m in converted.named_modules():
        if name in fused:
            assert type(m) is dnn.BatchNormReLU2d
    # classes, attributes and state_dict keys are the original's
    assert isinstance(converted, TinyResNet) and isinstance(converted.layer1[0], M.BasicBlock)
    assert converted.layer2[0].expansion == 4 and isinstance(converted.layer1, nn.Sequential)
    assert list(converted.state_dict()) == list(model.state_dict())
    x = torch.randn(5, 3, 12, 12, dtype=torch.float64)
    y = torch.randint(0, 10, (5,))
    _assert_same_training(model, converted, x, y, rtol=1e-9, atol=1e-10)


def test_residual_blocks_fused_in_float32():
    model = TinyResNet()
    converted = dlkernels.convert(model, fuse_bn_relu=True)
    x = torch.randn(4, 3, 16, 16)
    y = torch.randint(0, 10, (4,))
    _assert_same_training(model, converted, x, y, rtol=2e-4, atol=2e-5, steps=1)


def test_fused_model_pickles_deepcopies_and_compiles(tmp_path):
    model = TinyResNet()
    converted = dlkernels.convert(model, fuse_bn_relu=True).eval()
    x = torch.randn(2, 3, 12, 12)
    ref = converted(x)
    path = tmp_path / "m.pt"
    torch.save(converted, path)
    loaded = torch.load(path, weights_only=False)
    twin = copy.deepcopy(converted)
    for m in (loaded, twin):
        torch.testing.assert_close(m(x), ref, rtol=0, atol=0)
        assert isinstance(m.layer1[0], M.BasicBlock) and type(m.layer1[0].bn2) is dnn.BatchNormReLU2d
        assert m.layer1[0]._dlk_fused_targets == {"bn1": "relu", "bn2": "add_relu"}
        assert m.layer1[0].bn1 is not converted.layer1[0].bn1
    buf = io.BytesIO()
    torch.save(converted.state_dict(), buf)
    buf.seek(0)
    plain = TinyResNet()
    plain.load_state_dict(torch.load(buf))
    torch.testing.assert_close(plain.eval()(x), ref, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()
    compiled = torch.compile(converted.train(), fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    assert all(p.grad is not None for p in converted.parameters())


class _Shared(nn.Module):
    """Patterns that must not fuse: a BN called twice, a BN output used twice, BN then ReLU6."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(4)
        self.bn2 = nn.BatchNorm2d(4)
        self.bn3 = nn.BatchNorm2d(4)
        self.act = nn.ReLU6()

    def forward(self, x):
        a = F.relu(self.bn(x)) + self.bn(x * 2)  # called twice
        b = self.bn2(a)
        c = F.relu(b) * b  # output used twice
        return self.act(self.bn3(c))


class _Optional(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x, scale=None):
        out = F.relu(self.bn(x))
        return out if scale is None else out * scale


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        if x.sum() > 0:  # control flow on a value: torch.fx cannot trace it
            x = -x
        return F.relu(self.bn(x))


def test_what_is_not_fused_is_reported_and_still_correct():
    model = nn.Sequential(_Shared(), _Optional(), _Untraceable()).double()
    converted, report = dlkernels.convert(model, fuse_bn_relu=True, report=True)
    detail = {r.name: (r.action, r.detail) for r in report}
    assert detail["0.bn"][0] == "swapped" and "forward calls it 2 times" in detail["0.bn"][1]
    assert "its output goes to 2 places" in detail["0.bn2"][1]
    assert "act (ReLU6)" in detail["0.bn3"][1]
    assert detail["1"][0] == "kept" and "optional argument 'scale'" in detail["1"][1]
    assert detail["2"][0] == "kept" and "does not trace with torch.fx" in detail["2"][1]
    assert "fused" not in report.counts()
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        getattr(converted, mode)()
        torch.testing.assert_close(converted(x), model(x), rtol=1e-10, atol=1e-12)


def test_exclusions_and_broadcast_residuals():
    class Broadcast(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(4)
            self.bias = nn.Parameter(torch.randn(4, 1, 1, dtype=torch.float64))

        def forward(self, x):
            return F.relu(self.bn(x) + self.bias)  # a broadcast add: the fused call takes torch's ops

    model = nn.Sequential(TinyResNet(), Broadcast()).double()
    model[0].fc = nn.Identity()
    model = nn.Sequential(model[0], nn.Unflatten(1, (4, 2, 4)), model[1]).double()
    converted, report = dlkernels.convert(model, fuse_bn_relu=True, exclude=("0.layer1.0.bn1",), report=True)
    rows = {r.name: r for r in report}
    assert rows["0.layer1.0.bn1"].action == "kept" and "excluded by name" in rows["0.layer1.0.bn1"].detail
    assert type(converted[0].layer1[0].bn1) is nn.BatchNorm2d
    assert rows["0.layer1.0.bn2"].action == "fused" and rows["2.bn"].action == "fused"
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        getattr(converted, mode)()
        torch.testing.assert_close(converted(x), model(x), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2", "resnet20_cifar"])
def test_benchmark_models_convert_fuse_and_match_torch(name):
    """The model benchmark's architectures (torchvision's, by parameter count): converted with fusion,
    one training step's outputs, gradients and running statistics, then eval outputs, equal torch's in
    float64. Every BN of the ResNets but the downsample ones fuses; MobileNetV2 has none to fuse (its
    activations are ReLU6, and its blocks' last BN has no activation)."""
    build, _, _, params = M.MODELS[name]
    model = build(num_classes=10)
    if params is not None:
        assert sum(p.numel() for p in build().parameters()) == params
    model = model.double()
    if name == "mobilenet_v2":
        model.classifier[0].p = 0.0  # dropout would draw different masks for the two models
    converted, report = dlkernels.convert(model, fuse_bn_relu=True, report=True)
    counts = report.counts()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    n_down = sum(1 for n, m in model.named_modules() if n.endswith("downsample"))
    assert counts.get("kept", 0) == 0, str(report)
    assert counts.get("fused", 0) == (0 if name == "mobilenet_v2" else n_bn - n_down), str(report)
    # 4 images of 64x64: the last stage's batch norms see 16 values a channel (at 2 x 1x1 they amplified
    # rounding differences ~1e4-fold). Measured: ResNet-50's gradients within 1.1e-12 of their largest
    # value, ResNet-18's 4e-14.
    x = torch.randn(4, 3, 64, 64, dtype=torch.float64)
    y = torch.randint(0, 10, (4,))
    _assert_same_training(model, converted, x, y, rtol=1e-10, atol=1e-12, steps=1, normwise=True)


class _Dropout(nn.Module):
    """Reads self.training in forward: traced in both modes, the fused forward picks by mode."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return F.dropout(F.relu(self.bn(x)), 0.5, training=self.training)


class _AddInPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x, r):
        return torch.relu(r.add_(self.bn(x)))  # mutates r: not fused


class _InPlaceBetween(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(4)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.bn(x)
        z = self.bn2(x)
        x.mul_(2)  # between bn2 and its ReLU: moving bn2 there would read the doubled x
        return F.relu(y) + F.relu(z) + x


class _AugmentsArgument(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        r = x
        r += F.relu(self.bn(x))  # fx would record r + ...: the caller's x would stay unchanged
        return r


class _SelfHook(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(4)
        self.calls = 0
        self.register_forward_hook(self._count)  # the state refers back to the module

    def _count(self, module, inputs, output):
        self.calls += 1

    def forward(self, x):
        return F.relu(self.bn(x))


def test_fusion_keeps_mode_mutations_hooks_and_copies():
    torch.manual_seed(int(torch.randint(0, 2**31, ()).item()))
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    # self.training read in forward: eval is deterministic and equal to torch's, training drops
    drop = _Dropout().double()
    fused, report = dlkernels.convert(drop, fuse_bn_relu=True, report=True)
    assert report.counts().get("fused") == 1
    drop.eval()
    fused.eval()
    torch.testing.assert_close(fused(x), drop(x), rtol=1e-10, atol=1e-12)
    fused.train()
    assert (fused(x) == 0).float().mean() > 0.3  # dropout (and the ReLU) at work
    # add_, an in-place op between, an in-place add into an argument: not fused, torch's results
    for model, why in ((_AddInPlace(), "not to a ReLU"), (_InPlaceBetween(), "in-place .mul_()"),
                       (_AugmentsArgument(), "updates 'r' in place")):
        model = model.double()
        conv, report = dlkernels.convert(model, fuse_bn_relu=True, report=True)
        assert any(why in r.detail for r in report), (why, str(report))
        args = (x.clone(), x.clone() + 1) if isinstance(model, _AddInPlace) else (x.clone(),)
        ref_args = tuple(a.clone() for a in args)
        torch.testing.assert_close(conv(*args), model(*ref_args), rtol=1e-10, atol=1e-12)
        for a, b in zip(args, ref_args):  # the same mutations of the arguments
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # a BN with a hook keeps it and stays unfused; a module whose hook is its own method deep-copies
    hooked = nn.Sequential(_Dropout()).double()
    seen = []
    hooked[0].bn.register_forward_hook(lambda m, i, o: seen.append(o.min().item()))
    conv, report = dlkernels.convert(hooked, fuse_bn_relu=True, report=True)
    assert "it has hooks" in next(r.detail for r in report if r.name == "0.bn")
    conv.eval()(x)
    assert seen and seen[-1] < 0  # the hook saw the BN's own output, before the ReLU
    selfhook = dlkernels.convert(_SelfHook().double(), fuse_bn_relu=True)
    twin = copy.deepcopy(selfhook)
    twin(x)
    assert twin.calls == 1 and selfhook.calls == 0 and type(twin.bn) is dnn.BatchNormReLU2d
    bn = twin.bn
    expected = F.relu(F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False))
    torch.testing.assert_close(twin.eval()(x), expected, rtol=1e-10, atol=1e-12)


def test_torch_export_of_a_fused_model(tmp_path):
    """torch.export traces a converted, fused model through our ops; the saved program reloads and
    gives the model's outputs (TorchScript: torch.jit.trace records our Python autograd Functions as
    prim::PythonOp and cannot be saved, so export is the supported way)."""
    model = dlkernels.convert(M.resnet20_cifar(), fuse_bn_relu=True).eval()
    x = torch.randn(2, 3, 32, 32)
    program = torch.export.export(model, (x,))
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert {"dlkernels.conv2d_forward.default", "dlkernels.batch_norm_forward.default"} <= ops
    path = tmp_path / "model.pt2"
    torch.export.save(program, path)
    torch.testing.assert_close(torch.export.load(path).module()(x), model(x), rtol=0, atol=0)
