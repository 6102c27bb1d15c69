"""The Gaussian-Gaussian Deep Relational Model of seed 003: lip features and speech in one energy.

Layers x - h_1 - ... - h_L - y: Gaussian visible units on both sides (x: lip features, y:
mel-cepstra, both standardised), binary hidden layers between them, only neighbours connected.
With learned standard deviations sigma_x, sigma_y (through their logarithms, as Cho et al.'s
Gaussian RBM):

    E = |x - b|^2 / 2 sigma_x^2 - (x / sigma_x^2)^T W_1 h_1 - sum_l h_l^T W_{l+1} h_{l+1}
        - h_L^T U (y / sigma_y^2) + |y - d|^2 / 2 sigma_y^2 - sum_l c_l^T h_l

so p(x | h_1) = N(b + W_1 h_1, sigma_x^2), p(y | h_L) = N(d + U y-side, sigma_y^2), and each hidden
unit is a sigmoid of its bias and its two neighbours' input (`../shared/specs/lip_speech.md`; the
paper's equations did not survive, this is the standard reconstruction it builds on).

Learning (`stages/lipspeech/ggdrm_train.py`) is maximum likelihood: the gradient of log p(x, y) is
<-dE/dtheta> under the posterior (approximated by mean-field, `mean_field`) minus the same under the
model (persistent Gibbs chains, `gibbs`), which autograd gives as the gradient of `energy_gap`.
Conversion x -> y clamps x and runs mean-field with y at its conditional mean (`convert`), and the
fine-tuned feed-forward nets start from the same weights (`unroll`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stages.lipspeech.dnn import FeedForward


@dataclass(frozen=True)
class Config:
    x_dims: int  # lip features (DCT + PCA)
    y_dims: int  # mel-cepstrum c0..cM
    hidden: tuple[int, ...] = (100, 100)  # h_1 (beside x) .. h_L (beside y): the paper's two of 100


class GGDRM(nn.Module):
    """The model; `layers` lists every layer's width, x first, y last."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.layers = [config.x_dims, *config.hidden, config.y_dims]
        widths = self.layers
        # W_1 .. W_{L+1}: W_{L+1} is U, between h_L and y
        self.weights = nn.ParameterList(
            nn.Parameter(0.01 * torch.randn(widths[k], widths[k + 1]))
            for k in range(len(widths) - 1)
        )
        self.hidden_bias = nn.ParameterList(nn.Parameter(torch.zeros(w)) for w in config.hidden)
        self.x_bias = nn.Parameter(torch.zeros(config.x_dims))
        self.y_bias = nn.Parameter(torch.zeros(config.y_dims))
        self.x_log_sigma = nn.Parameter(torch.zeros(config.x_dims))
        self.y_log_sigma = nn.Parameter(torch.zeros(config.y_dims))

    # --- the energy and its conditionals ---------------------------------------------------------

    def variances(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.exp(2 * self.x_log_sigma), torch.exp(2 * self.y_log_sigma)

    def energy(self, x: torch.Tensor, hidden: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """E(x, h_1..h_L, y) per row (batch,); hidden states may be probabilities (mean-field)."""
        var_x, var_y = self.variances()
        states = [x / var_x, *hidden, y / var_y]  # the scaled visibles carry the coupling
        e = ((x - self.x_bias) ** 2 / (2 * var_x)).sum(1)
        e = e + ((y - self.y_bias) ** 2 / (2 * var_y)).sum(1)
        for k, w in enumerate(self.weights):
            e = e - ((states[k] @ w) * states[k + 1]).sum(1)
        for h, c in zip(hidden, self.hidden_bias, strict=True):
            e = e - h @ c
        return e

    def hidden_input(self, layer: int, below: torch.Tensor, above: torch.Tensor) -> torch.Tensor:
        """Total input to hidden layer `layer` (0-based) from its neighbours' states; x and y
        enter divided by their variances, as the energy couples them."""
        w_below, w_above = self.weights[layer], self.weights[layer + 1]
        return self.hidden_bias[layer] + below @ w_below + above @ w_above.T

    def scaled(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        var_x, var_y = self.variances()
        return x / var_x, y / var_y

    def x_mean(self, h1: torch.Tensor) -> torch.Tensor:
        return self.x_bias + h1 @ self.weights[0].T

    def y_mean(self, h_last: torch.Tensor) -> torch.Tensor:
        return self.y_bias + h_last @ self.weights[-1]

    # --- inference ------------------------------------------------------------------------------

    def mean_field(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        iterations: int,
        free: str | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Fixed-point mean-field over the hidden layers with x and y clamped, or with one of them
        (`free` = "x" or "y") set to its conditional mean after every sweep. Returns the hidden
        marginals and the (possibly updated) x and y. Sweeps update the layers in order, from
        every marginal at 1/2."""
        hidden = [torch.full((len(x), w), 0.5, device=x.device) for w in self.config.hidden]
        for _ in range(iterations):
            sx, sy = self.scaled(x, y)
            states = [sx, *hidden, sy]
            for k in range(len(hidden)):
                states[k + 1] = torch.sigmoid(self.hidden_input(k, states[k], states[k + 2]))
            hidden = states[1:-1]
            if free == "y":
                y = self.y_mean(hidden[-1])
            elif free == "x":
                x = self.x_mean(hidden[0])
        return hidden, x, y

    def convert(self, given: torch.Tensor, direction: str, iterations: int) -> torch.Tensor:
        """x -> y (`direction` "x2y") or y -> x ("y2x"): the given side clamped, the other at its
        conditional mean, mean-field until `iterations` sweeps; starts the free side at 0, the
        standardised data's mean."""
        zeros = torch.zeros(len(given), self.layers[-1 if direction == "x2y" else 0])
        zeros = zeros.to(given.device)
        if direction == "x2y":
            _, _, y = self.mean_field(given, zeros, iterations, free="y")
            return y
        _, x, _ = self.mean_field(zeros, given, iterations, free="x")
        return x

    def gibbs(
        self, state: list[torch.Tensor], steps: int, generator: torch.Generator | None = None
    ) -> list[torch.Tensor]:
        """`steps` sweeps of two-block Gibbs sampling over [x, h_1..h_L, y]: the even layers given
        the odd ones, then the odd given the even (neighbours only, so each block factorises)."""
        state = list(state)
        std_x, std_y = torch.exp(self.x_log_sigma), torch.exp(self.y_log_sigma)
        last = len(state) - 1
        for _ in range(steps):
            for parity in (0, 1):
                sx, sy = self.scaled(state[0], state[last])
                scaled = [sx, *state[1:last], sy]
                for k in range(parity, last + 1, 2):
                    if k == 0:
                        mean = self.x_mean(state[1])
                        state[0] = mean + std_x * _normal(mean, generator)
                    elif k == last:
                        mean = self.y_mean(state[last - 1])
                        state[last] = mean + std_y * _normal(mean, generator)
                    else:
                        p = torch.sigmoid(self.hidden_input(k - 1, scaled[k - 1], scaled[k + 1]))
                        state[k] = torch.bernoulli(p, generator=generator)
                    sx, sy = self.scaled(state[0], state[last])
                    scaled = [sx, *state[1:last], sy]
        return state

    def energy_gap(
        self,
        data: tuple[torch.Tensor, list[torch.Tensor], torch.Tensor],
        model: list[torch.Tensor],
    ) -> torch.Tensor:
        """<E>_data - <E>_model, states held constant: its gradient is minus the log-likelihood
        gradient (the data term with mean-field marginals, the model term from the chains)."""
        x, hidden, y = data
        positive = self.energy(x, [h.detach() for h in hidden], y).mean()
        negative = self.energy(model[0], model[1:-1], model[-1]).mean()
        return positive - negative


def _normal(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


# --- pre-training: Gaussian RBMs and the relational RBM between them ----------------------------


class GaussianRBM(nn.Module):
    """Gaussian visible (learned log sigma) - binary hidden RBM, for layer-wise pre-training."""

    def __init__(self, visible: int, hidden: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(0.01 * torch.randn(visible, hidden))
        self.visible_bias = nn.Parameter(torch.zeros(visible))
        self.hidden_bias = nn.Parameter(torch.zeros(hidden))
        self.log_sigma = nn.Parameter(torch.zeros(visible))

    def hidden_probability(self, v: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.hidden_bias + (v / torch.exp(2 * self.log_sigma)) @ self.weight)

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """F(v) = |v - a|^2 / 2 sigma^2 - sum_j softplus(c_j + (v / sigma^2)^T W_j)."""
        var = torch.exp(2 * self.log_sigma)
        quadratic = ((v - self.visible_bias) ** 2 / (2 * var)).sum(1)
        return quadratic - nn.functional.softplus(self.hidden_bias + (v / var) @ self.weight).sum(1)

    def reconstruct(self, v: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """One Gibbs step v -> h (sampled) -> v (sampled): CD-1's negative sample."""
        h = torch.bernoulli(self.hidden_probability(v), generator=generator)
        mean = self.visible_bias + h @ self.weight.T
        return mean + torch.exp(self.log_sigma) * _normal(mean, generator)

    def cd_loss(self, v: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Contrastive divergence as a loss: F(data) - F(one-step reconstruction)."""
        negative = self.reconstruct(v, generator).detach()
        return self.free_energy(v).mean() - self.free_energy(negative).mean()


class RelationalRBM(nn.Module):
    """Binary h_l - h_{l+1} RBM trained on the hidden activations both sides' Gaussian RBMs give
    for the same frames: it learns how the lip code relates to the speech code (W_{l+1})."""

    def __init__(self, lower: int, upper: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(0.01 * torch.randn(lower, upper))
        self.lower_bias = nn.Parameter(torch.zeros(lower))
        self.upper_bias = nn.Parameter(torch.zeros(upper))

    def energy(self, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
        coupling = ((lower @ self.weight) * upper).sum(1)
        return -coupling - lower @ self.lower_bias - upper @ self.upper_bias

    def cd_loss(
        self, lower: torch.Tensor, upper: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """CD-1 from the paired activations: both layers observed in the data term."""
        with torch.no_grad():
            down = torch.bernoulli(
                torch.sigmoid(self.lower_bias + upper @ self.weight.T), generator=generator
            )
            up = torch.bernoulli(
                torch.sigmoid(self.upper_bias + down @ self.weight), generator=generator
            )
        return self.energy(lower, upper).mean() - self.energy(down, up).mean()


def stack(x_rbm: GaussianRBM, y_rbm: GaussianRBM, middle: list[RelationalRBM]) -> GGDRM:
    """The GGDRM initialised from its pre-trained parts: x side and hidden biases of h_1 from the
    lip RBM, y side and h_L's from the speech RBM, the couplings between hidden layers from the
    relational RBMs (their biases are dropped: the Gaussian RBMs already set them)."""
    x_dims, h1 = x_rbm.weight.shape
    y_dims, h_last = y_rbm.weight.shape
    hidden = (h1, *[m.weight.shape[1] for m in middle])
    model = GGDRM(Config(x_dims, y_dims, hidden))
    if hidden[-1] != h_last:
        raise ValueError("the speech RBM's hidden width must match the last hidden layer")
    with torch.no_grad():
        model.weights[0].copy_(x_rbm.weight)
        for k, m in enumerate(middle):
            model.weights[k + 1].copy_(m.weight)
        model.weights[-1].copy_(y_rbm.weight.T)
        if len(hidden) == 1:  # one hidden layer serves both sides
            model.hidden_bias[0].copy_((x_rbm.hidden_bias + y_rbm.hidden_bias) / 2)
        else:
            model.hidden_bias[0].copy_(x_rbm.hidden_bias)
            model.hidden_bias[-1].copy_(y_rbm.hidden_bias)
        model.x_bias.copy_(x_rbm.visible_bias)
        model.y_bias.copy_(y_rbm.visible_bias)
        model.x_log_sigma.copy_(x_rbm.log_sigma)
        model.y_log_sigma.copy_(y_rbm.log_sigma)
    return model


# --- fine-tuning: the model unrolled into feed-forward nets --------------------------------------


def unroll(drm: GGDRM, direction: str) -> FeedForward:
    """The DRM's bottom-up pass as a feed-forward net, the start of fine-tuning (d). x2y: h_1 =
    sigmoid(c_1 + (x / sigma_x^2) W_1), ..., y = d + h_L U; y2x the mirror. The variance scaling of
    the input is folded into the first layer's weights."""
    widths = drm.layers if direction == "x2y" else drm.layers[::-1]
    net = FeedForward(widths)
    var_x, var_y = (v.detach() for v in drm.variances())
    weights = [w.detach() for w in drm.weights]
    biases = [c.detach() for c in drm.hidden_bias]
    if direction == "x2y":
        layers = [(weights[0] / var_x[:, None], biases[0])]
        layers += [(weights[k], biases[k]) for k in range(1, len(biases))]
        layers += [(weights[-1], drm.y_bias.detach())]
    else:
        layers = [(weights[-1].T / var_y[:, None], biases[-1])]
        layers += [(weights[k].T, biases[k - 1]) for k in range(len(biases) - 1, 0, -1)]
        layers += [(weights[0].T, drm.x_bias.detach())]
    with torch.no_grad():
        for linear, (w, c) in zip(net.linears, layers, strict=True):
            linear.weight.copy_(w.T)
            linear.bias.copy_(c)
    return net
