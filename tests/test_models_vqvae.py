"""VQ-VAE: shapes, quantiser loss against hand computation, straight-through gradients, metrics, EMA."""

from __future__ import annotations

import math

import pytest
import torch

from genesis.models import ModelOutput, create_model, unpack_output
from genesis.models.vqvae import VQVAE, VectorQuantizer, codebook_metrics

TINY = dict(channels=(4, 8), num_res_blocks=1, num_embeddings=16, embedding_dim=4)


@pytest.mark.parametrize("spatial_dims,shape", [(2, (2, 1, 16, 8)), (3, (2, 1, 8, 8, 12))])
def test_shapes_and_output(spatial_dims: int, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    net = create_model("vqvae", spatial_dims=spatial_dims, **TINY)
    x = torch.rand(*shape)
    out = net(x)
    assert isinstance(out, ModelOutput) and unpack_output(out) is out
    assert out.output.shape == shape
    assert out.aux_loss is not None and out.aux_loss.dim() == 0 and out.aux_loss.item() >= 0
    assert set(out.metrics) == {"perplexity", "codebook_usage"}
    assert 1.0 <= out.metrics["perplexity"] <= 16.0 + 1e-4
    assert 0.0 < out.metrics["codebook_usage"] <= 1.0
    z = net.forward_features(x)
    assert z.shape == (shape[0], net.feature_dim, *[s // 4 for s in shape[2:]])
    feats = net.encode(x)
    assert [f.shape[1] for f in feats] == [4, 8, 4]
    assert torch.equal(feats[-1], z)
    assert net.decode(feats).shape == shape


def test_default_configuration_is_the_reference_codebook() -> None:
    net = VQVAE()
    assert net.spatial_dims == 2
    assert net.quantizer.embedding.weight.shape == (512, 64)
    assert net.quantizer.commitment_cost == 0.25


def test_bad_input_size_is_a_clear_error() -> None:
    net = VQVAE(**TINY)
    with pytest.raises(ValueError, match=r"divisible by 4.*\(1, 1, 10, 8\)"):
        net(torch.rand(1, 1, 10, 8))


def test_quantizer_loss_and_codes_match_hand_computation() -> None:
    vq = VectorQuantizer(num_embeddings=3, embedding_dim=2, commitment_cost=0.25)
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [-1.0, 2.0]]))
    # two code vectors (B=1, C=2, H=1, W=2): (0.9, 0.8) -> code 1, (-0.5, 1.5) -> code 2
    z = torch.tensor([[0.9, -0.5], [0.8, 1.5]]).view(1, 2, 1, 2).requires_grad_(True)
    quantized, loss, indices = vq(z)
    assert indices.tolist() == [[[1, 2]]]
    assert torch.allclose(quantized, torch.tensor([[1.0, -1.0], [1.0, 2.0]]).view(1, 2, 1, 2))
    sq = ((0.9 - 1) ** 2 + (0.8 - 1) ** 2 + (-0.5 + 1) ** 2 + (1.5 - 2) ** 2) / 4
    assert loss.item() == pytest.approx((1 + 0.25) * sq, rel=1e-6)

    # straight-through: d(sum(q * w))/dz = w exactly; the codebook gets no gradient from it
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 1, 2)
    (quantized * w).sum().backward()
    assert torch.allclose(z.grad, w)
    assert vq.embedding.weight.grad is None or vq.embedding.weight.grad.abs().sum() == 0

    # the loss moves the used codes towards z (codebook term) and z towards its codes (commitment)
    z.grad = None
    _, loss, _ = vq(z)
    loss.backward()
    code_grad = vq.embedding.weight.grad
    assert torch.allclose(code_grad[0], torch.zeros(2))  # unused code
    assert torch.allclose(code_grad[1], 2 * (torch.tensor([1.0, 1.0]) - torch.tensor([0.9, 0.8])) / 4)
    assert torch.allclose(z.grad[0, :, 0, 0], 0.25 * 2 * (torch.tensor([0.9, 0.8]) - 1.0) / 4)


def test_gradients_flow_through_the_bottleneck_to_the_encoder() -> None:
    torch.manual_seed(0)
    net = VQVAE(**TINY)
    out = net(torch.rand(2, 1, 8, 8))
    out.output.mean().backward()  # reconstruction term only: must reach the encoder via the STE
    first = net.encoder[0].conv.weight.grad
    assert first is not None and first.abs().sum() > 0
    assert net.quantizer.embedding.weight.grad is None or net.quantizer.embedding.weight.grad.abs().sum() == 0


def test_codebook_metrics() -> None:
    idx = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    m = codebook_metrics(idx, num_embeddings=16)
    assert m["perplexity"] == pytest.approx(4.0, rel=1e-5)
    assert m["codebook_usage"] == pytest.approx(4 / 16)
    skewed = codebook_metrics(torch.tensor([5, 5, 5, 7]), num_embeddings=8)
    p = [0.75, 0.25]
    assert skewed["perplexity"] == pytest.approx(math.exp(-sum(q * math.log(q) for q in p)), rel=1e-5)


def test_ema_quantizer_updates_codebook_in_training_only() -> None:
    torch.manual_seed(0)
    net = VQVAE(ema=True, **TINY)
    codebook = net.quantizer.embedding.weight.detach().clone()
    out = net.eval()(torch.rand(2, 1, 8, 8))
    assert torch.equal(codebook, net.quantizer.embedding.weight)
    assert out.aux_loss is not None and out.aux_loss.item() > 0
    net.train()(torch.rand(2, 1, 8, 8))
    assert not torch.equal(codebook, net.quantizer.embedding.weight)
    assert not net.quantizer.embedding.weight.requires_grad


def test_encoder_only_drops_quantizer_and_decoder() -> None:
    net = VQVAE(**TINY).encoder_only()
    assert all(k.startswith(net.encoder_state_prefixes) for k in net.state_dict())
    assert net.forward_features(torch.rand(1, 1, 8, 8)).shape == (1, 4, 2, 2)
    with pytest.raises(RuntimeError):
        net(torch.rand(1, 1, 8, 8))
