"""Seed notebook: DJL LMI with model data uploaded to S3 by the SDK, deployed with ``sagemaker.Model``.

``NOTEBOOK_TARBALL`` is a model.tar.gz holding serving.properties and the weights. Prints one
``RESULT {json}`` line.
"""

import json
import os

import sagemaker
from sagemaker import Model, deserializers, image_uris, serializers
from sagemaker.iterators import LineIterator as SdkLineIterator
from sagemaker.utils import name_from_base
from sample_client import LineIterator

role = "arn:aws:iam::123456789012:role/SageMakerExecutionRole"
session = sagemaker.Session()
bucket = session.default_bucket()
s3_code_prefix = "large-model-lmi/code"
model_data = session.upload_data(os.environ["NOTEBOOK_TARBALL"], bucket=bucket, key_prefix=s3_code_prefix)

image_uri = image_uris.retrieve(framework="djl-lmi", region=session.boto_region_name, version="0.29.0")
model = Model(image_uri=image_uri, model_data=model_data, role=role)
endpoint_name = name_from_base("lmi-model")
model.deploy(
    initial_instance_count=1,
    instance_type="ml.g5.2xlarge",
    endpoint_name=endpoint_name,
    container_startup_health_check_timeout=600,
)
predictor = sagemaker.Predictor(
    endpoint_name=endpoint_name,
    sagemaker_session=session,
    serializer=serializers.JSONSerializer(),
    deserializer=deserializers.JSONDeserializer(),
)

payload = {"inputs": "Large model inference is", "parameters": {"max_new_tokens": 10, "do_sample": False}}
answer = predictor.predict(payload)


def texts(lines):
    """jsonlines: {"token": {"text": ...}} per token (LMI 0.26+), or legacy {"outputs": [...]}."""
    out = []
    for line in lines:
        if line:
            data = json.loads(line)
            out.append(data["token"]["text"] if "token" in data else "".join(data.get("outputs", [])))
    return out


# LMI 0.27+ streams when the request says so (jsonlines: one {"token": ...} per line)
stream_payload = {**payload, "stream": True}
sdk_tokens = texts(predictor.predict_stream(stream_payload, iterator=SdkLineIterator))
sample_tokens = texts(predictor.predict_stream(stream_payload, iterator=LineIterator))

predictor.delete_model()
predictor.delete_endpoint()
print(
    "\nRESULT "
    + json.dumps(
        {
            "endpoint": endpoint_name,
            "model": model.name,
            "model_data": model_data,
            "bucket": bucket,
            "answer": answer,
            "sdk_tokens": sdk_tokens,
            "sample_tokens": sample_tokens,
        }
    )
)
