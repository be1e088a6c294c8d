"""The DEQ transformer LM: shapes, causality, memory, equilibrium, variational masks, heads."""

from __future__ import annotations

import pytest
import torch

from projects.deq_lm.net import TransformerLM, count_parameters
from torchdeq.dropout import VariationalDropout, reset_dropout
from torchdeq.norm import reset_norm

V = 60
SMALL = dict(d_model=16, n_head=2, d_head=8, d_inner=32, mem_len=6)
QUIET = dict(dropout=0.0, emb_dropout=0.0, out_dropout=0.0)
WN = dict(norm_type="weight_norm")


def _net(mode="deq", adaptive=False, deq=None, **kw):
    torch.manual_seed(0)
    options = {**SMALL, **QUIET, **kw}
    if adaptive:
        options.update(adaptive=True, cutoffs=[10, 30], div_value=2.0)
    deq = deq or dict(f_max_iter=40, f_tol=1e-6, f_stop_mode="rel")
    return TransformerLM(V, mode=mode, n_layer=3, deq=deq, norm=WN, **options).double()


MODES = [("deq", False), ("deq", True), ("tied", False), ("untied", True)]


@pytest.mark.parametrize("mode,adaptive", MODES)
def test_deq_lm_shapes_and_memory_lengths(mode, adaptive):
    net = _net(mode, adaptive).eval()
    tokens = torch.randint(0, V, (3, 5))
    out, info = net(tokens)
    assert out.states[-1].shape == (3, 5, 16)
    assert len(out.mems) == (3 if mode == "untied" else 1)
    assert all(m.shape == (3, 5, 16) for m in out.mems)  # 5 < mem_len: everything kept
    out, _ = net(tokens, mems=out.mems)
    assert all(m.shape == (3, 6, 16) for m in out.mems)  # capped at eval_mem_len (= mem_len)
    assert (info is None) == (mode != "deq")
    log_probs = net.log_probs(out.states[-1])
    assert log_probs.shape == (3, 5, V)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(3, 5, dtype=torch.float64))
    nll = net.nll(out.states[-1], tokens)
    assert torch.allclose(nll, -log_probs.gather(-1, tokens[..., None])[..., 0])


@pytest.mark.parametrize("mode,adaptive", MODES)
def test_deq_lm_a_future_token_never_changes_an_earlier_output(mode, adaptive):
    net = _net(mode, adaptive).eval()
    prev, _ = net(torch.randint(0, V, (2, 4)))
    tokens = torch.randint(0, V, (2, 7))
    changed = tokens.clone()
    changed[:, 4] = (changed[:, 4] + 1) % V
    a, _ = net(tokens, mems=prev.mems)
    b, _ = net(changed, mems=prev.mems)
    diff = (a.states[-1] - b.states[-1]).abs().amax(dim=(0, 2))
    assert diff[:4].max() < 1e-10  # positions before the change: identical (up to the solve)
    assert diff[4] > 1e-3  # the changed position itself does change


@pytest.mark.parametrize("mode", ["deq", "untied"])
def test_deq_lm_memory_carries_context_across_segments(mode):
    net = _net(mode).eval()
    first = torch.randint(0, V, (2, 5))
    other = (first + 1) % V
    seg = torch.randint(0, V, (2, 4))
    with_a, _ = net(seg, mems=net(first)[0].mems)
    with_b, _ = net(seg, mems=net(other)[0].mems)
    alone, _ = net(seg)
    assert (with_a.states[-1] - with_b.states[-1]).abs().max() > 1e-3
    assert (with_a.states[-1] - alone.states[-1]).abs().max() > 1e-3
    # the memory is detached: no gradient flows into the previous segment
    assert not any(m.requires_grad for m in with_a.mems)


def test_deq_lm_reaches_the_equilibrium_of_its_block():
    net = _net(deq=dict(f_solver="anderson", f_max_iter=100, f_tol=1e-10, f_stop_mode="rel")).eval()
    tokens = torch.randint(0, V, (2, 6))
    prev, _ = net(torch.randint(0, V, (2, 3)))
    out, info = net(tokens, mems=prev.mems)
    assert info["rel_lowest"].max() < 1e-8
    # z* is a fixed point of the block itself, evaluated outside the solver
    z = out.states[-1]
    block = net.blocks[0]
    from projects.deq_lm.net import rotary_tables

    cos, sin = rotary_tables(torch.arange(3 + 6), net.d_head, dtype=z.dtype)
    k, v = block.attn.memory_kv(prev.mems[0], cos, sin)
    x = net.injection(net.io.embed(tokens))
    assert torch.allclose(block(z, x, k, v, cos, sin), z, atol=1e-7)


def test_deq_lm_variational_masks_are_held_across_solver_iterations():
    deq = dict(f_solver="anderson", f_max_iter=100, f_tol=1e-9, f_stop_mode="rel", grad=1)
    net = _net(dropout=0.3, attn_dropout=0.2, deq=deq).train()
    reset_norm(net)
    reset_dropout(net)
    tokens = torch.randint(0, V, (2, 5))
    out, info = net(tokens)
    # A fresh mask per call would leave no fixed point to converge to.
    assert info["rel_lowest"].max() < 1e-6
    masks = {
        name: m.mask.clone() for name, m in net.named_modules() if isinstance(m, VariationalDropout)
    }
    assert masks["blocks.0.drop_inner"].shape == (2, 1, 32)  # one channel mask per sequence
    assert masks["blocks.0.attn.attn_dropout"].shape == (2, 2, 5, 5)
    net(tokens)
    for name, m in net.named_modules():
        if isinstance(m, VariationalDropout):
            assert torch.equal(m.mask, masks[name]), name
    reset_dropout(net)
    net(tokens)
    assert not torch.equal(net.blocks[0].drop_inner.mask, masks["blocks.0.drop_inner"])


def test_deq_lm_mem_gc_gives_the_same_gradients():
    grads = []
    for mem_gc in (False, True):
        net = _net(deq=dict(f_max_iter=0, grad=3), mem_gc=mem_gc, dropout=0.2).train()
        torch.manual_seed(1)
        reset_dropout(net)
        tokens = torch.randint(0, V, (2, 5))
        out, _ = net(tokens)
        net.nll(out.states[-1], tokens).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-12)


def test_deq_lm_without_a_forward_solve_is_the_tied_unroll():
    # f_max_iter 0 + k phantom steps (tau 1) is the block applied k times from z = 0.
    deq = _net(deq=dict(f_max_iter=0, grad=3)).train()
    tied = _net("tied").train()
    tokens = torch.randint(0, V, (2, 5))
    assert torch.allclose(deq(tokens)[0].states[-1], tied(tokens)[0].states[-1])


def test_deq_lm_jacobian_loss_and_parameter_counts():
    net = _net(deq=dict(f_max_iter=4, grad=1)).train()
    out, info = net(torch.randint(0, V, (2, 5)), jac_loss=True)
    assert info["jac_loss"].ndim == 0 and info["jac_loss"].requires_grad
    assert count_parameters(_net("untied")) > count_parameters(_net("tied"))
    assert count_parameters(_net("tied")) == count_parameters(_net("deq"))


def test_deq_lm_adaptive_inputs_are_tied_with_the_softmax():
    net = _net(adaptive=True)
    sm = net.io.softmax
    head_word, tail_word = torch.tensor([[3]]), torch.tensor([[40]])
    assert torch.allclose(net.io.embed(head_word)[0, 0], sm.head.weight[3] * net.io.scale)
    proj, table = sm.tail[1]
    expected = table.weight[40 - 30] @ proj.weight * net.io.scale
    assert torch.allclose(net.io.embed(tail_word)[0, 0], expected)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(mode="deeq"), "valid choices"),
        (dict(adaptive=True, cutoffs=[70]), "cutoffs"),
        (dict(mode="tied", mem_gc=True), "mem_gc"),
    ],
)
def test_deq_lm_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TransformerLM(V, **{**SMALL, **kwargs})
