"""What a run starts with in MLflow: its params, its config.yaml and overrides.txt, its dataset inputs."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mnist_exp import config
from mnist_exp.data import Dataset
from mnist_exp.system.redaction import mask
from mnist_exp.tracking.store import Store, sqlite_store_lock

MAX_PARAM_LENGTH = 6000
PARAMS_PER_REQUEST = 100


def log_params(client, run_id: str, params: Mapping[str, Any]) -> None:
    """Params as MLflow stores them: strings of limited length, a limited number per request."""
    from mlflow.entities import Param

    items = [Param(key, mask(_param_value(value))[:MAX_PARAM_LENGTH]) for key, value in params.items()]
    for start in range(0, len(items), PARAMS_PER_REQUEST):
        client.log_batch(run_id, params=items[start:start + PARAMS_PER_REQUEST])


def log_config(client, run_id: str, cfg: DictConfig, overrides: Sequence[str]) -> None:
    """config.yaml (the composed config) and overrides.txt, as artifacts of the run."""
    client.log_text(run_id, mask(OmegaConf.to_yaml(OmegaConf.create(config.plain(cfg)))), "config.yaml")
    client.log_text(run_id, mask("\n".join(overrides) + "\n"), "overrides.txt")


def log_inputs(store: Store, run_id: str, cfg: DictConfig, dataset: Dataset, overrides: Sequence[str]) -> None:
    """What a run starts with: every config key and the dataset's description as params, config.yaml and
    overrides.txt, and the three splits as dataset inputs."""
    params: dict[str, Any] = config.flatten(cfg)
    params.update({
        "dataset.name": dataset.name,
        "dataset.source": dataset.source,
        "dataset.digest": dataset.digest,
        "dataset.train_examples": str(dataset.sizes["train"]),
        "dataset.val_examples": str(dataset.sizes["val"]),
        "dataset.test_examples": str(dataset.sizes["test"]),
        "dataset.fallback": "true" if dataset.fallback_reason else "false",
    })
    log_params(store.client, run_id, params)
    log_config(store.client, run_id, cfg, overrides)
    with sqlite_store_lock(store.uri):
        _log_dataset(store.client, run_id, dataset)


def _log_dataset(client, run_id: str, dataset: Dataset) -> None:
    import mlflow
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    from mnist_exp.system.workarounds import dataset_input_entity, retry_dataset_insert_race

    inputs = []
    for context, images, labels in (
        ("train", dataset.x_train, dataset.y_train),
        ("validation", dataset.x_val, dataset.y_val),
        ("test", dataset.x_test, dataset.y_test),
    ):
        with warnings.catch_warnings():
            # MLflow registers the local-file source under two schemes and warns that both match.
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple",
                                    category=UserWarning)
            entity = dataset_input_entity(mlflow.data.from_numpy(
                images, targets=labels, source=dataset.source, name=dataset.name,
                digest=dataset.split_digests[context],
            ))
        if entity is None:
            return
        inputs.append(DatasetInput(entity, [InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    retry_dataset_insert_race(lambda: client.log_inputs(run_id, datasets=inputs))


def _param_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (bool, list, type(None))) else str(value)
