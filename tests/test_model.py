"""The model and optimizer a config describes."""

from __future__ import annotations

import pytest

from mnist_exp.config import OPTIMIZERS
from mnist_exp.config.model_keys import CnnSpec, MlpSpec
from mnist_exp.system.errors import ExperimentError
from mnist_exp.system.keras_backend import import_keras
from mnist_exp.training.model import (
    build_cnn,
    build_mlp,
    build_model,
    build_optimizer,
    learning_rate_schedule,
    model_size,
)
from tests.conftest import CONF_DIR

keras = import_keras()


def test_default_is_dense_512_relu_then_dense_10_softmax():
    model = build_mlp(MlpSpec((512,), "relu", 0.0))
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [(d.units, d.activation.__name__) for d in dense] == [(512, "relu"), (10, "softmax")]
    assert [type(layer).__name__ for layer in model.layers] == ["Rescaling", "Dense", "Dense"]
    assert model.input_shape == (None, 784) and model.output_shape == (None, 10)
    assert model.count_params() == 784 * 512 + 512 + 512 * 10 + 10


def test_widths_activation_and_dropout():
    model = build_mlp(MlpSpec((256, 128), "tanh", 0.25), num_classes=10)
    kinds = [(type(layer).__name__, getattr(layer, "units", getattr(layer, "rate", None))) for layer in model.layers]
    assert kinds == [("Rescaling", None), ("Dense", 256), ("Dropout", 0.25), ("Dense", 128), ("Dropout", 0.25),
                     ("Dense", 10)]
    assert model.layers[1].activation.__name__ == "tanh"


def test_pixels_are_scaled_to_unit_range_inside_the_model():
    import numpy as np

    model = build_mlp(MlpSpec((4,), "relu", 0.0))
    scale = keras.Model(model.inputs, model.layers[0].output)
    scaled = scale.predict(np.array([[0] * 783 + [255]], dtype=np.uint8), verbose=0)
    assert scaled.dtype == np.float32 and scaled.min() == 0.0 and scaled.max() == 1.0


CNN = CnnSpec(filters=(32, 64), kernel_size=3, pooling="max", dense_units=(128,), activation="relu", dropout=0.0,
              batch_norm=False)


def test_the_default_cnn_takes_the_mlps_flat_uint8_pixels_and_reshapes_and_scales_them_inside():
    import numpy as np

    model = build_model(CNN, input_dim=784, num_classes=10)
    assert model.input_shape == (None, 784) and model.inputs[0].dtype == "uint8" and model.output_shape == (None, 10)
    assert [type(layer).__name__ for layer in model.layers] == [
        "Reshape", "Rescaling", "Conv2D", "Activation", "MaxPooling2D", "Conv2D", "Activation", "MaxPooling2D",
        "Flatten", "Dense", "Dense"]
    image = keras.Model(model.inputs, model.get_layer("scale").output)
    pixels = np.zeros((1, 784), dtype=np.uint8)
    pixels[0, 28 * 2 + 5] = 255  # row 2, column 5
    scaled = image.predict(pixels, verbose=0)
    assert scaled.shape == (1, 28, 28, 1) and scaled[0, 2, 5, 0] == 1.0 and scaled.sum() == 1.0
    # 28 -> 14 -> 7 after two poolings: 7 * 7 * 64 features reach the dense layer.
    assert model.get_layer("hidden_1").kernel.shape == (7 * 7 * 64, 128)


def test_cnn_options_batch_norm_average_pooling_dropout_and_no_dense_layer():
    model = build_cnn(CnnSpec((8,) * 6, 5, "average", (), "gelu", 0.25, True), input_dim=16 * 16, num_classes=3)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("BatchNormalization") == 6 and kinds.count("Dropout") == 6 and kinds.count("Dense") == 1
    # Pooling halves 16 -> 8 -> 4 -> 2 -> 1, then stops: a 1x1 map is not pooled again.
    assert kinds.count("AveragePooling2D") == 4 and model.get_layer("flatten").output.shape == (None, 8)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert all(conv.kernel_size == (5, 5) and not conv.use_bias for conv in convs)
    assert model.get_layer("conv_1").kernel.shape == (5, 5, 1, 8)


def test_a_cnn_without_pooling_keeps_the_full_map():
    model = build_cnn(CnnSpec((4,), 3, "none", (16,), "relu", 0.0, False))
    assert model.get_layer("hidden_1").kernel.shape == (28 * 28 * 4, 16)
    assert not any("Pooling" in type(layer).__name__ for layer in model.layers)


def test_a_cnn_needs_square_images():
    with pytest.raises(ExperimentError, match="model=cnn needs square images; these have 120 pixels"):
        build_model(CNN, input_dim=120, num_classes=10)


def test_size_of_the_default_cnn():
    size = model_size(build_model(CNN, input_dim=784, num_classes=10))
    conv1, conv2 = 3 * 3 * 1 * 32, 3 * 3 * 32 * 64
    dense1, dense2 = 7 * 7 * 64 * 128, 128 * 10
    assert size == {
        "parameters": conv1 + 32 + conv2 + 64 + dense1 + 128 + dense2 + 10,
        "macs_per_example": conv1 * 28 * 28 + conv2 * 14 * 14 + dense1 + dense2,
    }


def test_build_model_takes_the_checked_config_group_as_its_schema(make_cfg):
    from mnist_exp.config import plain
    from mnist_exp.config.model_keys import model_spec

    for overrides, kind in ((["model.hidden_units=[8]"], MlpSpec), (["model=cnn", "model.filters=[4]"], CnnSpec)):
        cfg = make_cfg(*overrides)
        spec = model_spec(cfg.model)  # a ListConfig becomes a tuple, as a list does
        assert type(spec) is kind and spec == model_spec(plain(cfg)["model"])
        assert build_model(spec, input_dim=784, num_classes=10).name == kind.name


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_each_models_keys_are_its_yaml_and_its_schema_and_nothing_else(name):
    """The YAML gives every key of the schema its default, and has no key the schema lacks."""
    from dataclasses import fields

    import yaml

    from mnist_exp.config.model_keys import MODEL_SPECS

    yaml_keys = set(yaml.safe_load((CONF_DIR / "model" / f"{name}.yaml").read_text()))
    assert yaml_keys == {"name", *(key.name for key in fields(MODEL_SPECS[name]))}


def test_size_of_the_default_mlp_counts_weights_and_biases_and_one_multiply_add_per_weight():
    assert model_size(build_mlp(MlpSpec((512,), "relu", 0.0))) == {
        "parameters": 784 * 512 + 512 + 512 * 10 + 10,
        "macs_per_example": 784 * 512 + 512 * 10,
    }


def test_size_of_a_two_hidden_layer_mlp_counts_nothing_for_scaling_and_dropout():
    assert model_size(build_mlp(MlpSpec((256, 128), "tanh", 0.25), input_dim=100, num_classes=5)) == {
        "parameters": 100 * 256 + 256 + 256 * 128 + 128 + 128 * 5 + 5,
        "macs_per_example": 100 * 256 + 256 * 128 + 128 * 5,
    }


def test_size_of_a_convolutional_model_counts_every_output_position():
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(8, 3),  # -> 26x26x8
        keras.layers.MaxPooling2D(2),  # -> 13x13x8
        keras.layers.DepthwiseConv2D(3, depth_multiplier=2),  # -> 11x11x16
        keras.layers.SeparableConv2D(8, 3, padding="same"),  # -> 11x11x8
        keras.layers.Conv2D(4, 3, strides=2, padding="same", groups=2),  # -> 6x6x4, 4 input channels per group
        keras.layers.BatchNormalization(),  # gamma and beta train, the moving mean and variance do not
        keras.layers.Flatten(),  # -> 144
        keras.layers.Dense(10),
    ])
    parameters = [3 * 3 * 1 * 8 + 8, 3 * 3 * 8 * 2 + 16, 3 * 3 * 16 + 16 * 8 + 8, 3 * 3 * 4 * 4 + 4, 4 + 4,
                  144 * 10 + 10]
    macs = [3 * 3 * 1 * 8 * 26 * 26, 3 * 3 * 8 * 2 * 11 * 11, (3 * 3 * 16 + 16 * 8) * 11 * 11, 3 * 3 * 4 * 4 * 6 * 6,
            144 * 10]
    assert model_size(model) == {"parameters": sum(parameters), "macs_per_example": sum(macs)}
    assert model.count_params() == sum(parameters) + 4 + 4, "the moving statistics are weights, not parameters"


def test_size_looks_into_nested_models_finds_channels_first_maps_and_leaves_frozen_weights_out():
    features = keras.Sequential([keras.layers.Conv2D(8, 3, data_format="channels_first")])  # -> 8x26x26
    pixels = keras.Input((1, 28, 28))
    model = keras.Model(pixels, keras.layers.Dense(10)(keras.layers.Flatten()(features(pixels))))
    macs = 3 * 3 * 1 * 8 * 26 * 26 + 8 * 26 * 26 * 10
    assert model_size(model) == {"parameters": 3 * 3 * 8 + 8 + 8 * 26 * 26 * 10 + 10, "macs_per_example": macs}
    features.trainable = False
    assert model_size(model) == {"parameters": 8 * 26 * 26 * 10 + 10, "macs_per_example": macs}


@pytest.mark.parametrize(
    ("settings", "kind", "expected"),
    [
        ({"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True}, "SGD", {"momentum": 0.9, "nesterov": True}),
        ({"name": "rmsprop", "lr": 0.001, "rho": 0.8, "momentum": 0.0, "epsilon": 1e-7}, "RMSprop", {"rho": 0.8}),
        ({"name": "adam", "lr": 0.002, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-7, "amsgrad": True},
         "Adam", {"beta_1": 0.8, "amsgrad": True}),
        ({"name": "adamw", "lr": 0.001, "weight_decay": 0.01, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7,
          "amsgrad": False}, "AdamW", {"weight_decay": 0.01}),
    ],
)
def test_optimizer_from_config(settings, kind, expected):
    optimizer = build_optimizer(settings)
    config = optimizer.get_config()
    assert type(optimizer).__name__ == kind
    assert config["learning_rate"] == pytest.approx(settings["lr"])
    for key, value in expected.items():
        assert config[key] == pytest.approx(value)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_registered_optimizer_builds_from_a_name_and_a_learning_rate(name):
    optimizer = build_optimizer({"name": name, "lr": 0.01})
    assert type(optimizer).__name__ == OPTIMIZERS[name]
    assert optimizer.get_config()["learning_rate"] == pytest.approx(0.01)


def test_a_key_the_optimizer_does_not_take_names_the_key_and_the_class():
    with pytest.raises(ExperimentError) as caught:
        build_optimizer({"name": "adam", "lr": 0.001, "rho": 0.9})
    message = str(caught.value)
    assert message.startswith("optimizer.rho is not a known key of keras.optimizers.Adam; it takes lr, beta_1, ")
    assert "\n" not in message


def test_a_value_keras_rejects_is_one_line_naming_the_class():
    with pytest.raises(ExperimentError, match=r"^optimizer=sgd: keras.optimizers.SGD rejects these settings: "):
        build_optimizer({"name": "sgd", "lr": 0.01, "momentum": 1.5})


def test_learning_rate_schedules_over_the_whole_training():
    assert learning_rate_schedule("constant", 0.01, 100) is None
    cosine = learning_rate_schedule("cosine", 0.01, 100)
    assert [round(float(cosine(step)), 6) for step in (0, 50, 100)] == [0.01, 0.005, 0.0]
    cycle = learning_rate_schedule("one_cycle", 0.01, 100)
    assert [round(float(cycle(step)), 6) for step in (0, 30, 65, 100)] == [0.0004, 0.01, 0.005, 0.0]
    optimizer = build_optimizer({"name": "adam", "lr": 0.01}, cycle)
    assert float(optimizer.learning_rate) == pytest.approx(0.0004)
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'linear'"):  # never one_cycle by default
        learning_rate_schedule("linear", 0.01, 100)


def test_every_model_the_config_accepts_is_built_and_every_built_model_is_accepted():
    from mnist_exp.config.model_keys import MODEL_SPECS
    from mnist_exp.training.model import MODELS

    assert set(MODELS) == set(MODEL_SPECS)
