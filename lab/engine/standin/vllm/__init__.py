"""LAB STAND-IN for vLLM (a test fixture of the vllm-cluster lab, NOT the real engine).

Installed as the top-level package ``vllm`` inside the lab engine image only, so that both
``vllm serve MODEL ...`` and ``python3 -m vllm.entrypoints.openai.api_server --model PATH ...``
behave like vLLM's OpenAI-compatible server at its edges: the same flags and the same start-up
checks, a Ray placement group of TP x PP GPUs, the API key on ``/v1``, and the same HTTP
routes. It generates no text: answers are fixed sentences that name the model and placement.
"""

__version__ = "0.1.0-lab-standin"
