"""Passwords in URLs: kept out of everything the project writes or prints.

A password in the tracking URI or the Optuna storage (`http://alice:PW@host`, `postgresql://u:PW@host/db`)
is moved, before Hydra sees the command line, to the environment variable its library documents for it:
MLflow reads MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, PostgreSQL's libpq PGPASSWORD, MySQL's
client MYSQL_PWD. The URL keeps `***` in the password's place, so Hydra's logs and files, MLflow params,
tags and artifacts, the context handed to workers and every printed line show only the masked URL, and
workers started from this process (joblib, a local Ray) inherit the variable. A connection is made with
the URL without its password: the library takes it from the environment.

`redaction.mask` is the net behind that for text from elsewhere: a URL written into a YAML file, an error message,
a log record of a library.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit, urlunsplit

from mnist_exp.system.errors import ExperimentError
from mnist_exp.system.redaction import MASK, mask

URL_KEYS = ("mlflow.tracking_uri", "hydra.sweeper.storage")  # the config keys whose URLs may carry a password
_MAY_HOLD_PASSWORD = re.compile(r"://[^\s/]*@|pass(?:wor)?d=|pwd=", re.IGNORECASE)  # before the full masking

_masking = False


def take_password(url: str, key: str) -> str:
    """`url` with its password masked, the password now in the environment variable its library reads;
    ExperimentError for a scheme whose library reads none."""
    variables = _password_variables(url, key)
    os.environ.update(variables)
    return mask(url) if variables else url


def take_from_arguments(arguments: Sequence[str]) -> list[str]:
    """Command-line overrides with the password of each URL_KEYS value taken (see take_password);
    ExperimentError when two of them need one variable to hold two passwords."""
    taken, given = [], {}
    for argument in arguments:
        key, separator, value = argument.partition("=")
        name = key.lstrip("+~")
        if separator and name in URL_KEYS:
            for variable, password in _password_variables(value, name).items():
                if given.setdefault(variable, password) != password:
                    raise ExperimentError(f"{name}={mask(value)}: another URL already needs {variable} to hold "
                                          "another password; pass one of them through the environment instead")
            argument = f"{key}={take_password(value, name)}"
        taken.append(argument)
    return taken


def _password_variables(url: str, key: str) -> dict[str, str]:
    parts = urlsplit(url)
    if parts.password is None or parts.password == MASK:
        return {}
    scheme = parts.scheme.split("+", 1)[0].lower()
    if scheme in ("http", "https"):
        return {"MLFLOW_TRACKING_USERNAME": unquote(parts.username or ""),
                "MLFLOW_TRACKING_PASSWORD": unquote(parts.password)}
    if scheme in ("postgresql", "postgres"):
        return {"PGPASSWORD": unquote(parts.password)}
    if scheme in ("mysql", "mariadb"):
        return {"MYSQL_PWD": unquote(parts.password)}
    raise ExperimentError(
        f"{key}={mask(url)} holds a password, which would be recorded; put it where the {scheme} driver "
        "reads it (its environment or its own file) and leave it out of the URL"
    )


def connection_url(url: str) -> str:
    """The URL to connect with: no masked password (the library reads the real one from the environment);
    for HTTP no user either, which MLflow takes from MLFLOW_TRACKING_USERNAME."""
    parts = urlsplit(url)
    if parts.password != MASK:
        return url
    host = parts.netloc.rpartition("@")[2]
    if parts.scheme.lower() not in ("http", "https") and parts.username:
        host = f"{parts.username}@{host}"
    return urlunsplit(parts._replace(netloc=host))


def mask_log_records() -> None:
    """Every log record of this process, whoever logs it (Hydra, MLflow, Optuna, us), is masked."""
    global _masking
    if _masking:
        return
    make_record = logging.getLogRecordFactory()

    def masked_record(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: logging reports it when it is emitted, as it always did
            return record
        if _MAY_HOLD_PASSWORD.search(message):
            record.msg, record.args = mask(message), None
        return record

    logging.setLogRecordFactory(masked_record)
    _masking = True


