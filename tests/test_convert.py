"""dlkernels.convert and optim.from_torch: converted models (the textbook SimpleConvNet, a VGG-style and a
ResNet-style network) give the originals' outputs and gradients, keep state_dict keys, survive
torch.save/load, deepcopy, .to(), torch.compile and DistributedDataParallel; the demo runs."""
import copy
import io
import os
import tempfile

import pytest
import torch
import torch.nn as nn

import dlkernels
import dlkernels.nn as dnn
import dlkernels.optim as dopt
from dlkernels.demo import small_resnet


def simple_conv_net():
    """The textbook's SimpleConvNet: conv - relu - pool - affine - relu - affine."""
    return nn.Sequential(nn.Conv2d(1, 30, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(30 * 6 * 6, 100),
                         nn.ReLU(), nn.Linear(100, 10))


def vgg_like():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8),
        nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AvgPool2d(2), nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(),
        nn.Linear(32, 10))


MODELS = {"simple": (simple_conv_net, (1, 16, 16)), "vgg": (vgg_like, (3, 16, 16)), "resnet": (small_resnet, (3, 16, 16))}


def grads_of(model, x, y, loss_fn):
    model.zero_grad(set_to_none=True)
    out = model(x)
    loss = loss_fn(out, y)
    loss.backward()
    return out.detach(), loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("fuse", [False, True], ids=["plain", "fused"])
def test_converted_model_matches_original(name, fuse):
    build, shape = MODELS[name]
    torch.manual_seed(0)
    model = build().double()
    converted, table = dlkernels.convert(model, fuse_bn_relu=fuse, report=True)
    counts = table.counts()
    assert counts.get("swapped", 0) + counts.get("fused", 0) >= 2 and counts.get("kept", 0) == 0
    assert list(converted.state_dict()) == list(model.state_dict())
    x = torch.randn(6, *shape, dtype=torch.float64)
    y = torch.randint(0, 10, (6,))
    for mode in ("train", "eval"):
        getattr(model, mode)()
        getattr(converted, mode)()
        ref = grads_of(model, x, y, nn.CrossEntropyLoss())
        ours = grads_of(converted, x, y, dnn.CrossEntropyLoss())
        for a, b in zip([ours[0], ours[1]] + ours[2], [ref[0], ref[1]] + ref[2]):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    for (k, a), (_, b) in zip(converted.state_dict().items(), model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=k)  # running stats evolved alike


def test_fuse_bn_relu_and_report():
    model = vgg_like()
    converted, table = dlkernels.convert(model, fuse_bn_relu=True, report=True)
    assert isinstance(converted[1], dnn.BatchNormReLU2d) and isinstance(converted[2], nn.Identity)
    assert isinstance(converted[14], dnn.BatchNorm1d) and isinstance(converted[15], nn.ReLU)  # 1-D: not fused
    assert table.counts() == {"swapped": 7, "fused": 3}
    text = str(table)
    assert "fused" in text and "BatchNormReLU2d" in text and "7 swapped, 3 fused, 0 kept" in text
    assert isinstance(model[1], nn.BatchNorm2d) and type(model[0]) is nn.Conv2d  # inplace=False left it alone


def test_exclude_subclasses_and_inplace():
    class MyConv(nn.Conv2d):
        pass

    model = nn.Sequential(nn.Conv2d(2, 3, 3), MyConv(3, 3, 3), nn.Sequential(nn.MaxPool2d(2), nn.BatchNorm2d(3)),
                          nn.AvgPool2d(1))
    same, table = dlkernels.convert(model, inplace=True, exclude=("2", nn.AvgPool2d), report=True)
    assert same is model
    assert type(model[0]) is dnn.Conv2d and type(model[1]) is MyConv
    assert type(model[2][0]) is nn.MaxPool2d and type(model[2][1]) is nn.BatchNorm2d and type(model[3]) is nn.AvgPool2d
    reasons = {r.name: r.detail for r in table if r.action == "kept"}
    assert "subclass MyConv" in reasons["1"] and "excluded by name '2'" in reasons["2"]
    assert "excluded by type AvgPool2d" in reasons["3"]
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        dlkernels.convert("model")
    with pytest.raises(ValueError, match=r"exclude names a layer '2\.0\.1' the model does not have"):
        dlkernels.convert(model, exclude=("2.0.1",))  # a misspelled name is not ignored
    with pytest.raises(ValueError, match=r"did you mean '1', '2\.1'\?"):
        dlkernels.convert(model, exclude=("1.1",))
    with pytest.raises(TypeError, match="exclude holds layer names"):
        dlkernels.convert(model, exclude=(3,))


HOOK_CALLS = []


def _record_shape(module, inputs, output):
    HOOK_CALLS.append(output.shape)


def test_save_load_deepcopy_to_and_hooks(tmp_path):
    torch.manual_seed(0)
    original = small_resnet()
    original[0].register_forward_hook(_record_shape)  # hooks registered before the conversion survive it
    model = dlkernels.convert(original, fuse_bn_relu=True)
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    HOOK_CALLS.clear()
    ref = model(x)
    assert HOOK_CALLS == [torch.Size([2, 16, 16, 16])] and isinstance(model[0], dnn.Conv2d)
    path = tmp_path / "model.pt"
    torch.save(model, path)
    loaded = torch.load(path, weights_only=False)
    torch.testing.assert_close(loaded(x), ref)
    torch.testing.assert_close(copy.deepcopy(model)(x), ref)
    sd = io.BytesIO()
    torch.save(model.state_dict(), sd)
    sd.seek(0)
    fresh = small_resnet()
    fresh.load_state_dict(torch.load(sd))  # our state_dict loads into the plain torch model
    torch.testing.assert_close(fresh.eval()(x), ref, rtol=1e-5, atol=1e-5)
    double = copy.deepcopy(model).to(torch.float64)
    torch.testing.assert_close(double(x.double()).float(), ref, rtol=1e-4, atol=1e-4)


def test_torch_compile_converted_model():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = small_resnet()
    converted = dlkernels.convert(model, fuse_bn_relu=True)
    x = torch.randn(4, 3, 16, 16)
    compiled = torch.compile(converted, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-4)
    out.sum().backward()
    assert all(p.grad is not None for p in converted.parameters())


def test_from_torch_continues_the_trajectory():
    for cls, kw in ((torch.optim.Adam, dict(lr=1e-2)), (torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
                    (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1)), (torch.optim.RMSprop, dict(lr=1e-2)),
                    (torch.optim.Adagrad, dict(lr=0.1))):
        torch.manual_seed(0)
        a = nn.Linear(5, 3).double()
        b = copy.deepcopy(a)
        opt_a, opt_b = cls(a.parameters(), **kw), cls(b.parameters(), **kw)
        x = torch.randn(8, 5, dtype=torch.float64)
        for step in range(5):
            if step == 2:
                opt_b = dopt.from_torch(opt_b)
                assert type(opt_b).__name__ == cls.__name__ and type(opt_b).__module__ == "dlkernels.optim"
            for m, o in ((a, opt_a), (b, opt_b)):
                o.zero_grad()
                m(x).square().sum().backward()
                o.step()
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    with pytest.raises(NotImplementedError, match="no fused version of Adadelta"):
        dopt.from_torch(torch.optim.Adadelta(nn.Linear(2, 2).parameters()))


def test_from_torch_keeps_a_scheduler_made_before():
    """An LR scheduler built on the torch optimizer before from_torch keeps setting the fused optimizer's
    learning rate: the trajectory equals torch's with the same schedule."""
    import warnings

    torch.manual_seed(0)
    a = nn.Linear(5, 3).double()
    b = copy.deepcopy(a)
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9), torch.optim.SGD(b.parameters(), lr=0.1,
                                                                                             momentum=0.9)
    sched_a = torch.optim.lr_scheduler.StepLR(opt_a, step_size=1, gamma=0.5)
    sched_b = torch.optim.lr_scheduler.StepLR(opt_b, step_size=1, gamma=0.5)
    fused = dopt.from_torch(opt_b)
    x = torch.randn(8, 5, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the scheduler sees no step() on the torch optimizer it wraps
        for _ in range(4):
            for m, o, s in ((a, opt_a, sched_a), (b, fused, sched_b)):
                o.zero_grad()
                m(x).square().sum().backward()
                o.step()
                s.step()
    assert fused.param_groups[0]["lr"] == opt_a.param_groups[0]["lr"] == 0.1 * 0.5 ** 4
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def _ddp_worker(rank, world, path):
    import torch.distributed as dist

    # rendezvous through a file in the test's directory: no free-port search that another process can race
    dist.init_process_group("gloo", init_method="file://" + os.path.join(path, "rendezvous"), rank=rank,
                            world_size=world)
    try:
        torch.manual_seed(0)
        model = dnn.SyncBatchNorm.convert_sync_batchnorm(dlkernels.convert(small_resnet().double(), fuse_bn_relu=True))
        ddp = nn.parallel.DistributedDataParallel(model)
        x = torch.randn(8, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(2))
        loss = dnn.CrossEntropyLoss()(ddp(x[rank * 4:(rank + 1) * 4]), y[rank * 4:(rank + 1) * 4])
        loss.backward()
        torch.save([p.grad for p in model.parameters()] + [b for b in model.buffers()], os.path.join(path, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_distributed_data_parallel_with_sync_batch_norm_matches_one_process():
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as path:
        mp.spawn(_ddp_worker, args=(2, path), nprocs=2, join=True)
        results = [torch.load(os.path.join(path, f"{r}.pt")) for r in range(2)]
    torch.manual_seed(0)
    model = small_resnet().double()
    x = torch.randn(8, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(2))
    nn.CrossEntropyLoss()(model(x), y).backward()
    expected = [p.grad for p in model.parameters()] + [b for b in model.buffers()]
    for r in results:
        assert len(r) == len(expected)
        for a, b in zip(r, expected):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_demo_runs_and_agrees(capsys):
    from dlkernels import demo

    histories = demo.main(["--epochs", "2"])
    out = capsys.readouterr().out
    assert "| epoch | torch loss | dlkernels loss |" in out and "final test accuracy" in out
    (t, d) = histories
    assert abs(t[0][0] - d[0][0]) < 1e-3 * t[0][0]  # the first epoch's mean loss agrees
    assert d[-1][1] > 0.7  # two epochs are enough to learn most digits
    results = demo.main(["--model", "resnet", "--resnet-steps", "2", "--resnet-images", "64", "--batch-size", "16"])
    assert set(results) == {"torch", "dlkernels"}
    torch.testing.assert_close(torch.tensor(results["torch"][1]), torch.tensor(results["dlkernels"][1]),
                               rtol=1e-4, atol=1e-4)
