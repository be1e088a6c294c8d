"""Losses for DEQ training: fixed-point correction and Jacobian regularisation."""

from torchdeq.loss.correction import fp_correction, register_weight_func
from torchdeq.loss.jacobian import jac_reg, power_method

__all__ = ["fp_correction", "jac_reg", "power_method", "register_weight_func"]
