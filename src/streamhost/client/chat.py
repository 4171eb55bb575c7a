"""Chat requests for an endpoint: turn plain questions and conversations into prompts the model was trained on.

An instruct model answers a question only when the question arrives in its chat format; sent as raw
``inputs`` it is merely continued ("Tell me a joke" -> " that has nothing to do with ..."). TGI
defines ``inputs`` as raw text, so raw stays raw, and chatting is a separate request:

- when the endpoint's model is a catalog entry with its own prompt template (Llama 2, Falcon,
  Mistral, rinna), the conversation is rendered here with that template and sent as a generate
  request (``{"inputs", "parameters"}`` with the template's stop strings);
- otherwise it is sent as ``{"messages": [...]}``, which the model server routes to chat
  completions and formats with the tokenizer's own chat template.

``streamhost chat``, ``streamhost invoke --chat`` and ``Predictor.chat`` all use this module, so
a question gets the same prompt whichever way it is asked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamhost.catalog.specs import Catalog
from streamhost.catalog.templates import render_prompt, template_stop_sequences
from streamhost.client.sdk import EULA_ENV, is_not_found

__all__ = ["CHAT_PARAMETERS", "MESSAGES_MODE", "ChatPlan", "as_messages", "endpoint_environment", "plan_for"]

MESSAGES_MODE = "messages"
# The generation parameters a chat request carries (TGI names; max_new_tokens becomes max_tokens for messages).
CHAT_PARAMETERS = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop")


@dataclass
class ChatPlan:
    """How to turn a conversation into request bodies for one endpoint."""

    template: str  # MESSAGES_MODE or a name from catalog.templates.TEMPLATES
    parameters: dict[str, Any] = field(default_factory=dict)  # TGI names
    eula_required: bool = False

    def body(self, history: Sequence[Mapping[str, str]], stream: bool = True) -> dict[str, Any]:
        """The request for the conversation so far (ending with the user's turn)."""
        messages = [dict(m) for m in history]
        if self.template == MESSAGES_MODE:
            body: dict[str, Any] = {"messages": messages}
            for name, value in self.parameters.items():
                body["max_tokens" if name == "max_new_tokens" else name] = value
            if stream:
                body["stream"] = True
            return body
        parameters = dict(self.parameters)
        if parameters.get("temperature") == 0:  # OpenAI's "greedy"; TGI's generate API says it with do_sample
            for name in ("temperature", "top_p", "top_k"):
                parameters.pop(name, None)
            parameters["do_sample"] = False
        stops = list(parameters.get("stop") or [])
        for stop in template_stop_sequences(self.template):
            if stop not in stops:
                stops.append(stop)
        if stops:
            parameters["stop"] = stops[:4]  # TGI's default MAX_STOP_SEQUENCES
        parameters["return_full_text"] = False
        body = {"inputs": render_prompt(self.template, messages), "parameters": parameters}
        if stream:
            body["stream"] = True
        return body


def as_messages(question: str | Sequence[Mapping[str, str]], system: str | None = None) -> list[dict[str, str]]:
    """``"question"`` -> ``[{"role": "user", "content": "question"}]``; a message list is kept as given."""
    if isinstance(question, str):
        if not question.strip():
            raise ValueError("the question is empty")
        messages = [{"role": "user", "content": question}]
    elif isinstance(question, Sequence) and question and all(isinstance(m, Mapping) for m in question):
        messages = [dict(m) for m in question]
    else:
        raise TypeError("chat() takes a question (str) or a list of {'role': ..., 'content': ...} messages")
    if system and messages[0].get("role") != "system":
        messages.insert(0, {"role": "system", "content": system})
    return messages


def endpoint_environment(sagemaker: Any, endpoint: str) -> dict[str, str]:
    """The container environment of the endpoint's (first) model, or {} when it cannot be found.

    An unknown endpoint is an error; a config or model deleted while the endpoint lives (AWS
    allows both) only means the prompt format falls back to the server's chat template.
    """
    config_name = sagemaker.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    try:
        variants = sagemaker.describe_endpoint_config(EndpointConfigName=config_name).get("ProductionVariants") or []
        if not variants or not variants[0].get("ModelName"):
            return {}
        model = sagemaker.describe_model(ModelName=variants[0]["ModelName"])
    except Exception as exc:
        if is_not_found(exc):
            return {}
        raise
    container = model.get("PrimaryContainer") or (model.get("Containers") or [{}])[0]
    return dict(container.get("Environment") or {})


def plan_for(
    environment: Mapping[str, str],
    catalog: Catalog | None,
    template: str = "auto",
    parameters: Mapping[str, Any] | None = None,
) -> ChatPlan:
    """Pick the prompt format and default parameters from the catalog entry of the served model.

    ``template`` ``auto`` takes the catalog's template, else the server's chat template
    (``messages``); ``parameters`` (TGI names) override the catalog's recommended ones.
    """
    model_id = environment.get("HF_MODEL_ID")
    entry = catalog.find(model_id) if catalog is not None and model_id else None
    chosen = {k: v for k, v in (entry.recommended_parameters if entry else {}).items() if k in CHAT_PARAMETERS}
    chosen.update(parameters or {})
    if template != "auto":
        name = template
    elif entry is not None and entry.prompt_template != "tokenizer":
        name = entry.prompt_template
    else:
        name = MESSAGES_MODE
    eula = environment.get(EULA_ENV, "").lower() == "true" or bool(entry and entry.eula_required)
    return ChatPlan(template=name, parameters=chosen, eula_required=eula)
