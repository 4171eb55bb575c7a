"""The streamhost Python SDK: deploy models and stream their answers through a streamhost platform.

``Session`` gives boto3 SageMaker clients pointed at the platform; ``Model``/``CatalogModel``
deploy; ``Predictor`` predicts and streams; ``LineIterator``/``TokenIterator`` read any streamed
body (TGI SSE, LMI jsonlines, OpenAI chunks) whatever the split of its bytes.
"""

from .iterators import LineIterator, StreamError, TokenIterator, event_texts, iter_events
from .sdk import (
    CatalogModel,
    DeploymentError,
    EulaNotAcceptedError,
    Model,
    Predictor,
    Session,
    StreamhostError,
    list_models,
)
from .training import Estimator, TrainingJobError

__all__ = [
    "CatalogModel",
    "DeploymentError",
    "Estimator",
    "EulaNotAcceptedError",
    "LineIterator",
    "Model",
    "Predictor",
    "Session",
    "StreamError",
    "StreamhostError",
    "TokenIterator",
    "TrainingJobError",
    "event_texts",
    "iter_events",
    "list_models",
]
