"""Methods: each turns a backbone into a network returning logits (B, D, M, K) and weights (D, M)."""

from mimmo.methods.base import Base, LossOutput, Method, Prediction, Progress, mixture_log_probs
from mimmo.methods.mimmo import MIMMO, MIMMOGamma
from mimmo.methods.mimo import MIMO

__all__ = ["MIMMO", "MIMO", "Base", "LossOutput", "MIMMOGamma", "Method", "Prediction", "Progress",
           "mixture_log_probs"]
