"""Seed notebook: a JumpStart model by id (EULA-gated), deployed, invoked and streamed.

``NOTEBOOK_MODEL_ID`` names the catalog entry. Prints one ``RESULT {json}`` line.
"""

import json
import os

from botocore.exceptions import ClientError
from sagemaker.iterators import LineIterator
from sagemaker.jumpstart.model import JumpStartModel
from sagemaker.jumpstart.notebook_utils import list_jumpstart_models

role = "arn:aws:iam::123456789012:role/SageMakerExecutionRole"
model_id = os.environ["NOTEBOOK_MODEL_ID"]

all_models = list_jumpstart_models()
text_generation = list_jumpstart_models(filter="task == textgeneration")
gpu_defaults = list_jumpstart_models(filter="default_inference_instance_type == ml.g5.2xlarge", list_versions=True)

refusal = None
try:
    JumpStartModel(model_id=model_id, role=role).deploy()
except ClientError as error:
    refusal = {"code": error.response["Error"]["Code"], "message": error.response["Error"]["Message"]}

try:
    JumpStartModel(model_id=model_id + "-typo", role=role)
    unknown = None
except ValueError as error:
    unknown = str(error)

model = JumpStartModel(model_id=model_id, role=role)
predictor = model.deploy(accept_eula=True)
prompt = "I believe the meaning of life is"
payload = {"inputs": prompt, "parameters": {"max_new_tokens": 8, "do_sample": False}}
answer = predictor.predict(payload)
lines = [
    json.loads(line[line.find(b"{") :])
    for line in predictor.predict_stream({**payload, "stream": True}, iterator=LineIterator)
    if b"{" in line
]

description = predictor.sagemaker_session.sagemaker_client.describe_model(ModelName=model.name)
predictor.delete_model()
predictor.delete_endpoint()
print(
    "\nRESULT "
    + json.dumps(
        {
            "all_models": all_models,
            "text_generation": text_generation,
            "gpu_defaults": gpu_defaults,
            "refusal": refusal,
            "unknown": unknown,
            "endpoint": predictor.endpoint_name,
            "model": model.name,
            "prompt": prompt,
            "answer": answer,
            "stream": lines,
            "container": description["PrimaryContainer"],
        },
        default=str,
    )
)
