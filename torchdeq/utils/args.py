"""Command-line options of TorchDEQ for ``argparse``."""

from __future__ import annotations

import argparse

from torchdeq.utils.config import DEQConfig

_D = DEQConfig()


def add_deq_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds every TorchDEQ option, with its documented default, to ``parser``.

    The defaults are those of :class:`~torchdeq.utils.config.DEQConfig`, so
    ``get_deq(parser.parse_args([]))`` and ``get_deq()`` build the same DEQ.

    Args:
        parser (argparse.ArgumentParser): The parser to decorate.

    Returns:
        argparse.ArgumentParser: The same parser, for chaining.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> args = add_deq_args(parser).parse_args(['--f_solver', 'anderson'])
        >>> args.f_solver, args.f_max_iter
        ('anderson', 40)
    """
    g = parser.add_argument_group("DEQ solvers")
    g.add_argument("--f_solver", type=str, default=_D.f_solver, help="forward solver")
    g.add_argument("--b_solver", type=str, default=_D.b_solver, help="backward (IFT) solver")
    g.add_argument(
        "--no_stat",
        action="store_true",
        default=_D.no_stat,
        help="skip solver statistics where the solver allows it",
    )
    g.add_argument("--f_max_iter", type=int, default=_D.f_max_iter, help="forward solver steps")
    g.add_argument("--b_max_iter", type=int, default=_D.b_max_iter, help="backward solver steps")
    g.add_argument("--f_tol", type=float, default=_D.f_tol, help="forward stopping tolerance")
    g.add_argument("--b_tol", type=float, default=_D.b_tol, help="backward stopping tolerance")
    g.add_argument("--f_stop_mode", type=str, default=_D.f_stop_mode, choices=["abs", "rel"])
    g.add_argument("--b_stop_mode", type=str, default=_D.b_stop_mode, choices=["abs", "rel"])
    g.add_argument(
        "--eval_factor",
        type=float,
        default=_D.eval_factor,
        help="test-time forward steps = f_max_iter * eval_factor",
    )
    g.add_argument(
        "--eval_f_max_iter",
        type=int,
        default=_D.eval_f_max_iter,
        help="exact test-time forward steps (overrides eval_factor when > 0)",
    )

    g = parser.add_argument_group("DEQ core and gradients")
    g.add_argument("--core", type=str, default=_D.core, help="'sliced' or 'indexing'")
    g.add_argument("--ift", action="store_true", help="implicit differentiation")
    g.add_argument("--hook_ift", action="store_true", help="IFT through a backward hook")
    g.add_argument(
        "--grad",
        type=int,
        nargs="+",
        default=[_D.grad],
        help="phantom gradient steps (one value, or one per sampled state)",
    )
    g.add_argument("--tau", type=float, default=_D.tau, help="phantom gradient damping")
    g.add_argument(
        "--sup_gap",
        type=int,
        default=_D.sup_gap,
        help="supervise every sup_gap phantom-gradient states",
    )
    g.add_argument(
        "--sup_loc",
        type=int,
        nargs="+",
        default=[],
        help="phantom-gradient steps to supervise",
    )
    g.add_argument(
        "--n_states",
        type=int,
        default=_D.n_states,
        help="number of uniformly sampled trajectory states",
    )
    g.add_argument(
        "--indexing",
        type=int,
        nargs="+",
        default=[],
        help="solver steps at which to sample states",
    )

    g = parser.add_argument_group("DEQ regularisation")
    g.add_argument("--gamma", type=float, default=_D.gamma, help="fixed-point correction decay")
    g.add_argument(
        "--jac_loss_weight",
        type=float,
        default=_D.jac_loss_weight,
        help="weight of the Jacobian regularisation",
    )
    g.add_argument(
        "--jac_loss_freq",
        type=float,
        default=_D.jac_loss_freq,
        help="probability of applying the Jacobian regularisation",
    )
    g.add_argument(
        "--jac_incremental",
        type=int,
        default=_D.jac_incremental,
        help="steps over which the Jacobian loss weight ramps up",
    )
    g.add_argument("--sradius_mode", action="store_true", help="estimate the spectral radius")

    g = parser.add_argument_group("DEQ normalisation")
    g.add_argument(
        "--norm_type",
        type=str,
        default=_D.norm_type,
        help="'weight_norm', 'spectral_norm' or 'none'",
    )
    g.add_argument("--norm_no_scale", action="store_true", help="no learnable norm scale")
    g.add_argument("--norm_clip", action="store_true", help="clip the learnable norm scale")
    g.add_argument("--norm_clip_value", type=float, default=_D.norm_clip_value)
    g.add_argument("--norm_target_norm", type=float, default=_D.norm_target_norm)
    g.add_argument(
        "--sn_n_power_iters",
        type=int,
        default=_D.sn_n_power_iters,
        help="power iterations per spectral-norm reset",
    )
    return parser
