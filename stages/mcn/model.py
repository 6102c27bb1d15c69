"""The Multimodal Clustering Network of seed 004 (Chen et al. 2021), in plain torch.

Three branches map a clip's modalities into one D-dimensional space (`../shared/specs/mcn.md`):
- video: a gated embedding unit (GEU) on the clip's pooled ResNet-152 feature;
- text: Linear 300 -> D, ReLU, max over the word slots, GEU D -> D;
- audio: a residual DaveNet trained jointly on the clip's log-mel window (masked mean over time),
  GEU on its output, Linear -> D.
A GEU is `y = W1 x + b1; y * sigmoid(W2 y + b2)`. Three losses, on the modalities being trained:
- `contrastive`: the masked margin softmax over every pair of modalities (raw dot products, a margin
  subtracted on the true pairs, cross-entropy both ways; other clips of the same video are masked
  out as negatives, they are not wrong matches);
- `cluster_loss`: each modality's embedding classified against the online k-means centroids of
  the fused embedding (mean of the modalities), with the same margin at its assigned centroid;
- `reconstruction`: per modality an MLP D -> hidden -> the branch's input (video feature, pooled
  DaveNet output, max-pooled word vectors), squared error.
Sizes are `Config` fields (the official code hard-codes some of them).

One addition: the video features and word vectors are standardised per dimension with the training
clips' statistics (buffers set by `set_input_statistics`, kept in the model file). Real ResNet-152
features differ from clip to clip; the stand-in's, from random weights, are nearly one direction
(per-dimension spread ~4e-5 after L2 normalisation), too small a signal for the GEU to pick up
from raw inputs: without it, the contrastive loss did not move from log(batch) in 300 steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from stages.mcn.davenet import ResDavenet

MODALITIES = ("video", "audio", "text")


@dataclass(frozen=True)
class Config:
    video_dim: int = 2048  # ResNet-152 pooled feature
    word_dim: int = 300  # word2vec
    n_mels: int = 40
    embed_dim: int = 6144  # D, the paper's
    davenet_widths: tuple[int, ...] = (128, 256, 512, 1024)
    reconstruction_hidden: int = 1024


class GatedEmbedding(nn.Module):
    """Miech et al.'s gated embedding unit, without the L2 normalisation (MCN's version)."""

    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.linear = nn.Linear(inputs, outputs)
        self.gate = nn.Linear(outputs, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        return y * torch.sigmoid(self.gate(y))


def mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


class MCN(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        c, d = config, config.embed_dim
        self.config = config
        audio_dim = c.davenet_widths[-1]
        self.video = GatedEmbedding(c.video_dim, d)
        self.text_projection = nn.Linear(c.word_dim, d)
        self.text = GatedEmbedding(d, d)
        self.davenet = ResDavenet(c.n_mels, widths=c.davenet_widths)
        self.audio_gate = GatedEmbedding(audio_dim, audio_dim)
        self.audio = nn.Linear(audio_dim, d)
        for name, dims in (("video", c.video_dim), ("word", c.word_dim)):
            self.register_buffer(f"{name}_mean", torch.zeros(dims))
            self.register_buffer(f"{name}_std", torch.ones(dims))
        self.reconstruct = nn.ModuleDict({
            "video": mlp(d, c.reconstruction_hidden, c.video_dim),
            "audio": mlp(d, c.reconstruction_hidden, audio_dim),
            "text": mlp(d, c.reconstruction_hidden, c.word_dim),
        })  # fmt: skip

    def set_input_statistics(self, video: torch.Tensor, words: torch.Tensor) -> None:
        """Per-dimension mean and std of the training clips' video features (n, video_dim) and
        their real (non-padding) word vectors (n, slots, word_dim)."""
        real = words[words.abs().sum(-1) > 0]
        for name, x in (("video", video), ("word", real)):
            getattr(self, f"{name}_mean").copy_(x.mean(0))
            getattr(self, f"{name}_std").copy_(x.std(0) + 1e-6)

    def branch(self, modality: str) -> list[nn.Module]:
        """The modules that embed one modality, its reconstruction head included: what the
        second step of the modality-order study freezes."""
        parts: dict[str, list[nn.Module]] = {
            "video": [self.video],
            "audio": [self.davenet, self.audio_gate, self.audio],
            "text": [self.text_projection, self.text],
        }
        return [*parts[modality], self.reconstruct[modality]]

    def embed(
        self, modality: str, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding (n, D), the branch input its reconstruction head rebuilds)."""
        if modality == "video":
            x = (batch["video"] - self.video_mean) / self.video_std
            return self.video(x), x
        if modality == "text":
            words = batch["words"]  # (n, slots, 300), zero-padded
            real = (words.abs().sum(-1, keepdim=True) > 0).to(words.dtype)
            words = (words - self.word_mean) / self.word_std * real  # padding stays zero
            pooled = words.max(1).values
            return self.text(F.relu(self.text_projection(words)).max(1).values), pooled
        pooled = self.davenet.embed(batch["audio"], batch["audio_frames"])
        return self.audio(self.audio_gate(pooled)), pooled.detach()


def margin_softmax(
    a: torch.Tensor, b: torch.Tensor, margin: float, same_video: torch.Tensor
) -> torch.Tensor:
    """Masked margin softmax between two modalities' embeddings of the same n clips: row i's true
    match is column i; `same_video` (n, n) bool marks other clips of the same video, which are
    masked out as negatives. Cross-entropy both ways, summed."""
    scores = a @ b.T
    n = len(scores)
    eye = torch.eye(n, dtype=torch.bool, device=scores.device)
    scores = scores - margin * eye
    scores = scores.masked_fill(same_video & ~eye, float("-inf"))
    target = torch.arange(n, device=scores.device)
    return F.cross_entropy(scores, target) + F.cross_entropy(scores.T, target)


def contrastive(
    embeddings: dict[str, torch.Tensor], margin: float, same_video: torch.Tensor
) -> torch.Tensor:
    """The margin softmax summed over every pair of the given modalities."""
    names = [m for m in MODALITIES if m in embeddings]
    total = embeddings[names[0]].new_zeros(())
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            total = total + margin_softmax(
                embeddings[first], embeddings[second], margin, same_video
            )
    return total


def cluster_loss(
    embeddings: dict[str, torch.Tensor], fused: torch.Tensor, centroids: torch.Tensor, margin: float
) -> torch.Tensor:
    """Each modality's embedding against the centroids (dot products), the true class the fused
    embedding's nearest centroid by cosine, margin at it; the mean over modalities."""
    assigned = assign(fused.detach(), centroids)
    losses = []
    for e in embeddings.values():
        scores = e @ centroids.T
        scores = scores - margin * F.one_hot(assigned, len(centroids)).to(scores.dtype)
        losses.append(F.cross_entropy(scores, assigned))
    return torch.stack(losses).mean()


def assign(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid by cosine similarity."""
    return (F.normalize(points, dim=1) @ F.normalize(centroids, dim=1).T).argmax(1)


def spherical_kmeans(
    points: torch.Tensor, centroids: torch.Tensor, iterations: int
) -> torch.Tensor:
    """Cosine k-means refit from the previous centroids (unit length); an empty cluster keeps its
    centroid."""
    x = F.normalize(points, dim=1)
    c = F.normalize(centroids, dim=1)
    for _ in range(iterations):
        labels = (x @ c.T).argmax(1)
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=len(c))
        c = torch.where(counts[:, None] > 0, F.normalize(sums, dim=1), c)
    return c
