"""The model server (``streamhost container``): one model behind the TGI, OpenAI and LMI HTTP APIs.

- ``main``: the command (flags, uvicorn, SIGTERM drain); ``config``: settings from flags and environment.
- ``app``: the ASGI app, background model loading, error handlers; ``state``: what routes share.
- ``invocations`` (/ping, /invocations by body shape), ``tgi_routes``, ``openai_routes``, ``lmi_routes``.
- ``streaming``: responses that stream per token and abort the generation when the client leaves.
- ``generation``: request ids and whole-answer collection; ``bodies``: bounded body reading, JSON;
  ``metrics``: Prometheus.
"""
