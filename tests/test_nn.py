import torch

from scae.nn import MaskedLinear, SAUCIENet


def test_network_shapes_and_units():
    torch.manual_seed(0)
    mean, std = torch.arange(6.0), torch.full((6,), 2.0)
    net = SAUCIENet(6, hidden=(32, 16, 8), feature_mean=mean, feature_std=std)
    x = torch.randn(10, 6)
    out = net(x)
    assert out.embedding.shape == (10, 2)
    assert out.codes.shape == (10, 32) and float(out.codes.detach().min()) >= 0.0
    assert out.reconstruction.shape == (10, 6)
    torch.testing.assert_close(net.to_input_units(net.standardize(x)), x)


def test_masked_linear_keeps_masked_weights_at_zero():
    torch.manual_seed(0)
    mask = (torch.rand(12, 4) > 0.6).float()
    layer = MaskedLinear(mask)
    assert torch.all(layer.weight[mask.T == 0] == 0)
    opt = torch.optim.Adam(layer.parameters(), lr=0.1)
    for _ in range(5):
        loss = layer(torch.randn(8, 12)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        assert torch.all(layer.weight.grad[mask.T == 0] == 0)
        opt.step()
    assert torch.all(layer.weight[mask.T == 0] == 0)
    assert torch.any(layer.weight[mask.T == 1] != 0)
