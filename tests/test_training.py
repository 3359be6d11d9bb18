"""The classifier trainer's chunked passes (dpgd.training): the same numbers as one pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dpgd.models import ConvNet
from dpgd.training import _backward_in_chunks, correct_predictions


def _net(seed: int) -> ConvNet:
    torch.manual_seed(seed)
    return ConvNet(3, 10, (32, 32))


def test_chunked_backward_is_the_whole_batch_gradient():
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(100, 3, 32, 32, generator=generator)
    hard = torch.randint(10, (100,), generator=generator)
    soft = torch.softmax(torch.randn(100, 10, generator=generator), dim=1)
    for labels in (hard, soft):
        whole, chunked = _net(1), _net(1)
        loss = F.cross_entropy(whole(batch), labels)
        loss.backward()
        chunked_loss = _backward_in_chunks(chunked, batch, labels, rows=32)  # 32 + 32 + 32 + 4
        assert float(chunked_loss.detach()) == pytest.approx(float(loss.detach()), rel=1e-5)
        for a, b in zip(whole.parameters(), chunked.parameters()):
            assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6)
            assert a.grad.abs().sum() > 0


def test_chunked_predictions_count_the_same():
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(300, 3, 32, 32, generator=generator)
    net = _net(2).eval()
    labels = net(images).argmax(1)
    labels[::3] = (labels[::3] + 1) % 10  # a third wrong: the count is 200, not 0 or 300
    assert correct_predictions(net, images, labels, batch_size=2048) == 200


def test_a_batchnorm_network_trains_on_whole_batches(monkeypatch):
    import dpgd.training as training

    seen = []
    original = training._backward_in_chunks

    def spy(model, batch, labels, rows):
        seen.append((len(batch), rows))
        return original(model, batch, labels, rows)

    monkeypatch.setattr(training, "_backward_in_chunks", spy)
    images = torch.randn(64, 3, 32, 32)
    labels = torch.randint(10, (64,))
    common = dict(epochs=1, lr=0.01, momentum=0.9, weight_decay=0.0, batch_size=64, lr_drop_at_half=False, dsa=None,
                  generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    training.train_classifier(_net(3), images, labels, **common)
    bn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                             torch.nn.Linear(4 * 30 * 30, 10))
    training.train_classifier(bn, images, labels, **common)
    assert seen == [(64, 32), (64, 64)]  # the ConvNet in chunks of 32, the BatchNorm net whole
