"""LFM2-VL image encoding (SigLIP2 vision tower + pixel unshuffle + projector): captionaura's C core vs PyTorch
(transformers' Siglip2VisionModel + Lfm2VlMultiModalProjector, the same weights, the same thread count),
measured side by side in one run. One 512x512 tile = 32x32 = 1024 patches -> 256 image tokens.

    python benchmarks/bench_vision.py [--threads 2] [--shapes tiny,450m] [--dtypes fp32,bf16] [--steps 3]
                                      [--no-torch] [--json out.json]

--dtypes bf16 encodes with bf16 weights on both sides (forward only): ours with ``VisionTower.to_dtype("bf16")``
(bf16 GEMMs, fp32 sums and every other op fp32), PyTorch with the tower and projector cast to bf16; each bf16
row is also set against PyTorch's fp32 forward, the anchor the issue names.

Needs torch (2.13.0 CPU) and transformers (>= 5) in the same environment for the PyTorch column. PyTorch runs
its default attention (SDPA); ours and PyTorch's runs alternate step by step and the best of --steps is kept.

The speed-of-light table sets the FLOPs of the products (weight GEMMs and attention) against the register-only
FMA peak measured in the same run (fp32 FMAs; vdpbf16ps for bf16): each side's share of it, and the best speed-up over PyTorch that any
implementation could reach on this machine.

Measured 2026-11-24 on the shared 2-core dev machine (load average 0.3-1.2), 450m shape, one 512x512 tile (1024
patches -> 256 tokens), features agree to 4.6e-6 (fp32):

| threads | weights | pass | captionaura (s) | PyTorch (s) | speed-up | best possible speed-up (speed of light) |
|---|---|---|---|---|---|---|
| 1 | fp32 | forward | 2.333 | 2.445 | 1.05x | 1.31x |
| 1 | fp32 | forward+backward | 6.933 | 7.575 | 1.09x | 1.36x |
| 1 | bf16 | forward | 1.359 | 1.469 | 1.08x (1.80x vs PyTorch fp32) | 1.57x |
| 2 | fp32 | forward | 1.212 | 1.270 | 1.05x | 1.36x |
| 2 | fp32 | forward+backward | 3.503 | 3.823 | 1.09x | 1.37x |
| 2 | bf16 | forward | 0.689 | 0.763 | 1.11x (1.84x vs PyTorch fp32) | 1.63x |

Both sides are bound by their products: our forward runs at 77-80% of the FMA peak (fp32), PyTorch's at 73-76%.
"""

from __future__ import annotations

import argparse
import json
import re
import time

import numpy as np

from bench_lfm2 import fma_peaks
from captionaura import _core
from captionaura.vision import PROJECTOR_PREFIX, VisionConfig, VisionTower

SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 projector_hidden_size=256, text_hidden_size=128),
    # LFM2-VL-450M: SigLIP2 base (768, 12 layers, 12 heads, 3072), projector 3072 -> 2560 -> 1024
    "450m": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 projector_hidden_size=2560, text_hidden_size=1024),
}


def best_time(fn, steps: int) -> float:
    fn()  # warm-up (allocates the activation arena)
    best = float("inf")
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def best_times_interleaved(fns: list, steps: int) -> list[float]:
    """Best of `steps` runs of each function, the functions alternating run by run, so that a change in the
    machine's load during the benchmark hits both sides alike (this machine is shared)."""
    for fn in fns:
        fn()  # warm-up
    best = [float("inf")] * len(fns)
    for _ in range(steps):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def product_flops(vt: VisionTower, patches: int) -> tuple[float, float]:
    """The FLOPs any exact implementation must spend on products in one encode (forward), and in a
    forward+backward that yields every weight gradient. Forward: the weight GEMMs, plus q·kᵀ and p·v of every
    layer run (2·n²·d each). Backward: the weight gradients (as many again as the weight GEMMs) and the input
    gradients (as many again, but for the patch embedding, whose input is the pixels), and the attention's four
    gradient products (twice its forward). Every other op is left out."""
    c = vt.config
    weights = patch_embedding = 0.0
    for name, w in vt.parameters().items():
        layer = re.search(r"encoder\.layers\.(\d+)\.", name)
        if w.ndim != 2 or "position_embedding" in name or (layer and int(layer.group(1)) >= c.num_layers_run):
            continue
        tokens = patches // c.downsample_factor ** 2 if name.startswith(PROJECTOR_PREFIX) else patches
        weights += 2.0 * tokens * w.size
        if "patch_embedding" in name:
            patch_embedding += 2.0 * tokens * w.size
    attention = c.num_layers_run * 4.0 * patches ** 2 * c.hidden_size
    return weights + attention, 3 * weights - patch_embedding + 3 * attention


def make_inputs(side: int, patch_dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = side * side
    pv = ((rng.integers(0, 256, size=(1, n, patch_dim)) / 255.0 - 0.5) / 0.5).astype(np.float32)
    return pv, np.array([[side, side]], np.int32), np.ones((1, n), np.int32)


def torch_side(cfg: VisionConfig, vt: VisionTower, pv, ss, mask, R, threads: int, dtype: str = "fp32"):
    import torch
    from transformers import Lfm2VlConfig, Siglip2VisionConfig, Siglip2VisionModel
    from transformers.models.lfm2_vl.modeling_lfm2_vl import Lfm2VlMultiModalProjector

    torch.set_num_threads(threads)
    d = cfg.to_dict()
    vcfg = Siglip2VisionConfig(**{k: v for k, v in d["vision_config"].items() if k != "model_type"})
    top = Lfm2VlConfig(vision_config=vcfg.to_dict(), text_config={"model_type": "lfm2", "hidden_size": cfg.text_hidden_size},
                       projector_hidden_size=cfg.projector_hidden_size, projector_use_layernorm=cfg.projector_use_layernorm,
                       projector_bias=cfg.projector_bias, downsample_factor=cfg.downsample_factor)
    tower = Siglip2VisionModel(vcfg).float().eval()
    proj = Lfm2VlMultiModalProjector(top).float().eval()
    tdtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    # the same weights as ours
    params = vt.parameters()
    with torch.no_grad():
        for name, p in tower.named_parameters():
            p.copy_(torch.from_numpy(params["model.vision_tower.vision_model." + name]))
        for name, p in proj.named_parameters():
            p.copy_(torch.from_numpy(params["model.multi_modal_projector." + name]))
    tower, proj = tower.to(tdtype), proj.to(tdtype)
    t_pv, t_ss, t_mask = torch.from_numpy(pv).to(tdtype), torch.from_numpy(ss).long(), torch.from_numpy(mask)

    def features():  # Lfm2VlModel.get_image_features for one tile
        h = tower(pixel_values=t_pv, spatial_shapes=t_ss, pixel_attention_mask=t_mask).last_hidden_state
        n = int(t_mask[0].sum())
        f = h[0, :n].reshape(1, int(t_ss[0, 0]), int(t_ss[0, 1]), -1)
        return proj(f).reshape(-1, cfg.text_hidden_size)

    def fwd():
        with torch.inference_mode():
            return features().float()

    t_R = torch.from_numpy(R)

    def fwd_bwd():
        tower.zero_grad(set_to_none=True)
        proj.zero_grad(set_to_none=True)
        (features() * t_R).sum().backward()

    return fwd, fwd_bwd, tower.config._attn_implementation


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", default="tiny,450m")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--side", type=int, default=32, help="patches per tile side (32 = one 512x512 tile)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    _core.set_num_threads(args.threads)
    results = []
    for shape in args.shapes.split(","):
        cfg = VisionConfig(**SHAPES[shape])
        torch_fp32_forward = None
        for dtype in args.dtypes.split(","):
            vt = VisionTower.from_config(cfg, seed=0).to_dtype(dtype)
            pv, ss, mask = make_inputs(args.side, cfg.patch_dim)
            feats = vt.encode(pv, ss, mask)
            R = np.random.default_rng(1).standard_normal(feats.shape).astype(np.float32)

            def ours_fwd():
                return vt.encode(pv, ss, mask)

            def ours_fwd_bwd():  # every parameter's gradient (an fp32 tower)
                vt.encode(pv, ss, mask, train=True)
                vt.backward(R)

            forward_flops, fwd_bwd_flops = product_flops(vt, args.side ** 2)
            row = {"shape": shape, "dtype": dtype, "patches": args.side ** 2, "tokens": int(feats.shape[0]),
                   "threads": args.threads, "forward_product_flops": forward_flops, "fwd_bwd_product_flops": fwd_bwd_flops}
            if args.no_torch:
                row["ours_forward_s"] = best_time(ours_fwd, args.steps)
                if dtype == "fp32":
                    row["ours_forward_backward_s"] = best_time(ours_fwd_bwd, args.steps)
            else:
                t_fwd, t_fwd_bwd, impl = torch_side(cfg, vt, pv, ss, mask, R, args.threads, dtype)
                diff = float(np.max(np.abs(t_fwd().numpy() - feats)))
                a, b = best_times_interleaved([ours_fwd, t_fwd], args.steps)
                row.update({"ours_forward_s": a, "torch_forward_s": b, "torch_attn": impl,
                            "max_abs_diff_vs_torch": diff, "feature_scale": float(np.abs(feats).max())})
                if dtype == "fp32":
                    torch_fp32_forward = b
                    c, d = best_times_interleaved([ours_fwd_bwd, t_fwd_bwd], args.steps)
                    row.update({"ours_forward_backward_s": c, "torch_forward_backward_s": d})
                row["torch_fp32_forward_s"] = torch_fp32_forward
            results.append(row)
            print(json.dumps(row), flush=True)

    print("\n| shape | weights | patches -> tokens | threads | pass | captionaura (s) | PyTorch, same dtype (s) "
          "| speed-up | vs PyTorch fp32 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for name, ok, tk in (("forward", "ours_forward_s", "torch_forward_s"),
                             ("forward+backward", "ours_forward_backward_s", "torch_forward_backward_s")):
            if ok not in r:
                continue
            t, t32 = r.get(tk), r.get("torch_fp32_forward_s") if name == "forward" else r.get(tk)
            cells = [f"{t:.3f}" if t else "-", f"{t / r[ok]:.2f}x" if t else "-", f"{t32 / r[ok]:.2f}x" if t32 else "-"]
            print(f"| {r['shape']} | {r['dtype']} | {r['patches']} -> {r['tokens']} | {r['threads']} | {name} | "
                  f"{r[ok]:.3f} | {' | '.join(cells)} |")
    print_speed_of_light(results, args.dtypes.split(","))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def print_speed_of_light(results: list[dict], dtypes: list[str]) -> None:
    """Each side's share of the register-only FMA peak measured now, and the best speed-up over PyTorch that any
    implementation could reach: PyTorch's time over the products' FLOPs at 100% of peak."""
    peaks = fma_peaks(dtypes)
    print("\nSpeed of light: the products' FLOPs (weights, attention) against the FMA peak of this run ("
          + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()) + ")")
    print("| shape | weights | pass | GFLOP | captionaura, % of peak | PyTorch, % of peak | best possible speed-up |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        if r["dtype"] not in peaks:
            continue
        for name, k in (("forward", "forward"), ("forward+backward", "forward_backward")):
            ours, theirs = r.get(f"ours_{k}_s"), r.get(f"torch_{k}_s")
            if ours is None:
                continue
            flops = r["forward_product_flops" if k == "forward" else "fwd_bwd_product_flops"]
            light = flops / (peaks[r["dtype"]] * 1e9)
            cells = [f"{light / theirs:.1%}", f"{theirs / light:.2f}x"] if theirs else ["-", "-"]
            r[f"best_possible_{k}_speedup"] = theirs / light if theirs else None
            print(f"| {r['shape']} | {r['dtype']} | {name} | {flops / 1e9:.1f} | {light / ours:.1%} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
