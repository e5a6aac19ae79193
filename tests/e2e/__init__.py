"""End-to-end tests against a real ComfyUI server (see ``tests/e2e/server.py``)."""
