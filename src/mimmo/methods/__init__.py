"""Methods: each turns a backbone into a network returning logits (B, D, M, K) and weights (D, M)."""

from mimmo.methods.base import Base, LossOutput, Method, Prediction, Progress, mixture_log_probs
from mimmo.methods.batch_ensemble import BatchEnsemble
from mimmo.methods.datamux import DataMUX
from mimmo.methods.dun import DUN
from mimmo.methods.early_exit import EarlyExit
from mimmo.methods.ensemble import Ensemble
from mimmo.methods.mc_dropout import MCDropout
from mimmo.methods.mimmo import MIMMO, MIMMOGamma
from mimmo.methods.mimo import MIMO
from mimmo.methods.mixmo import MixMo
from mimmo.methods.packed_ensemble import PackedEnsemble

__all__ = ["DUN", "MIMMO", "MIMO", "Base", "BatchEnsemble", "DataMUX", "EarlyExit", "Ensemble", "LossOutput",
           "MCDropout", "MIMMOGamma", "Method", "MixMo", "PackedEnsemble", "Prediction", "Progress",
           "mixture_log_probs"]
