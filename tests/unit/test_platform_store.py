"""The platform store: records survive a reopen, names are case-insensitive, transitions are atomic."""

from __future__ import annotations

from streamhost.platform.store import Store


def test_records_survive_reopen(tmp_path):
    db = tmp_path / "s.db"
    store = Store(db)
    assert store.insert_model("m", "arn:m", {"PrimaryContainer": {"Image": "x"}}, eula_required=True)
    assert store.insert_config("c", "arn:c", {"ProductionVariants": []})
    assert store.insert_endpoint("e", "arn:e", "c", {"config_name": "c"})
    store.close()
    again = Store(db)
    assert again.get_model("m").spec == {"PrimaryContainer": {"Image": "x"}}
    assert again.get_model("m").eula_required is True
    assert again.get_config("c").name == "c"
    endpoint = again.get_endpoint("e")
    assert (endpoint.status, endpoint.config_name, endpoint.deployment) == ("Creating", "c", {"config_name": "c"})


def test_names_are_unique_ignoring_case(tmp_path):
    store = Store(tmp_path / "s.db")
    assert store.insert_model("MyModel", "arn", {})
    assert not store.insert_model("mymodel", "arn", {})
    assert store.get_model("MYMODEL").name == "MyModel"
    assert store.delete_model("mymodel")
    assert store.get_model("MyModel") is None


def test_transition_only_from_allowed_states(tmp_path):
    store = Store(tmp_path / "s.db")
    store.insert_endpoint("e", "arn", "c", {})
    assert not store.transition("e", ["InService"], "Updating")
    assert store.get_endpoint("e").status == "Creating"
    assert store.transition("e", ["Creating"], "Failed", failure_reason="boom")
    record = store.get_endpoint("e")
    assert (record.status, record.failure_reason) == ("Failed", "boom")
    assert store.transition("e", None, "Deleting")
    assert not store.transition("missing", None, "Deleting")


def test_transition_sets_snapshots_atomically(tmp_path):
    store = Store(tmp_path / "s.db")
    store.insert_endpoint("e", "arn", "old", {"config_name": "old"}, status="InService")
    assert store.transition("e", ["InService"], "Updating", pending={"config_name": "new"})
    assert store.get_endpoint("e").pending == {"config_name": "new"}
    assert store.transition(
        "e", ["Updating"], "InService", config_name="new", deployment={"config_name": "new"}, pending=None
    )
    record = store.get_endpoint("e")
    assert (record.config_name, record.deployment, record.pending) == ("new", {"config_name": "new"}, None)


def test_delete_endpoint_only_if_status(tmp_path):
    store = Store(tmp_path / "s.db")
    store.insert_endpoint("e", "arn", "c", {})
    assert not store.delete_endpoint("e", only_if_status="Deleting")
    store.transition("e", None, "Deleting")
    assert store.delete_endpoint("e", only_if_status="Deleting")
    assert store.get_endpoint("e") is None


def test_instance_pids_are_tracked(tmp_path):
    store = Store(tmp_path / "s.db")
    store.record_instance(123, "e")
    store.record_instance(456, "e")
    store.forget_instance(123)
    assert store.instance_pids() == [456]
