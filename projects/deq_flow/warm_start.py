"""Fixed points reused across video frames: solver steps per frame, warm vs cold.

On a video the flow changes little from one frame pair to the next, so the previous pair's
equilibrium flow (at 1/8 resolution) is a good starting point for the next solve (Bai et al.,
CVPR 2022, Sec. 4). For each consecutive pair of ``tree.avi`` (OpenCV samples, 320x240, no
ground truth) this solves twice to the same relative residual: from zero flow (cold) and from
the previous pair's fixed point (warm), and reports the solver steps each needed.

    python -m projects.deq_flow.warm_start CKPT [--frames 30] [--tol 1e-3] [--max-iter 64]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

__all__ = ["load_net", "read_video", "warm_vs_cold"]


def read_video(path: str | Path, max_frames: int | None = None) -> torch.Tensor:
    """The frames of a video as ``(T, 3, H, W)`` floats in [0, 1] (PyAV)."""
    import av

    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            frames.append(frame.to_ndarray(format="rgb24"))
            if max_frames and len(frames) >= max_frames:
                break
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0


@torch.no_grad()
def warm_vs_cold(net, frames: torch.Tensor, tol: float = 1e-3, max_iter: int = 64) -> dict:
    """Solver steps per frame pair from a cold and from a warm start, to relative residual ``tol``.

    Args:
        net (DEQFlow): A trained net (evaluation mode is set here).
        frames (Tensor): ``(T, 3, H, W)`` frames, ``H, W`` multiples of 8.
        tol (float, optional): Relative residual both solves stop at. Default 1e-3.
        max_iter (int, optional): Most solver steps. Default 64.

    Returns:
        dict: Per-pair step counts and residuals, and their means.
    """
    net.eval()
    options = {"max_iter": max_iter, "tol": tol, "stop_mode": "rel"}
    cold_steps, warm_steps, cold_res, warm_res = [], [], [], []
    previous = None
    for t in range(len(frames) - 1):
        pair = frames[t : t + 1], frames[t + 1 : t + 2]
        _, cold = net(*pair, solver_kwargs=options)
        _, warm = net(*pair, flow_init=previous, solver_kwargs=options)
        cold_steps.append(float(cold["nstep"].mean()))
        cold_res.append(float(cold["rel_lowest"].mean()))
        if previous is not None:
            warm_steps.append(float(warm["nstep"].mean()))
            warm_res.append(float(warm["rel_lowest"].mean()))
        previous = warm["flow_low"]
    return {
        "cold_steps": cold_steps,
        "warm_steps": warm_steps,
        "cold_mean": float(np.mean(cold_steps[1:])),
        "warm_mean": float(np.mean(warm_steps)),
        "cold_residual": float(np.mean(cold_res[1:])),
        "warm_residual": float(np.mean(warm_res)),
    }


def load_net(ckpt: str | Path):
    """The net of a run's checkpoint, built from the run's saved Hydra config."""
    import hydra
    from omegaconf import OmegaConf

    ckpt = Path(ckpt)
    config = ckpt.parents[1] / ".hydra" / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{config} not found: give a checkpoint inside a run folder")
    net = hydra.utils.instantiate(OmegaConf.load(config).model.net)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
    return net


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="a checkpoint of python train.py project=deq_flow")
    parser.add_argument("--video", default=None, help="default: the OpenCV samples' tree.avi")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--max-iter", type=int, default=64)
    parser.add_argument("--out", default="warm_start.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.video is None:
        from deqzoo.data.sources import require

        args.video = require("opencv_samples") / "tree.avi"
    frames = read_video(args.video, args.frames)
    h, w = frames.shape[-2:]
    frames = frames[..., : h // 8 * 8, : w // 8 * 8]
    result = warm_vs_cold(load_net(args.ckpt), frames, args.tol, args.max_iter)
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("steps")}, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
