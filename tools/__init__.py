"""Command-line clients for ComfyUI-DDColor that talk to a running ComfyUI server over its HTTP API.

``python -m tools.batch_colorize --help`` colorizes a whole folder of photos (resumable). Only the standard
library and what ComfyUI itself installs (aiohttp, Pillow) are used, so the tools run from ComfyUI's own Python
and against a server on another machine (everything goes over HTTP, no shared disk).
"""
