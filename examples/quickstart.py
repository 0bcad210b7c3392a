"""The NuX README's quickstart, in nux_eqx.

    python examples/quickstart.py

NuX:  init_fun = nux.sequential(nux.Coupling(), nux.ActNorm(), nux.UnitGaussianPrior())
      _, flow = init_fun(key, {'x': x_train}, batched=True)
      outputs, _ = flow.apply(flow.params, flow.state, {'x': x_test})
"""

import jax
import jax.numpy as jnp

import nux_eqx as nux


def main(x_train=None, x_test=None, key=None):
    key = jax.random.key(0) if key is None else key
    if x_train is None:
        x_train, x_test = jax.random.normal(key, (2, 100, 4))

    # Build a simple normalizing flow: layers are written without shapes.
    flow = nux.sequential(nux.Coupling(), nux.ActNorm(), nux.UnitGaussianPrior())

    # Data-dependent initialisation: a pure function that returns a NEW flow.
    flow = nux.init(flow, x_train, key=key)

    # A flow takes ONE example; batch with jax.vmap.
    z, log_likelihood = jax.vmap(flow)(x_test)

    # Check the reconstructions.
    reconst, _ = jax.vmap(lambda z: flow(z, reverse=True))(z)
    assert jnp.allclose(x_test, reconst, atol=1e-5), "reconstruction failed"
    assert jnp.all(jnp.isfinite(log_likelihood))

    # Draw samples and their log-densities.
    samples, log_q = jax.vmap(lambda k: nux.sample(flow, k))(jax.random.split(key, 5))
    print(f"mean log-likelihood {float(jnp.mean(log_likelihood)):.3f}; samples {samples.shape}")
    return flow, z, log_likelihood, reconst


if __name__ == "__main__":
    main()
    # The README's dummy dataset: constant ones (ActNorm sees zero variance).
    x_train, x_test = jnp.ones((2, 100, 4))
    main(x_train, x_test)
