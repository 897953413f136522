"""`make demo`: the engine end to end on tiny random-weight checkpoints (no download needed).

Writes a ComfyUI-style scaled-fp8 DiT file and an official-style VAE .pth into a temp folder, runs `wan inspect` on
both, loads them through the public engine API, runs one DiT forward and a streaming VAE round trip of a synthetic
17-frame clip, and prints what happened. Real weights: `wan download` (coming with the CLI issue).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from wan_cli.engine import WanDiTConfig, WanVAEConfig, load_transformer, load_vae
from wan_cli.engine.transformer import build_transformer, init_random_
from wan_cli.engine.vae import WanVAE


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="wan-demo-"))
    cfg = WanDiTConfig("t2v", dim=256, ffn_dim=512, num_heads=2, num_layers=4)
    dit = init_random_(build_transformer(cfg), seed=0)
    state: dict[str, torch.Tensor] = {}
    for k, v in dit.state_dict().items():  # ComfyUI scaled fp8: 2-D weights as e4m3 + a per-tensor scale
        if k.endswith(".weight") and v.ndim == 2:
            scale = v.abs().max() / 448
            state[f"model.diffusion_model.{k}"] = (v / scale).to(torch.float8_e4m3fn)
            state[f"model.diffusion_model.{k.removesuffix('.weight')}.scale_weight"] = scale.reshape(())
        else:
            state[f"model.diffusion_model.{k}"] = v.to(torch.bfloat16).contiguous()
    state["model.diffusion_model.scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    dit_path = tmp / "tiny_t2v_fp8_scaled.safetensors"
    save_file(state, str(dit_path))
    torch.manual_seed(0)
    vae_path = tmp / "Wan2.1_VAE.pth"
    torch.save(WanVAE(WanVAEConfig(dim=16)).state_dict(), vae_path)

    for p in (dit_path, vae_path):
        subprocess.run([sys.executable, "-m", "wan_cli", "inspect", str(p)], check=True)

    model = load_transformer(dit_path)
    x = torch.randn(1, 16, 5, 30, 52)  # 17 frames of 416×240 in latent space
    t0 = time.perf_counter()
    with torch.no_grad():
        v = model(x, torch.tensor([999]), torch.randn(1, 20, 4096))
    print(f"DiT forward {tuple(x.shape)} → velocity {tuple(v.shape)} in {time.perf_counter() - t0:.2f} s")

    vae = load_vae(vae_path)
    frames = torch.linspace(-1, 1, 128)[None, None, None, :, None].expand(1, 3, 17, 128, 208).contiguous()
    t0 = time.perf_counter()
    enc = vae.stream_encoder()
    latents = [lat for i in range(0, 17, 4) for lat in enc.push(frames[:, :, i : i + 4])]
    enc.close()
    dec = vae.stream_decoder()
    out = [f for lat in latents for f in dec.push(lat)]
    n = sum(f.shape[2] for f in out)
    print(f"VAE round trip: 17 frames → {len(latents)} latent frames → {n} frames in {time.perf_counter() - t0:.2f} s")
    print(f"files left in {tmp}")


if __name__ == "__main__":
    main()
