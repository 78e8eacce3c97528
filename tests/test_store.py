import subprocess
import sys

import pytest

from kb.config import load_settings
from kb.errors import EmbedderMismatch
from kb.store import open_store

SECOND_PROCESS = """
import sys
from kb.config import load_settings
from kb.errors import StoreLocked
from kb.store import open_store
try:
    open_store(load_settings({"home": sys.argv[1], "embed_model": "bundled:all-MiniLM-L6-v2"}, env={}))
except StoreLocked as err:
    print(err)
    sys.exit(3)
"""


def test_a_second_process_is_told_to_use_a_server(open_kb, tmp_path):
    store = open_kb()
    done = subprocess.run([sys.executable, "-c", SECOND_PROCESS, str(store.settings.home)], capture_output=True,
                          text=True, timeout=120, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 3, done.stderr
    assert "another process" in done.stdout and "KB_CHROMA_URL" in done.stdout
    store.close()
    # once the owner closes it, the store opens again
    again = subprocess.run([sys.executable, "-c", SECOND_PROCESS, str(store.settings.home)], capture_output=True,
                           text=True, timeout=120, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert again.returncode == 0, again.stdout + again.stderr


def test_opening_with_another_embedding_model_is_an_error(open_kb, tmp_path):
    store = open_kb()
    home = store.settings.home
    store.close()

    class OtherEmbedder:
        name, dimension, fallback_reason = "some/other-model", 384, ""

    with pytest.raises(EmbedderMismatch) as err:
        open_store(load_settings({"home": home}, env={}), OtherEmbedder())
    assert "all-MiniLM" in str(err.value) and "KB_EMBED_MODEL" in str(err.value)
