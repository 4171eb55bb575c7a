"""Seed notebook: fine-tune a JumpStart model with JumpStartEstimator, then deploy the result.

``NOTEBOOK_MODEL_ID`` names the catalog entry, ``NOTEBOOK_TRAIN_FILE`` a local train.jsonl.
Prints one ``RESULT {json}`` line.
"""

import json
import os

import sagemaker
from sagemaker import hyperparameters
from sagemaker.jumpstart.estimator import JumpStartEstimator

role = "arn:aws:iam::123456789012:role/SageMakerExecutionRole"
model_id = os.environ["NOTEBOOK_MODEL_ID"]
session = sagemaker.Session()
bucket = session.default_bucket()

defaults = hyperparameters.retrieve_default(model_id=model_id, model_version="*")
chosen = dict(defaults, epoch="1", max_steps="2", per_device_train_batch_size="2", max_input_length="64")
hyperparameters.validate(model_id=model_id, model_version="*", hyperparameters=chosen)

session.upload_data(os.environ["NOTEBOOK_TRAIN_FILE"], bucket=bucket, key_prefix="finetune/train")
train_data_location = f"s3://{bucket}/finetune/train/"  # the JumpStart notebooks pass the folder
estimator = JumpStartEstimator(model_id=model_id, role=role, hyperparameters=chosen, instance_type="ml.m5.xlarge")
estimator.fit({"train": train_data_location})  # tails the job's log (CloudWatch Logs) until it ends
job = estimator.latest_training_job.describe()

print(
    "\nRESULT "
    + json.dumps(
        {
            "defaults": defaults,
            "job": job["TrainingJobName"],
            "status": job["TrainingJobStatus"],
            "hyperparameters": job["HyperParameters"],
            "environment": job.get("Environment", {}),
            "model_artifact": job["ModelArtifacts"]["S3ModelArtifacts"],
            "image": job["AlgorithmSpecification"]["TrainingImage"],
        },
        default=str,
    )
)
