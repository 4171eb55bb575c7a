"""The client side of the CLI without a platform: parsing, request bodies, chat plans, error lines."""

from __future__ import annotations

import argparse
import io
import json

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, EventStreamError

from streamhost import cli
from streamhost.cli.bench import find_script
from streamhost.cli.chat import MESSAGES_MODE, ChatPlan, plan_chat
from streamhost.cli.common import CliError, format_error, parse_env
from streamhost.cli.invoke import build_parameters, invoke_body, read_prompt
from streamhost.cli.resources import find_logs
from streamhost.client import StreamError
from streamhost.client.sdk import EULA_ENV


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("STREAMHOST_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("STREAMHOST_URL", raising=False)


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


# --------------------------------------------------------------------------- parsing


def test_deploy_arguments():
    args = parse(
        "deploy",
        "smollm2",
        "--name",
        "chat",
        "--env",
        "A=1",
        "--env",
        "B=x=y",
        "--instance-count",
        "2",
        "--accept-eula",
    )
    assert (args.model, args.name, args.instance_count, args.accept_eula) == ("smollm2", "chat", 2, True)
    assert parse_env(args.env) == {"A": "1", "B": "x=y"}


@pytest.mark.parametrize("bad", ["A", "=1", " =1"])
def test_env_pairs_need_a_key_and_an_equals_sign(bad):
    with pytest.raises(CliError, match="KEY=VALUE"):
        parse_env([bad])


def test_instance_count_must_be_positive(capsys):
    with pytest.raises(SystemExit) as info:
        parse("deploy", "smollm2", "--instance-count", "0")
    assert info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_url_is_accepted_before_or_after_the_subcommand():
    assert parse("--url", "http://a:1", "endpoints", "list").url == "http://a:1"
    assert parse("endpoints", "list", "--url", "http://b:2").url == "http://b:2"
    assert parse("--url", "http://a:1", "invoke", "ep", "hi").url == "http://a:1"
    assert parse("models", "list").url is None


def test_every_listing_and_describe_command_has_json():
    for argv in (
        ("endpoints", "list"),
        ("endpoints", "describe", "x"),
        ("endpoints", "delete", "x"),
        ("models", "list"),
        ("models", "describe", "x"),
        ("catalog", "list"),
        ("catalog", "show", "x"),
        ("deploy", "x"),
        ("invoke", "ep", "p"),
    ):
        assert parse(*argv, "--json").json is True


def test_the_server_subcommands_keep_their_dispatch():
    assert cli.SUBCOMMANDS["container"][:3] == ("streamhost.server.main", "add_arguments", "run")
    assert cli.SUBCOMMANDS["serve"][:3] == ("streamhost.platform.main", "add_arguments", "run")


# --------------------------------------------------------------------------- bodies


def test_parameter_flags_override_the_json_parameters():
    args = parse(
        "invoke",
        "ep",
        "hi",
        "--params",
        '{"max_new_tokens": 5, "top_p": 0.5, "details": true}',
        "--max-new-tokens",
        "9",
        "--temperature",
        "0.7",
        "--stop",
        "</s>",
        "--stop",
        "\n\n",
        "--top-k",
        "4",
    )
    assert build_parameters(args) == {
        "max_new_tokens": 9,
        "top_p": 0.5,
        "details": True,
        "temperature": 0.7,
        "top_k": 4,
        "stop": ["</s>", "\n\n"],
    }
    assert invoke_body("hi", build_parameters(args))["inputs"] == "hi"


def test_invoke_asks_for_the_answer_alone_unless_told_otherwise():
    assert invoke_body("hi", {}) == {"inputs": "hi", "parameters": {"return_full_text": False}}
    assert invoke_body("hi", {"return_full_text": True})["parameters"]["return_full_text"] is True
    assert invoke_body("hi", {}, full_text=True)["parameters"]["return_full_text"] is True


@pytest.mark.parametrize("params, message", [("{bad", "not valid JSON"), ("[1, 2]", "must be a JSON object")])
def test_bad_json_parameters_say_what_is_wrong(params, message):
    with pytest.raises(CliError, match=message):
        build_parameters(parse("invoke", "ep", "hi", "--params", params))


class _Stdin(io.StringIO):
    def __init__(self, text: str, tty: bool) -> None:
        super().__init__(text)
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_the_prompt_comes_from_the_argument_or_standard_input():
    assert read_prompt("from arg", _Stdin("ignored", tty=False)) == "from arg"
    assert read_prompt(None, _Stdin("from stdin\n", tty=False)) == "from stdin\n"
    assert read_prompt("-", _Stdin("dash", tty=False)) == "dash"
    with pytest.raises(CliError, match="PROMPT argument or pipe"):
        read_prompt(None, _Stdin("", tty=True))
    with pytest.raises(CliError, match="empty"):
        read_prompt(None, _Stdin("  \n", tty=False))


# --------------------------------------------------------------------------- chat


def test_chat_uses_the_servers_chat_template_for_tokenizer_models():
    args = parse("chat", "ep", "--max-new-tokens", "32")
    plan = plan_chat(args, {"HF_MODEL_ID": "smollm2"})
    assert plan.template == MESSAGES_MODE and not plan.eula_required
    history = [{"role": "user", "content": "Hi"}]
    body = plan.body(history)
    assert body["messages"] == history and body["stream"] is True
    assert body["max_tokens"] == 32 and "max_new_tokens" not in body
    assert body["temperature"] == 0  # the catalog's recommendation (greedy) fills what flags leave out
    # Greedy in a generate body is TGI's do_sample=false (temperature 0 is refused there).
    chatml = plan_chat(parse("chat", "ep", "--template", "chatml"), {"HF_MODEL_ID": "smollm2"}).body(history)
    assert chatml["parameters"]["do_sample"] is False and "temperature" not in chatml["parameters"]


def test_chat_renders_catalog_templates_client_side_with_their_stops():
    plan = plan_chat(
        parse("chat", "ep", "--stop", "###"), {"HF_MODEL_ID": "meta-llama/Llama-2-7b-chat-hf", EULA_ENV: "true"}
    )
    assert plan.template == "llama2" and plan.eula_required
    body = plan.body([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert body["inputs"] == "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]"
    assert body["parameters"]["stop"] == ["###", "</s>"]
    assert body["parameters"]["return_full_text"] is False and body["stream"] is True


def test_chat_unknown_models_and_explicit_templates():
    assert plan_chat(parse("chat", "ep"), {"HF_MODEL_ID": "/models/mine"}).template == MESSAGES_MODE
    assert plan_chat(parse("chat", "ep", "--template", "chatml"), {"HF_MODEL_ID": "smollm2"}).template == "chatml"
    assert plan_chat(parse("chat", "ep"), {}).parameters == {}


def test_chat_plan_keeps_at_most_four_stops():
    plan = ChatPlan(template="falcon", parameters={"stop": ["a", "b", "c", "d"]})
    assert plan.body([{"role": "user", "content": "x"}])["parameters"]["stop"] == ["a", "b", "c", "d"]


# --------------------------------------------------------------------------- errors


def _client_error(code: str, message: str, **extra) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}, **extra}, "InvokeEndpoint")


def test_platform_errors_become_one_line_with_their_code():
    assert format_error(_client_error("ValidationException", 'Could not find endpoint "x".')) == (
        'error: ValidationException: Could not find endpoint "x".'
    )
    model_error = _client_error(
        "ModelError",
        "Received client error (422) from primary",
        OriginalStatusCode=422,
        OriginalMessage='{"error":"Input validation error"}',
    )
    assert format_error(model_error) == (
        'error: ModelError: Received client error (422) from primary: {"error":"Input validation error"}'
    )


def test_a_refused_eula_says_which_flag_accepts_it():
    refused = _client_error(
        "ValidationError", "Model m requires accepting its EULA: send CustomAttributes 'accept_eula=true'"
    )
    assert format_error(refused).endswith("'accept_eula=true' (CLI: add --accept-eula)")


def test_stream_errors_and_connection_errors_are_explained():
    stream = EventStreamError(
        {"Error": {"Code": "ModelStreamError", "Message": "boom"}}, "InvokeEndpointWithResponseStream"
    )
    assert format_error(stream) == "error: ModelStreamError: boom"
    in_band = StreamError("Request failed during generation", {"error": "x", "error_type": "generation"})
    assert format_error(in_band) == "error: the model failed mid-stream: generation: Request failed during generation"
    refused = EndpointConnectionError(endpoint_url="http://127.0.0.1:9/")
    line = format_error(refused, "http://127.0.0.1:9")
    assert line.startswith("error: cannot reach the platform at http://127.0.0.1:9") and "\n" not in line


def test_main_prints_one_line_and_fails_on_errors(capsys):
    assert cli.main(["catalog", "show", "llama-2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no model 'llama-2' in the catalog; did you mean:")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_an_unreachable_platform_is_one_line_not_a_traceback(capsys):
    assert cli.main(["--url", "http://127.0.0.1:9", "endpoints", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the platform at http://127.0.0.1:9") and "Traceback" not in err


def test_catalog_list_json_applies_the_filter(capsys):
    assert cli.main(["catalog", "list", "--filter", "eula_required == true", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert entries and all(e["eula_required"] for e in entries)
    assert {"id", "hub_id", "licence", "default_env", "prompt_template"} <= set(entries[0])


def test_deploy_refuses_eula_models_without_accept_eula(capsys):
    assert cli.main(["--url", "http://127.0.0.1:9", "deploy", "meta-textgeneration-llama-2-7b-f"]) == 1
    assert "--accept-eula" in capsys.readouterr().err


# --------------------------------------------------------------------------- bench and logs


def test_bench_finds_scripts_in_the_checkout():
    assert find_script("engine") is not None
    assert find_script("_common") is None
    assert find_script("no-such-bench") is None


def test_logs_are_found_per_endpoint(tmp_path):
    (tmp_path / "logs" / "ep").mkdir(parents=True)
    (tmp_path / "logs" / "ep" / "instance-0.log").write_text("a\n")
    (tmp_path / "logs" / "other").mkdir()
    (tmp_path / "logs" / "other" / "instance-0.log").write_text("b\n")
    assert [p.name for p in find_logs(tmp_path, "ep")] == ["instance-0.log"]
    assert find_logs(tmp_path, "missing") == []
