"""Out-of-distribution detection: scores of the predictive mixture and the metrics that rank them.

Scores, per sample, from the component logits (B, D, M, K) and the weights (D, M), with pi[i, m] = w[i, m] / M
the weight of a component in the mixture (docs/method.md, "Out-of-distribution detection"):

- ``msp``: the maximum softmax probability of the mixture, max_y p(y | x) (Hendrycks & Gimpel, 2017);
- ``entropy``: the mixture's predictive entropy H[p];
- ``energy``: the free energy of the mixture (Liu et al., 2020), -log sum_{i,m} pi[i, m] sum_y exp(f_imy),
  with f_im component (i, m)'s logits. A component's logits enter only through exp(-E_im) = sum_y exp(f_imy),
  its unnormalised density, and the mixture weighs these densities by pi as it weighs the components'
  probabilities. The energy of the mixture's log probabilities would be 0 for every input (they are
  normalised), and averaging logits across components mixes logits that are each defined only up to their own
  additive constant (a product of the components, not the mixture the method predicts). With one component
  it is the usual -logsumexp(f);
- ``mi_members``, ``mi_exits``, ``mi_both``: the mutual information between the label and the member, the exit,
  or both (:mod:`mimmo.evaluation.decomposition`); only where there are several of them (otherwise it is 0).

:data:`HIGHER_IS_OOD` gives each score's direction; the metrics orient every score so that a higher value
means "more likely OOD". Metrics are computed over the union of the in-distribution (ID) and the OOD samples:

- ``auroc``: the probability that an OOD sample scores higher than an ID one, ties counting one half (the
  same value with either set as the positive class);
- ``aupr_in``: average precision with ID as the positive class and the negated score; ``aupr_out``: with OOD
  as the positive class. Average precision is sum_n (R_n - R_{n-1}) P_n over the distinct thresholds, tied
  scores crossing a threshold together (scikit-learn's and torchmetrics' ``BinaryAveragePrecision``);
- ``fpr95``: the fraction of OOD samples accepted as ID when the threshold accepts 95% of the ID samples: the
  highest threshold on the oriented score under which at least 95% of the ID samples fall, tied scores
  accepted together (so a tie with the threshold counts against the detector).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mimmo.evaluation.decomposition import check_logits, component_weights, decompose
from mimmo.evaluation.metrics import binary_auroc

HIGHER_IS_OOD = {"msp": False, "entropy": True, "energy": True, "mi_members": True, "mi_exits": True,
                 "mi_both": True}
SCORES = tuple(HIGHER_IS_OOD)
METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95")
TPR_LEVEL = 0.95
HISTOGRAM_BINS = 30


def energy(logits: Tensor, weights: Tensor) -> Tensor:
    """Free energy of the mixture, -log sum_{i,m} pi[i, m] sum_y exp(logits[:, i, m, y]), per sample (B,)."""
    check_logits(logits, weights)
    log_pi = component_weights(weights, logits.shape[2]).to(logits.device).log()  # (D, M)
    free = torch.logsumexp(logits.detach().to(torch.float64), dim=-1) + log_pi[None]  # (B, D, M)
    return -torch.logsumexp(free.flatten(1), dim=1)


def score_names(num_exits: int, num_members: int) -> list[str]:
    """The scores defined for D exits and M members: the mutual informations need several of what they split."""
    names = ["msp", "entropy", "energy"]
    if num_members > 1:
        names.append("mi_members")
    if num_exits > 1:
        names.append("mi_exits")
    if num_members > 1 and num_exits > 1:
        names.append("mi_both")
    return names


def uncertainty(logits: Tensor, weights: Tensor) -> dict[str, Tensor]:
    """Per sample (B,), float64: ``msp``, ``energy`` and every part of
    :func:`~mimmo.evaluation.decomposition.decompose` (``total`` is the entropy)."""
    check_logits(logits, weights)
    parts = decompose(logits, weights)
    log_pi = component_weights(weights, logits.shape[2]).to(logits.device).log()
    log_p = F.log_softmax(logits.detach().to(torch.float64), dim=-1) + log_pi[None, :, :, None]
    mixture = torch.logsumexp(log_p.flatten(1, 2), dim=1)  # (B, K)
    return {"msp": mixture.max(dim=1).values.exp(), "energy": energy(logits, weights), **parts}


def scores_from(parts: dict[str, Tensor], num_exits: int, num_members: int) -> dict[str, Tensor]:
    """The scores of :func:`score_names` from the parts :func:`uncertainty` gives."""
    every = {**parts, "entropy": parts["total"]}
    return {name: every[name] for name in score_names(num_exits, num_members)}


def ood_scores(logits: Tensor, weights: Tensor) -> dict[str, Tensor]:
    """Every score of :func:`score_names` per sample (B,), float64 on the logits' device, in its own direction
    (:data:`HIGHER_IS_OOD`)."""
    return scores_from(uncertainty(logits, weights), logits.shape[1], logits.shape[2])


def _oriented(id_scores: Tensor, ood_scores: Tensor, higher_is_ood: bool) -> tuple[Tensor, Tensor]:
    """The scores of both sets as one float64 vector (higher = more likely OOD) and the OOD labels."""
    id_scores, ood_scores = id_scores.detach().double().flatten().cpu(), ood_scores.detach().double().flatten().cpu()
    if len(id_scores) == 0 or len(ood_scores) == 0:
        raise ValueError(f"OOD detection needs in-distribution and OOD samples, got {len(id_scores)} and "
                         f"{len(ood_scores)}")
    scores = torch.cat([id_scores, ood_scores])
    labels = torch.cat([torch.zeros(len(id_scores), dtype=torch.bool), torch.ones(len(ood_scores), dtype=torch.bool)])
    return (scores if higher_is_ood else -scores), labels


def average_precision(scores: Tensor, labels: Tensor) -> float:
    """sum_n (R_n - R_{n-1}) P_n over the distinct thresholds of ``scores`` (higher = positive), tied scores
    crossing a threshold together; NaN without positives."""
    scores, labels = scores.detach().double().flatten().cpu(), labels.detach().bool().flatten().cpu()
    num_pos = int(labels.sum())
    if num_pos == 0:
        return math.nan
    order = torch.argsort(scores, descending=True)
    scores, labels = scores[order], labels[order].double()
    last_of_group = torch.ones(len(scores), dtype=torch.bool)
    last_of_group[:-1] = scores[1:] != scores[:-1]
    true_pos = labels.cumsum(0)[last_of_group]
    accepted = torch.arange(1, len(scores) + 1, dtype=torch.float64)[last_of_group]
    recall = true_pos / num_pos
    precision = true_pos / accepted
    gain = torch.diff(recall, prepend=torch.zeros(1, dtype=torch.float64))
    return (gain * precision).sum().item()


def fpr_at_tpr(id_scores: Tensor, ood_scores: Tensor, higher_is_ood: bool, tpr: float = TPR_LEVEL) -> float:
    """The fraction of OOD samples accepted as ID at the highest threshold accepting at least ``tpr`` of the ID
    samples (a sample is accepted when its oriented score is <= the threshold; ties are accepted together)."""
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr!r}")
    scores, labels = _oriented(id_scores, ood_scores, higher_is_ood)
    id_sorted = torch.sort(scores[~labels]).values
    needed = math.ceil(tpr * len(id_sorted) - 1e-9)  # at least this many ID samples accepted
    threshold = id_sorted[needed - 1]
    return (scores[labels] <= threshold).double().mean().item()


def detection_metrics(id_scores: Tensor, ood_scores: Tensor, higher_is_ood: bool) -> dict[str, float]:
    """AUROC, AUPR-in, AUPR-out and FPR at 95% TPR of one score separating ``ood_scores`` from ``id_scores``.

    Any NaN score makes every metric NaN (a diverged network ranks nothing)."""
    scores, labels = _oriented(id_scores, ood_scores, higher_is_ood)
    if scores.isnan().any():
        return dict.fromkeys(METRICS, math.nan)
    return {
        "auroc": binary_auroc(scores, labels),
        "aupr_in": average_precision(-scores, ~labels),
        "aupr_out": average_precision(scores, labels),
        "fpr95": fpr_at_tpr(id_scores, ood_scores, higher_is_ood),
    }


def ood_metrics(id_scores: dict[str, Tensor], ood_scores: dict[str, Tensor]) -> dict[str, dict[str, float]]:
    """:func:`detection_metrics` of every score both sets have (as :func:`ood_scores` gives them): {score: metrics}."""
    return {name: detection_metrics(id_scores[name], ood_scores[name], HIGHER_IS_OOD[name])
            for name in id_scores if name in ood_scores}


def histogram(id_scores: Tensor, ood_scores: Tensor, bins: int = HISTOGRAM_BINS) -> dict[str, list]:
    """Counts of both sets' scores in ``bins`` equal bins spanning their finite values (for the report's figure):
    ``edges`` (bins + 1), ``in`` and ``ood`` counts; non-finite scores are left out."""
    id_scores, ood_scores = id_scores.detach().double().cpu(), ood_scores.detach().double().cpu()
    id_scores, ood_scores = id_scores[id_scores.isfinite()], ood_scores[ood_scores.isfinite()]
    both = torch.cat([id_scores, ood_scores])
    low, high = (both.min().item(), both.max().item()) if len(both) else (0.0, 1.0)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    return {"edges": torch.linspace(low, high, bins + 1, dtype=torch.float64).tolist(),
            "in": torch.histc(id_scores, bins, low, high).long().tolist(),
            "ood": torch.histc(ood_scores, bins, low, high).long().tolist()}
