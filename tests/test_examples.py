"""The NuX README, rewritten: its MultiscaleGLOW and its custom layers run and round-trip."""

import importlib.util
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp

EXAMPLES = pathlib.Path(__file__).parents[1] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_multiscale_glow():
    mod = load("readme_glow")
    flow, x, log_px, samples = mod.main(num_blocks=1, n_channels=8, batch=4)
    assert log_px.shape == (4,) and jnp.all(jnp.isfinite(log_px))
    assert samples.shape == (4, 32, 32, 3) and jnp.all(jnp.isfinite(samples))
    # the bijective trunk (everything between the dequantisation and the prior) round-trips to 1e-4
    trunk = flow[1:5]
    y = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=0.05, maxval=0.95)
    z, c = jax.vmap(trunk)(y)
    y_rec, c_rec = eqx.filter_jit(lambda f, z: jax.vmap(lambda v: f(v, True))(z))(trunk, z)
    assert jnp.allclose(y_rec, y, atol=1e-4)
    assert jnp.allclose(c_rec, c, rtol=1e-4)


def test_custom_layers_pass_check_flow():
    load("custom_layers").main()


def test_digits_surjective_trains_three_models_with_fit():
    results = load("digits_surjective").main(
        ["--steps", "3", "--n-blocks", "1", "--n-channels", "8", "--eval-every", "2"]
    )
    assert len(results) == 3
    for r in results.values():
        assert r["steps"] == 3 and r["best_step"] in (2, 3) and 0 < r["test"] < 20
