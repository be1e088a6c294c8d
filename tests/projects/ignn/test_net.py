"""IGNN nets: the well-posedness projection, lambda_pf, the fixed point and its gradients."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.utils import erdos_renyi_graph, to_dense_adj

from projects.ignn.data import make_chains
from projects.ignn.net import (
    GCN,
    IGNN,
    normalized_adjacency,
    perron_frobenius,
    project_inf_norm_,
)
from torchdeq.utils.checks import OptionError

EXACT = {"f_max_iter": 400, "f_tol": 1e-12, "b_max_iter": 400, "b_tol": 1e-12}


def _graph(num_nodes=12, p=0.3, seed=0):
    torch.manual_seed(seed)
    edge_index = erdos_renyi_graph(num_nodes, p)
    return torch.randn(num_nodes, 3, dtype=torch.float64), edge_index


def test_project_inf_norm_known_answers():
    w = torch.tensor([[3.0, -1.0], [0.5, 0.5], [0.5, -2.0]], dtype=torch.float64)
    project_inf_norm_(w, 1.0)
    expected = [[1.0, 0.0], [0.5, 0.5], [0.0, -1.0]]
    torch.testing.assert_close(w, torch.tensor(expected, dtype=torch.float64))
    w = torch.tensor([[0.5, 0.5, 2.0]], dtype=torch.float64)
    project_inf_norm_(w, 2.0)
    torch.testing.assert_close(w, torch.tensor([[1 / 6, 1 / 6, 5 / 3]], dtype=torch.float64))


def test_project_inf_norm_is_the_nearest_point_of_the_ball():
    torch.manual_seed(0)
    w = torch.randn(6, 5, dtype=torch.float64)
    radius = 1.3
    inside = w.abs().sum(1) <= radius
    p = project_inf_norm_(w.clone(), radius)
    assert bool((p.abs().sum(1) <= radius + 1e-12).all())
    torch.testing.assert_close(p[inside], w[inside])
    # No point of the ball is closer: compare with random points on the ball's surface.
    cand = torch.randn(2000, 5, dtype=torch.float64)
    cand = radius * cand / cand.abs().sum(1, keepdim=True)
    for row, proj in zip(w, p):
        best = (cand - row).norm(dim=1).min()
        assert (proj - row).norm() <= best + 1e-12


def test_project_inf_norm_rejects_nonpositive_radius():
    with pytest.raises(ValueError, match="radius"):
        project_inf_norm_(torch.ones(2, 2), 0.0)


def test_perron_frobenius_bounds_the_dense_eigenvalue():
    _, edge_index = _graph(30, 0.15)
    adj, abs_adj = normalized_adjacency(edge_index, 30, normalization="none", dtype=torch.float64)
    exact = torch.linalg.eigvalsh(adj.to_dense()).abs().max().item()
    estimate = perron_frobenius(abs_adj, max_iter=5000, tol=1e-12)
    assert exact - 1e-9 <= estimate <= exact + 1e-4


def test_perron_frobenius_of_symmetric_normalisation_is_one():
    data = make_chains(chain_length=6, chains_per_class=2)
    _, abs_adj = normalized_adjacency(data.edge_index, data.num_nodes, dtype=torch.float64)
    assert 1.0 - 1e-9 <= perron_frobenius(abs_adj, max_iter=5000, tol=1e-12) <= 1.0 + 1e-4


def test_normalized_adjacency_matches_gcn_propagation():
    x, edge_index = _graph()
    adj, _ = normalized_adjacency(edge_index, x.size(0), dtype=torch.float64)
    a = to_dense_adj(edge_index, max_num_nodes=x.size(0))[0].double() + torch.eye(x.size(0))
    d = a.sum(0).rsqrt()
    torch.testing.assert_close(adj.to_dense(), (d[:, None] * a.t() * d[None, :]))


def test_ignn_fixed_point_satisfies_the_equation():
    torch.manual_seed(0)
    x, edge_index = _graph()
    net = IGNN(3, 5, 2, deq=EXACT, bias=True).double()
    with torch.no_grad():
        net.layers[0].cell.weight.mul_(3.0)  # beyond the bound until projected
    net(x, edge_index)  # the first training forward projects W
    net.eval()
    with torch.no_grad():
        (logits,), info = net(x, edge_index)
        adj, _ = net.graph(edge_index, x.size(0), None, x.dtype)
        (z,), _ = net.layers[0](x, adj, net.deq)
    layer, dense = net.layers[0], adj.to_dense()
    fz = torch.relu(dense @ z @ layer.cell.weight.t() + layer.inject(x))
    torch.testing.assert_close(fz, z, atol=1e-10, rtol=0)
    torch.testing.assert_close(logits, net.readout(z))
    assert z.abs().max() > 0.1 and info["nstep"].shape == (1,)


def test_ignn_ift_gradient_matches_finite_differences():
    torch.manual_seed(0)
    x, edge_index = _graph(8, 0.4)
    y = torch.tensor([0, 1] * 4)
    deq = dict(EXACT, ift=True)
    net = IGNN(3, 4, 2, deq=deq, bias=True, kappa=0.5).double()
    net(x, edge_index)  # sets lambda_pf and projects W
    weight = net.layers[0].cell.weight

    def loss():
        (logits,), _ = net(x, edge_index)
        return torch.nn.functional.cross_entropy(logits, y)

    grad = torch.autograd.grad(loss(), weight)[0]
    numeric = torch.zeros_like(weight)
    eps = 1e-6
    with torch.no_grad():
        for idx in [(0, 0), (1, 2), (3, 1), (2, 3)]:
            weight[idx] += eps
            up = loss()
            weight[idx] -= 2 * eps
            down = loss()
            weight[idx] += eps
            numeric[idx] = (up - down) / (2 * eps)
    mask = numeric != 0
    torch.testing.assert_close(grad[mask], numeric[mask], atol=1e-7, rtol=1e-5)


def test_ignn_projection_keeps_well_posedness_after_steps():
    torch.manual_seed(0)
    data = make_chains(chain_length=8, chains_per_class=3)
    net = IGNN(2, 8, 2, deq={"f_max_iter": 30}, kappa=0.8)
    optimizer = torch.optim.SGD(net.parameters(), lr=5.0)
    bound = None
    for _ in range(3):
        optimizer.zero_grad()
        (logits,), _ = net(data.x, data.edge_index)
        torch.nn.functional.cross_entropy(logits, data.y).backward()
        optimizer.step()
        bound = 0.8 / float(net.lambda_pf)
        violated = net.layers[0].cell.weight.abs().sum(1).max() > bound
        net.project_()
        assert net.layers[0].cell.weight.abs().sum(1).max() <= bound + 1e-6
    assert violated, "the steps were too small to test the projection"
    assert 0.99 < float(net.lambda_pf) < 1.2


def test_ignn_projects_at_the_first_training_forward():
    x, edge_index = _graph()
    net = IGNN(3, 32, 2, deq={"f_max_iter": 5}, kappa=0.5).double()
    assert net.layers[0].cell.weight.abs().sum(1).max() > 0.5 / 1.0001
    net(x, edge_index)
    assert net.layers[0].cell.weight.abs().sum(1).max() <= 0.5 / float(net.lambda_pf) + 1e-9


def test_ignn_spectral_norm_clips_the_weight():
    x, edge_index = _graph()
    norm = {"norm_type": "spectral_norm", "norm_clip": True, "norm_clip_value": 0.7}
    net = IGNN(3, 6, 2, deq={"f_max_iter": 5}, norm=norm, kappa=None).double()
    with torch.no_grad():
        net.layers[0].cell.weight_scale.fill_(3.0)
    net.eval()
    net(x, edge_index)
    sigma = torch.linalg.matrix_norm(net.layers[0].cell.weight.detach(), ord=2)
    assert sigma <= 0.7 + 1e-3


def test_ignn_rejects_projection_with_a_norm():
    with pytest.raises(OptionError, match="kappa"):
        IGNN(3, 4, 2, norm={"norm_type": "weight_norm"}, kappa=0.9)
    with pytest.raises(OptionError, match="activation"):
        IGNN(3, 4, 2, activation="gelu")


def test_ignn_warm_start_saves_solver_steps():
    x, edge_index = _graph()
    deq = {"f_max_iter": 200, "f_tol": 1e-8}
    net = IGNN(3, 6, 2, deq=deq, bias=True, warm_start=True).double().eval()
    _, cold = net(x, edge_index)
    _, warm = net(x, edge_index)
    assert warm["nstep"].item() < cold["nstep"].item() / 4


def test_ignn_stacked_layers_and_pooling_shapes():
    x, edge_index = _graph()
    batch = torch.tensor([0] * 6 + [1] * 6)
    net = IGNN(3, 4, 5, deq={"f_max_iter": 10}, num_layers=3, pool="mean").double().eval()
    (logits,), info = net(x, edge_index, batch=batch)
    assert logits.shape == (2, 5)
    assert info["nstep"].shape == (3,)


def test_gcn_sees_only_its_depth_in_hops():
    data = make_chains(chain_length=7, chains_per_class=1)
    net = GCN(2, 8, 2, num_layers=2).eval()
    (base,), _ = net(data.x, data.edge_index)
    flipped = data.x.flip(1)  # swap every chain's class information
    (other,), _ = net(flipped, data.edge_index)
    far = data.position > 2
    torch.testing.assert_close(base[far], other[far])
    assert not torch.allclose(base[~far], other[~far])
