"""The weighted k-nearest-neighbour classifier of DINO (Caron et al. 2021, ``eval_knn.py``) on frozen features.

Features are L2-normalised, so the similarity of a query q to a training image x_j is the cosine
s_j = q . x_j / (|q| |x_j|). The k most similar training images N_k(q) vote for their classes, each with the
weight exp(s_j / T)::

    score_c(q) = sum_{j in N_k(q)} [y_j = c] exp(s_j / T),        prediction = argmax_c score_c(q)

Ties are broken deterministically: among equally similar training images the one listed first is the nearer
(a stable order of (-s_j, j)), and among equal scores the lower class index wins (top-1 and top-5 alike).
Queries are scored in chunks, so memory stays at chunk x (training images) similarities.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..evaluation import TOP_K, top_k_informative


def check_knn(ks, temperature: float, num_train: int) -> None:
    if any(k < 1 for k in ks):
        raise ConfigError(f"--k takes numbers of neighbours of 1 or more, got {min(ks)}")
    if not temperature > 0:
        raise ConfigError(f"--temperature must be above 0 (the votes are exp(similarity / T)), got {temperature}")
    if max(ks) > num_train:
        raise ConfigError(f"--k {max(ks)} asks for more neighbours than the training split has images "
                          f"({num_train}); use a k of at most {num_train}")


def nearest(train: torch.Tensor, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, indices), each (Q, k), of the k training rows most similar to each query row (both
    already unit length), ordered by (-similarity, index)."""
    sim = queries @ train.T  # (Q, N)
    kth = sim.topk(k, dim=1).values[:, -1:]  # (Q, 1): the k-th largest similarity
    above = sim > kth  # (Q, N): surely in
    tied = sim == kth  # (Q, N): in while places are left, lowest index first
    need = k - above.sum(dim=1, keepdim=True)  # (Q, 1)
    chosen = above | (tied & (tied.cumsum(dim=1) <= need))  # (Q, N), exactly k per row
    idx = chosen.nonzero()[:, 1].view(len(queries), k)  # (Q, k) in index order
    s = sim.gather(1, idx)
    order = s.sort(dim=1, descending=True, stable=True).indices  # equal similarities keep index order
    return s.gather(1, order), idx.gather(1, order)


def knn_scores(train: torch.Tensor, train_labels: torch.Tensor, queries: torch.Tensor, ks, temperature: float,
               num_classes: int, chunk: int = 512) -> dict[int, torch.Tensor]:
    """{k: class scores (Q, classes)} of the weighted vote above, for every k of ``ks`` from one search."""
    train = torch.nn.functional.normalize(train.flatten(1), dim=1)  # (N, F)
    queries = torch.nn.functional.normalize(queries.flatten(1), dim=1)  # (Q, F)
    kmax = max(ks)
    out: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, len(queries), chunk):
        sim, idx = nearest(train, queries[start:start + chunk], kmax)  # (q, kmax)
        votes = torch.nn.functional.one_hot(train_labels[idx], num_classes).to(sim.dtype)  # (q, kmax, classes)
        weighted = votes * (sim / temperature).exp().unsqueeze(-1)  # (q, kmax, classes)
        for k in ks:
            out[k].append(weighted[:, :k].sum(dim=1))  # (q, classes)
    return {k: torch.cat(v) if v else torch.zeros(0, num_classes, dtype=train.dtype) for k, v in out.items()}


def ranked(scores: torch.Tensor) -> torch.Tensor:
    """Classes by score, highest first, equal scores by class index: (Q, classes)."""
    return scores.sort(dim=1, descending=True, stable=True).indices


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> dict:
    """{"top1", "top5" (None with 5 classes or fewer), "n"} of class scores (Q, classes) against labels (Q,)."""
    order = ranked(scores)
    n = len(labels)
    top1 = float((order[:, 0] == labels).double().mean()) if n else 0.0
    top5 = None
    if top_k_informative(scores.shape[1]):
        top5 = float((order[:, :TOP_K] == labels[:, None]).any(dim=1).double().mean()) if n else 0.0
    return {"top1": top1, "top5": top5, "n": n}


def evaluate_knn(train, train_labels, queries: dict, ks, temperature: float, num_classes: int) -> dict:
    """{split: {k: accuracy}} for each (features, labels) of ``queries`` ({"val": ..., "test": ...})."""
    check_knn(ks, temperature, len(train))
    results = {}
    for split, (features, labels) in queries.items():
        scores = knn_scores(train, train_labels, features, ks, temperature, num_classes)
        results[split] = {k: accuracy(s, labels) for k, s in scores.items()}
    return results
