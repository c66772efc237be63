"""Ray Serve applications: the OpenAI-compatible LLM endpoint (ray.serve.llm + vLLM), its auth and lifecycle.

Import-light: `services.app`, `services.ingress` and `services.lifecycle` import Ray Serve only inside functions or
when imported themselves; `services.auth` is pure Python.
"""
