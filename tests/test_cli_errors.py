"""`python -m mnist_exp` refusing bad input, run in this process (cli_in_process): one line, exit 2, no run.
test_cli.py runs two of these cases through a real process."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer=foo", "error: optimizer/foo does not exist; choose optimizer from: adam, adamw, rmsprop, sgd"),
        ("epochs=abc", "error: epochs='abc' is invalid: expected an integer from 1 to 100000"),
        ("epochs=0", "error: epochs=0 is invalid"),
        ("batch_size=-1", "error: batch_size=-1 is invalid"),
        ("optimizer.lr=0", "error: optimizer.lr=0 is invalid: expected a number in (0, 10]"),
        ("model.dropout=1.5", "error: model.dropout=1.5 is invalid"),
        ("model.hidden_units=[]", "error: model.hidden_units=[] is invalid"),
        ("model.hidden_units=[64,-1]", "error: model.hidden_units=[64, -1] is invalid"),
        ("model.hidden_units=[100000000]", "error: model.hidden_units=[100000000] is invalid"),
        ("optimizer.lr=abc", "error: optimizer.lr='abc' is invalid"),
        ("mlflow.tracking_uri=foo://bar", "error: mlflow.tracking_uri='foo://bar' is invalid"),
        ("model.hidden_units=[1,", "error: no viable alternative at input '[1,'"),
        ("nosuchkey=1", "error: Could not override 'nosuchkey'."),
        ("data.path=/no/such/mnist.npz", "error: data.path=/no/such/mnist.npz does not exist"),
        ("mlflow.tracking_uri=http://127.0.0.1:9", "error: cannot reach the MLflow tracking server at http://127.0.0.1:9"),
        ("mlflow.tracking_uri=http://alice:S3cret@127.0.0.1:9",
         "error: cannot reach the MLflow tracking server at http://alice:***@127.0.0.1:9"),
        # Hydra's flag unpickles the file it is given: whoever wrote the file runs code here.
        ("--experimental-rerun=/tmp/config.pickle", "error: --experimental-rerun is disabled"),
    ],
)
@pytest.mark.fresh_store
def test_bad_input_is_one_line_exit_2_and_no_run(tmp_path, cli_in_process, override, message):
    code, _, stderr = cli_in_process(override, runs_dir=tmp_path / "runs")
    assert code == 2
    assert stderr.startswith(message), stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert not (tmp_path / "runs" / "mlflow.db").exists()


