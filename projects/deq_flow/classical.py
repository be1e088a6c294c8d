"""Classical anchors on the real pairs: TV-L1 and iterative Lucas-Kanade from scikit-image.

Each method runs on the grey pair at full resolution and at half resolution (its flow upsampled
and rescaled back), and optionally at the model's working size; the end-point error is always on
the full-resolution ground truth, as for the model. Run times are process CPU seconds.

    python -m projects.deq_flow.classical                    # prints a table, writes JSON
    python -m projects.deq_flow.classical --out classical.json --long-side 320

References:
    Zach, Pock, Bischof. A Duality Based Approach for Realtime TV-L1 Optical Flow. DAGM 2007.
    Le Besnerais, Champagnat. Dense optical flow by iterative local window registration. ICIP 2005.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from .data import working_size
from .pairs import REAL_PAIRS, FlowPair, end_point_error, f1_all, load_real_pair, resize_flow

__all__ = ["METHODS", "classical_flow", "evaluate"]


def _tvl1(image1, image2):
    from skimage.registration import optical_flow_tvl1

    return optical_flow_tvl1(image1, image2)


def _ilk(image1, image2):
    from skimage.registration import optical_flow_ilk

    return optical_flow_ilk(image1, image2)


METHODS = {"tvl1": _tvl1, "ilk": _ilk}


def classical_flow(method: str, pair: FlowPair, size: tuple[int, int] | None = None):
    """A method's flow for ``pair`` computed at ``size`` (None: full), at full resolution.

    Returns:
        tuple[Tensor, float]: ``(2, H, W)`` flow (x, y) and the CPU seconds it took.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid choices: {sorted(METHODS)}")
    images = torch.stack([pair.image1, pair.image2]).mean(1, keepdim=True)
    full = tuple(pair.flow.shape[-2:])
    if size is not None and size != full:
        images = torch.nn.functional.interpolate(images, size=size, mode="area")
    start = time.process_time()
    rows_cols = METHODS[method](images[0, 0].numpy(), images[1, 0].numpy())
    seconds = time.process_time() - start
    flow = torch.from_numpy(rows_cols[::-1].copy()).float()[None]  # (v, u) -> (u, v)
    if flow.shape[-2:] != full:
        flow = resize_flow(flow, full)
    return flow[0], seconds


def evaluate(names=REAL_PAIRS, long_side: int | None = None) -> dict:
    """EPE, F1-all and CPU seconds of every method on every pair at full and half resolution."""
    results = {}
    for name in names:
        pair = load_real_pair(name)
        h, w = pair.flow.shape[-2:]
        scales = {"full": None, "half": (h // 2, w // 2)}
        if long_side:
            scales[f"long{long_side}"] = working_size(h, w, long_side)
        for method in METHODS:
            for label, size in scales.items():
                flow, seconds = classical_flow(method, pair, size)
                results[f"{name}/{method}/{label}"] = {
                    "epe": float(end_point_error(flow, pair.flow, pair.valid)),
                    "f1": float(f1_all(flow, pair.flow, pair.valid)),
                    "cpu_s": seconds,
                }
                print(name, method, label, results[f"{name}/{method}/{label}"], flush=True)
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="*", default=list(REAL_PAIRS), choices=REAL_PAIRS)
    parser.add_argument("--long-side", type=int, default=None, help="also run at this size")
    parser.add_argument("--out", default="classical.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = evaluate(args.pairs, args.long_side)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
