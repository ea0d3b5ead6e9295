"""Components and pure helpers of the vLLM cluster program."""
