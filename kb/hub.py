"""Is the model hub reachable? Asked before a download, so offline machines fail fast."""
from __future__ import annotations

import os
import socket


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe of the model hub, so an offline machine falls back in seconds, not after minutes of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("//")[-1].split("/")[0]
    host, _, port = endpoint.partition(":")
    try:
        socket.create_connection((host, int(port or 443)), timeout=timeout).close()
    except OSError:
        return False
    return True
