"""What a model's ``PrimaryContainer.Image`` asks for: our model server in a dialect, or an external server.

SageMaker users name container images, not servers. The SageMaker SDK's Hugging Face LLM images
(``...huggingface-pytorch-tgi-inference:2.1-tgi2.0-gpu-py310-cu121-ubuntu22.04``) speak TGI; DJL
Serving images (``djl-inference``, ``djl-deepspeed``, ``djl-lmi``, ``djl-tensorrtllm``...) speak
LMI. Both map onto our model server with the matching ``--dialect``. An ``http(s)://host:port``
URL fronts a server that is already running and honours the container contract. Anything else
(no image, ``streamhost``, an unknown image) runs our server without a dialect, so it chooses
itself from the Environment (LMI when ``OPTION_*`` settings are present, TGI otherwise).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

_LMI = re.compile(r"djl-(inference|deepspeed|lmi|tensorrtllm|neuronx|serving)|(^|[/:_-])lmi([/:_.-]|$)", re.I)
_TGI = re.compile(r"tgi|text-generation-inference", re.I)


class ImageError(ValueError):
    """The image field is malformed (e.g. a URL without a host)."""


@dataclass(frozen=True)
class ContainerImage:
    """``kind`` is ``server`` (start our model server) or ``external`` (proxy to ``url``)."""

    kind: str
    dialect: str | None = None
    url: str | None = None

    @property
    def resolved(self) -> str:
        """What DescribeEndpoint reports as the ResolvedImage."""
        if self.kind == "external":
            return self.url or ""
        return f"streamhost-container:{self.dialect}" if self.dialect else "streamhost-container"


def classify_image(image: str | None) -> ContainerImage:
    """Map an image name or URL to how the platform runs it; raises ImageError for a bad URL."""
    text = (image or "").strip()
    if text.lower().startswith(("http://", "https://")):
        parts = urlsplit(text)
        if not parts.hostname:
            raise ImageError(f"Image URL {image!r} has no host; use http(s)://host:port")
        try:
            _ = parts.port  # urllib raises on a port that is not a number in range
        except ValueError as exc:
            raise ImageError(f"Image URL {image!r} has a bad port: {exc}") from None
        return ContainerImage("external", url=text.rstrip("/"))
    if _LMI.search(text):
        return ContainerImage("server", dialect="lmi")
    if _TGI.search(text):
        return ContainerImage("server", dialect="tgi")
    return ContainerImage("server")
