"""The training-job table: status guards (a Stop racing a job's own end) and survival across connections."""

from __future__ import annotations

from streamhost.platform.training_store import TrainingJobStore


def test_guarded_updates_and_reopen(tmp_path):
    db = tmp_path / "state.db"
    store = TrainingJobStore(db)
    assert store.insert("Job-1", "arn:x", {"RoleArn": "r"}, {"lora_r": 8}, "file:///out/job-1/output/model.tar.gz", [])
    assert not store.insert("job-1", "arn:y", {}, {}, "x", [])  # names are case-insensitive, as in ARNs
    assert store.update("job-1", only_from=("InProgress",), status="Stopping", secondary_status="Stopping")
    # The trainer finished at the same moment: a guarded update from InProgress no longer applies.
    assert not store.update("job-1", only_from=("InProgress",), status="Completed")
    assert store.update(
        "job-1", only_from=("Stopping",), status="Stopped", metrics=[{"MetricName": "steps", "Value": 3.0}]
    )
    store.close()
    record = TrainingJobStore(db).get("JOB-1")
    assert record is not None and record.status == "Stopped" and record.name == "Job-1"
    assert record.hyperparameters == {"lora_r": 8} and record.metrics[0]["Value"] == 3.0
