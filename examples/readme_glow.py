"""The NuX README's multiscale GLOW, written as the README writes it, in nux_eqx.

    python examples/readme_glow.py

Only the calls change: layers are pytrees, `init` is a pure function, one example per
call with `jax.vmap` for batches.
"""

import equinox as eqx
import jax
import jax.numpy as jnp

import nux_eqx as nux


def multi_scale(flow, existing_flow):
    # This is implemented in nux_eqx as nux.multi_scale
    return nux.sequential(flow, nux.Squeeze(), nux.factored(existing_flow, nux.Identity()), nux.UnSqueeze())


def GLOWBlock(n_channels=512):
    return nux.sequential(nux.ActNorm(), nux.OnebyOneConv(), nux.Coupling(n_channels=n_channels))


def GLOW(num_blocks=4, n_channels=512):
    layers = [GLOWBlock(n_channels) for _ in range(num_blocks)]
    return nux.sequential(*layers)


def MultiscaleGLOW(quantize_bits=3, num_blocks=4, n_channels=512):
    flow = nux.Identity()
    flow = multi_scale(GLOW(num_blocks, n_channels), flow)
    flow = multi_scale(GLOW(num_blocks, n_channels), flow)
    flow = multi_scale(GLOW(num_blocks, n_channels), flow)
    flow = multi_scale(GLOW(num_blocks, n_channels), flow)

    flow = nux.sequential(
        nux.UniformDequantization(scale=2**quantize_bits),
        nux.Logit(),
        nux.Squeeze(),  # So that the channel is divisible by 2
        flow,
        nux.Flatten(),
        nux.AffineGaussianPriorDiagCov(out_dim=128),  # Use a low dimensional prior for best results!
    )
    return flow


def main(num_blocks=4, n_channels=512, batch=64):
    key = jax.random.key(0)
    flow = MultiscaleGLOW(num_blocks=num_blocks, n_channels=n_channels)
    # NuX: inputs = {'x': jnp.zeros(64, 32, 32, 3)}; outputs, flow = flow_init_fun(key, inputs, batched=True)
    x = jnp.floor(jax.random.uniform(key, (batch, 32, 32, 3)) * 8)  # 3-bit dummy images
    flow = nux.init(flow, x, key=key)

    keys = jax.random.split(key, batch)
    log_px = eqx.filter_jit(lambda f, x, k: jax.vmap(lambda a, b: nux.log_prob(f, a, key=b))(x, k))(
        flow, x, keys
    )
    z, _ = jax.vmap(lambda a, b: flow(a, key=b))(x, keys)
    x_rec, _ = jax.vmap(lambda v: flow(v, reverse=True))(z)
    samples, log_q = jax.vmap(lambda k: nux.sample(flow, k))(jax.random.split(key, 4))
    print(f"log p(x): {log_px[:4]}\nlatent {z.shape}, reconstruction {x_rec.shape}, samples {samples.shape}")
    return flow, x, log_px, samples


if __name__ == "__main__":
    main(num_blocks=1, n_channels=32, batch=8)
