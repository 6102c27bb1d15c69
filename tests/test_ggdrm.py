"""GGDRM known answers by enumerating every hidden state of a tiny model (x 2, h (2, 2), y 2)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from stages.lipspeech.ggdrm import GGDRM, Config, GaussianRBM, RelationalRBM, stack, unroll


@pytest.fixture(autouse=True)
def float64():
    """Enumeration checks in double precision; the default is restored for the other tests."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def tiny(seed: int = 0, scale: float = 0.8) -> GGDRM:
    torch.manual_seed(seed)
    model = GGDRM(Config(2, 2, (2, 2)))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(scale * torch.randn_like(p))
        model.x_log_sigma.mul_(0.3)
        model.y_log_sigma.mul_(0.3)
    return model


def hidden_states(model: GGDRM) -> list[list[torch.Tensor]]:
    widths = model.config.hidden
    out = []
    for bits in itertools.product([0.0, 1.0], repeat=sum(widths)):
        values, k = [], 0
        for w in widths:
            values.append(torch.tensor(bits[k : k + w]))
            k += w
        out.append(values)
    return out


def log_joint_unnormalised(model, x, y):
    """log sum_h exp(-E(x, h, y)) per row, and each state's posterior weight."""
    energies = torch.stack([model.energy(x, [h.expand(len(x), -1) for h in hs], y)
                            for hs in hidden_states(model)], 1)  # fmt: skip
    return torch.logsumexp(-energies, 1), torch.softmax(-energies, 1)


def log_partition(model: GGDRM) -> torch.Tensor:
    """log Z: enumerate h, integrate the Gaussian x and y in closed form."""
    var_x, var_y = model.variances()
    terms = []
    for h1, h2 in hidden_states(model):
        mx = model.x_bias + model.weights[0] @ h1
        my = model.y_bias + h2 @ model.weights[-1]
        inner = h1 @ model.weights[1] @ h2 + h1 @ model.hidden_bias[0] + h2 @ model.hidden_bias[1]
        gauss = 0.5 * (torch.log(2 * math.pi * var_x).sum() + torch.log(2 * math.pi * var_y).sum())
        shift = ((mx**2 - model.x_bias**2) / (2 * var_x)).sum()
        shift = shift + ((my**2 - model.y_bias**2) / (2 * var_y)).sum()
        terms.append(inner + gauss + shift)
    return torch.logsumexp(torch.stack(terms), 0)


def test_energy_is_the_formula():
    model = tiny()
    x, y = torch.tensor([[0.3, -1.2]]), torch.tensor([[0.7, 0.1]])
    h1, h2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    var_x, var_y = model.variances()
    b, d = model.x_bias, model.y_bias
    w1, w2, u = model.weights
    c1, c2 = model.hidden_bias
    by_hand = (
        ((x - b) ** 2 / (2 * var_x)).sum() - (x / var_x) @ w1 @ h1.T - h1 @ w2 @ h2.T
        - h2 @ u @ (y / var_y).T + ((y - d) ** 2 / (2 * var_y)).sum() - c1 @ h1.T - c2 @ h2.T
    )  # fmt: skip
    assert model.energy(x, [h1, h2], y).item() == pytest.approx(by_hand.item())


def test_hidden_conditionals_are_the_energy_ratios():
    model = tiny(1)
    x, y = torch.tensor([[0.5, -0.4]]), torch.tensor([[-1.0, 0.8]])
    h1, h2 = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    sx, _ = model.scaled(x, y)
    p = torch.sigmoid(model.hidden_input(0, sx, h2))[0, 0]
    on, off = h1.clone(), h1.clone()
    on[0, 0], off[0, 0] = 1.0, 0.0
    e_on, e_off = model.energy(x, [on, h2], y), model.energy(x, [off, h2], y)
    assert p.item() == pytest.approx(torch.sigmoid(e_off - e_on).item())
    # p(y | h_2) = N(d + h_2 U, sigma_y^2): the energy gap between two y is its log ratio
    mean, var = model.y_mean(h2), model.variances()[1]
    y2 = y + torch.tensor([[0.3, -0.2]])
    gap = model.energy(x, [h1, h2], y2) - model.energy(x, [h1, h2], y)
    log_ratio = (((y2 - mean) ** 2 - (y - mean) ** 2) / (2 * var)).sum()
    assert gap.item() == pytest.approx(log_ratio.item())


def test_mean_field_is_exact_without_the_middle_coupling_and_close_with_a_weak_one():
    for coupling, tolerance in ((0.0, 1e-9), (0.1, 0.02)):
        model = tiny(2)
        with torch.no_grad():
            model.weights[1].mul_(coupling)
        x, y = torch.tensor([[0.2, -0.5], [1.0, 0.3]]), torch.tensor([[0.4, 0.9], [-0.6, 0.0]])
        hidden, _, _ = model.mean_field(x, y, iterations=50)
        _, weights = log_joint_unnormalised(model, x, y)
        states = hidden_states(model)
        for layer in range(2):
            exact = sum(weights[:, k, None] * states[k][layer] for k in range(len(states)))
            assert torch.allclose(hidden[layer], exact, atol=tolerance), (coupling, layer)


def test_log_likelihood_gradient_matches_enumeration_with_the_gibbs_model_term():
    """-grad log p(x, y) = <dE>_posterior - <dE>_model. The data term by exact posterior weights,
    the model term from the code's Gibbs chains; against autograd of the exact log-likelihood."""
    model = tiny(3, scale=0.5)
    x, y = torch.tensor([[0.2, -0.5], [1.0, 0.3]]), torch.tensor([[0.4, 0.9], [-0.6, 0.0]])
    exact_ll = (log_joint_unnormalised(model, x, y)[0] - log_partition(model)).mean()
    exact = torch.autograd.grad(exact_ll, list(model.parameters()))

    generator = torch.Generator().manual_seed(0)
    chains = 40_000
    state = [torch.zeros(chains, w) for w in model.layers]
    with torch.no_grad():
        state = model.gibbs(state, 200, generator)
    _, weights = log_joint_unnormalised(model, x, y)
    positive = sum(
        (weights[:, k].detach() * model.energy(x, [h.expand(2, -1) for h in hs], y)).mean()
        for k, hs in enumerate(hidden_states(model))
    )
    negative = model.energy(state[0], state[1:-1], state[-1]).mean()
    estimate = torch.autograd.grad(positive - negative, list(model.parameters()))
    for g_exact, g_code in zip(exact, estimate, strict=True):
        assert torch.allclose(-g_code, g_exact, atol=0.05), (g_exact, -g_code)


def test_gaussian_rbm_free_energy_sums_out_the_hidden_units():
    torch.manual_seed(4)
    rbm = GaussianRBM(2, 3)
    with torch.no_grad():
        for p in rbm.parameters():
            p.copy_(0.7 * torch.randn_like(p))
    v = torch.tensor([[0.3, -0.8]])
    var = torch.exp(2 * rbm.log_sigma)
    total = 0.0
    for bits in itertools.product([0.0, 1.0], repeat=3):
        h = torch.tensor([bits])
        energy = ((v - rbm.visible_bias) ** 2 / (2 * var)).sum() - (v / var) @ rbm.weight @ h.T
        total += torch.exp(-(energy - rbm.hidden_bias @ h.T)).item()
    assert rbm.free_energy(v).item() == pytest.approx(-math.log(total))


def test_stacked_drm_and_its_unrolled_nets_agree_with_one_bottom_up_pass():
    torch.manual_seed(5)
    x_rbm, y_rbm, middle = GaussianRBM(3, 4), GaussianRBM(2, 5), RelationalRBM(4, 5)
    with torch.no_grad():
        for part in (x_rbm, y_rbm, middle):
            for p in part.parameters():
                p.copy_(0.5 * torch.randn_like(p))
    drm = stack(x_rbm, y_rbm, [middle])
    assert drm.layers == [3, 4, 5, 2]
    x = torch.randn(6, 3)
    var_x = drm.variances()[0]
    h1 = torch.sigmoid(drm.hidden_bias[0] + (x / var_x) @ drm.weights[0])
    h2 = torch.sigmoid(drm.hidden_bias[1] + h1 @ drm.weights[1])
    with torch.no_grad():
        assert torch.allclose(unroll(drm, "x2y")(x), drm.y_mean(h2))
        y = torch.randn(6, 2)
        g2 = torch.sigmoid(drm.hidden_bias[1] + (y / drm.variances()[1]) @ drm.weights[2].T)
        g1 = torch.sigmoid(drm.hidden_bias[0] + g2 @ drm.weights[1].T)
        assert torch.allclose(unroll(drm, "y2x")(y), drm.x_mean(g1))


def test_every_parameter_gets_a_gradient_from_the_energy_gap():
    model = tiny(6)
    x, y = torch.randn(4, 2), torch.randn(4, 2)
    hidden, _, _ = model.mean_field(x, y, 5)
    chains = model.gibbs([torch.zeros(4, w) for w in model.layers], 2)
    model.energy_gap((x, hidden, y), chains).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
