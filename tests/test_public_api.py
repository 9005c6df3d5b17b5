"""The public names of `import jaxcnn` that the model core provides resolve and work."""

import subprocess
import sys

import pytest

import jaxcnn

CORE_NAMES = [
    "ModelSpec",
    "LayerSpec",
    "ModelConfig",
    "RunConfig",
    "SpecError",
    "JaxcnnError",
    "load_run_config",
    "infer",
    "summarize",
    "preset",
    "load_spec",
    "build_model",
    "features",
    "set_kernels",
    "PRESETS",
]


@pytest.mark.parametrize("name", CORE_NAMES)
def test_core_names_resolve(name):
    assert name in jaxcnn.__all__
    assert getattr(jaxcnn, name) is not None


def test_public_workflow():
    spec = jaxcnn.load_spec("keras_mnist")
    assert isinstance(spec, jaxcnn.ModelSpec)
    assert spec == jaxcnn.preset("keras_mnist")
    assert jaxcnn.summarize(spec).total_params == 93_322
    assert jaxcnn.infer(spec).output_shape == (10,)
    assert set(jaxcnn.PRESETS) >= {
        "keras_mnist",
        "lenet5",
        "vgg_cifar",
        "resnet_cifar",
        "digits_cnn",
    }
    with pytest.raises(jaxcnn.SpecError):
        jaxcnn.preset("nope")
    model = jaxcnn.build_model(jaxcnn.preset("digits_cnn"), seed=0)
    model.eval()
    import jax.numpy as jnp

    assert model(jnp.zeros((1, 8, 8, 1))).shape == (1, 10)


def test_unknown_attribute():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        jaxcnn.nope  # noqa: B018


def test_import_is_light():
    code = "import sys, jaxcnn; jaxcnn.summarize(jaxcnn.preset('vgg_cifar')); print('jax' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
