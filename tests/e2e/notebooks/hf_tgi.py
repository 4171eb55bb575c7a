"""Seed notebook: a Hugging Face LLM (TGI) container through the SageMaker Python SDK 2.x, streamed.

Runs unchanged against AWS or streamhost; against streamhost the environment comes from
``streamhost sdk-env``. ``NOTEBOOK_MODEL`` picks the model (a hub id, or a local folder in tests).
Prints one ``RESULT {json}`` line with what the notebook saw and when.
"""

import json
import os
import time

import boto3
import sagemaker
from sagemaker.huggingface import HuggingFaceModel, get_huggingface_llm_image_uri
from sagemaker.iterators import LineIterator as SdkLineIterator
from sample_client import LineIterator, token_texts

role = "arn:aws:iam::123456789012:role/SageMakerExecutionRole"
model_id = os.environ.get("NOTEBOOK_MODEL", "HuggingFaceTB/SmolLM2-135M-Instruct")
prompt = "What is deep learning?"
parameters = {
    "max_new_tokens": int(os.environ.get("NOTEBOOK_TOKENS", "12")),
    "do_sample": False,
    "return_full_text": False,
    "stop": ["</s>"],
}

session = sagemaker.Session()
llm_image = get_huggingface_llm_image_uri("huggingface")
llm_model = HuggingFaceModel(
    role=role,
    image_uri=llm_image,
    env={"HF_MODEL_ID": model_id, "MAX_INPUT_TOKENS": "256", "MAX_TOTAL_TOKENS": "512"},
)

started_at = time.time()
started = time.perf_counter()
predictor = llm_model.deploy(
    initial_instance_count=1,
    instance_type="ml.g5.2xlarge",
    container_startup_health_check_timeout=600,
)
deployed = time.perf_counter()

# stream with the SDK's own LineIterator; the first token ends the notebook's wait
first_token = None
sdk_tokens = []
for text in token_texts(
    predictor.predict_stream({"inputs": prompt, "parameters": parameters, "stream": True}, iterator=SdkLineIterator)
):
    if first_token is None:
        first_token = time.perf_counter()
    sdk_tokens.append(text)

# the samples' client: boto3 directly, their LineIterator, their custom attributes
smr = boto3.client("sagemaker-runtime")
response = smr.invoke_endpoint_with_response_stream(
    EndpointName=predictor.endpoint_name,
    Body=json.dumps({"inputs": prompt, "parameters": parameters, "stream": True}),
    ContentType="application/json",
    CustomAttributes="accept_eula=true",
)
sample_tokens = list(token_texts(LineIterator(response["Body"])))
# and the samples' iterator through predict_stream
via_sdk = list(
    token_texts(
        predictor.predict_stream({"inputs": prompt, "parameters": parameters, "stream": True}, iterator=LineIterator)
    )
)

answer = predictor.predict({"inputs": prompt, "parameters": parameters})
endpoint_name, model_name = predictor.endpoint_name, llm_model.name

predictor.delete_model()
predictor.delete_endpoint()

print(
    "\nRESULT "
    + json.dumps(
        {
            "endpoint": endpoint_name,
            "model": model_name,
            "image": llm_image,
            "started_at": started_at,
            "deploy_s": deployed - started,
            "first_token_s": first_token - started,
            "sdk_tokens": sdk_tokens,
            "sample_tokens": sample_tokens,
            "sample_iterator_via_sdk": via_sdk,
            "answer": answer,
        }
    )
)
